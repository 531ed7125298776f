"""AveTask: options, head shapes per branches setting, the audio-only mixup, SpecAugment and the loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from stgcma_fast import FastSTGCMA, STGCMAConfig
from stgcma_fast.tasks import StepResult, get_task
from stgcma_fast.tasks.ave import AveMetrics, AveOptions, AveTask, audio_mixup

SR = 16000
TINY_BACKBONE = {"img_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2}


def tiny_model(branches: str = "audio-visual") -> FastSTGCMA:
    torch.manual_seed(0)
    cfg = STGCMAConfig.preset("clip-b16-tiny", backbone_kwargs=TINY_BACKBONE, adapter=4, audio_size=(16, 32),
                              num_frames=10, drop_path_rate=0.0, branches=branches)
    return FastSTGCMA(cfg)


def tiny_batch(batch: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.randn(batch, 10, 3, 32, 32, generator=g),
            "waveform": 0.1 * torch.randn(batch, 10 * SR, generator=g),
            "labels": torch.randint(0, 29, (batch, 10), generator=g), "ids": [f"v{i}" for i in range(batch)],
            "index": torch.arange(batch)}


def test_registered_as_ave() -> None:
    assert get_task("ave") is AveTask
    assert AveTask.primary_metric == "accuracy" and AveTask.options_type is AveOptions
    assert isinstance(AveTask().new_metrics(), AveMetrics)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("label_smoothing", 1.0, r"label_smoothing to be a float in \[0, 1\), got 1.0 \(float\)"),
    ("label_smoothing", "0.1", r"label_smoothing to be a float in \[0, 1\), got '0.1' \(str\)"),
    ("mixup_prob", -0.1, r"mixup_prob to be a float in \[0, 1\], got -0.1"),
    ("mixup_alpha", 0, r"mixup_alpha to be a float > 0, got 0 \(int\)"),
    ("spec_augment", 1, r"spec_augment to be a bool, got 1 \(int\)"),
    ("freq_mask", -1, r"freq_mask to be an int >= 0, got -1"),
    ("time_mask", 1.5, r"time_mask to be an int >= 0, got 1.5"),
    ("head_hidden", 0, r"head_hidden to be an int >= 1, got 0"),
    ("head_dropout", 1.0, r"head_dropout to be a float in \[0, 1\), got 1.0"),
    ("num_classes", 28, r"num_classes to be an int >= 29 .* got 28"),
    ("audio_source", "mp3", r"audio_source to be one of \('auto', 'wav', 'video'\), got 'mp3'"),
    ("audio_std", 0.0, r"audio_std to be a float > 0, got 0.0"),
    ("crop_scale", (0.5, 0.1), r"crop_scale to be two floats 0 < low <= high <= 1, got \(0.5, 0.1\)"),
    ("on_error", "ignore", r"on_error to be one of \('skip', 'raise'\), got 'ignore'"),
])
def test_options_name_the_bad_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AveOptions(**{field: value})


def test_wrong_options_type() -> None:
    with pytest.raises(TypeError, match="expected AveOptions options for task 'ave', got dict"):
        AveTask({"label_smoothing": 0.1})


@pytest.mark.parametrize(("branches", "in_features"), [("audio-visual", 64), ("video", 32), ("audio", 32)])
def test_head_and_step_shapes(branches: str, in_features: int) -> None:
    model = tiny_model(branches)
    task = AveTask(AveOptions(mixup_prob=0.0, spec_augment=False))
    head = task.build_head(model)
    assert head.fc1.in_features == in_features and head.fc2.out_features == 29 and head.fc1.out_features == 512
    assert model.head is None
    batch = tiny_batch()
    result = task.step(model, head, batch, train=True, generator=torch.Generator().manual_seed(0))
    assert isinstance(result, StepResult) and result.num_examples == 3 and result.loss.dim() == 0
    assert result.outputs["pred"].shape == (3, 10) and torch.equal(result.outputs["labels"], batch["labels"])
    result.loss.backward()
    assert head.fc1.weight.grad is not None


def test_loss_is_label_smoothed_cross_entropy_by_hand() -> None:
    model, eps = tiny_model().eval(), 0.1
    task = AveTask(AveOptions(label_smoothing=eps))
    head = task.build_head(model).eval()
    batch = tiny_batch(2)
    with torch.no_grad():
        result = task.step(model, head, batch, train=False)
        out = model(batch["video"], task.audio_features(model, batch["waveform"], train=False))
        logits = head(out.video_cls, out.audio_cls).float().flatten(0, 1)  # (B * 10, 29)
    logp = logits.log_softmax(-1)
    y = batch["labels"].flatten()
    by_hand = -((1 - eps) * logp[torch.arange(len(y)), y] + eps / 29 * logp.sum(-1)).mean()
    torch.testing.assert_close(result.loss, by_hand, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.loss, F.cross_entropy(logits, y, label_smoothing=eps), rtol=1e-5, atol=1e-6)
    assert torch.equal(result.outputs["pred"], logits.argmax(-1).reshape(2, 10))


def test_step_leaves_the_batch_alone_and_is_reproducible() -> None:
    model = tiny_model()
    task = AveTask(AveOptions(mixup_prob=1.0, spec_augment=True, head_dropout=0.0))
    head = task.build_head(model)
    batch = tiny_batch(4)
    before = {k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}
    a = task.step(model, head, batch, train=True, generator=torch.Generator().manual_seed(7))
    b = task.step(model, head, batch, train=True, generator=torch.Generator().manual_seed(7))
    c = task.step(model, head, batch, train=True, generator=torch.Generator().manual_seed(8))
    for key, value in before.items():
        assert torch.equal(batch[key], value), key
    assert torch.equal(a.loss, b.loss) and not torch.equal(a.loss, c.loss)
    assert torch.equal(a.outputs["labels"], batch["labels"])


def test_audio_features_apply_mixup_then_spec_augment_in_training_only() -> None:
    model = tiny_model()
    batch = tiny_batch(4)
    plain = AveTask(AveOptions(mixup_prob=0.0, spec_augment=False))
    augmented = AveTask(AveOptions(mixup_prob=1.0, spec_augment=True, freq_mask=16, time_mask=40))
    base = plain.audio_features(model, batch["waveform"], train=True)
    assert base.shape == (4, 10, 16, 32)
    assert torch.equal(augmented.audio_features(model, batch["waveform"], train=False), base)
    g = torch.Generator().manual_seed(3)
    feats = augmented.audio_features(model, batch["waveform"], train=True, generator=g)
    g = torch.Generator().manual_seed(3)
    mixed = audio_mixup(batch["waveform"], 1.0, 10.0, g).waveform
    from stgcma_fast.data import spec_augment

    expected = spec_augment(plain.audio_features(model, mixed, train=False), 16, 40, g)
    assert torch.equal(feats, expected)


# ----------------------------------------------------------------------------------------------- mixup


def _constant_clips(batch: int, seconds: int = 10) -> torch.Tensor:
    """Clip i is the constant i + 1: a mixed sample reveals its lambda and partner."""
    return (torch.arange(batch, dtype=torch.float32)[:, None] + 1.0).expand(batch, seconds * SR).clone()


@pytest.mark.parametrize("batch", [2, 5])
def test_mixup_is_per_second_with_another_clip(batch: int) -> None:
    wave = _constant_clips(batch)
    out = audio_mixup(wave, prob=1.0, alpha=10.0, generator=torch.Generator().manual_seed(0))
    assert out.lam.shape == (batch, 10) and out.mixed.all()
    assert (out.partner != torch.arange(batch)).all()
    for i in range(batch):
        per_second = out.waveform[i].reshape(10, SR)
        assert torch.equal(per_second, per_second[:, :1].expand(10, SR)), "lambda must be constant within a second"
        j = int(out.partner[i])
        expected = out.lam[i] * (i + 1) + (1 - out.lam[i]) * (j + 1)
        torch.testing.assert_close(per_second[:, 0], expected)
    assert len(set(out.lam[0].tolist())) == 10, "a fresh lambda every second"
    assert 0.0 < float(out.lam.min()) and float(out.lam.max()) < 1.0


def test_mixup_reproducible_from_the_generator_and_input_untouched() -> None:
    wave = torch.randn(4, 10 * SR + 123)  # samples past the last full second take its lambda
    copy = wave.clone()
    a = audio_mixup(wave, 0.5, 10.0, torch.Generator().manual_seed(1))
    b = audio_mixup(wave, 0.5, 10.0, torch.Generator().manual_seed(1))
    assert torch.equal(wave, copy)
    assert torch.equal(a.waveform, b.waveform) and torch.equal(a.lam, b.lam) and torch.equal(a.partner, b.partner)
    unmixed = ~a.mixed
    assert torch.equal(a.waveform[unmixed], wave[unmixed]) and (a.lam[unmixed] == 1).all()
    assert torch.equal(a.partner[unmixed], torch.arange(4)[unmixed])


def test_mixup_prob_zero_and_single_clip_are_identity() -> None:
    wave = torch.randn(3, 10 * SR)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    out = audio_mixup(wave, 0.0, 10.0, g)
    assert torch.equal(out.waveform, wave) and not out.mixed.any() and (out.lam == 1).all()
    assert torch.equal(g.get_state(), state), "prob 0 draws nothing"
    assert torch.equal(audio_mixup(wave[:1], 1.0, 10.0, g).waveform, wave[:1])


def test_mixup_lambda_follows_beta() -> None:
    wave = torch.zeros(400, 10 * SR)
    lam = audio_mixup(wave, 1.0, 10.0, torch.Generator().manual_seed(0)).lam
    # Beta(10, 10): mean 0.5, variance 1 / 84
    assert abs(float(lam.mean()) - 0.5) < 0.01 and abs(float(lam.var()) - 1 / 84) < 0.002


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prob": 1.5}, r"mixup prob in \[0, 1\], got 1.5"),
    ({"alpha": 0.0}, r"mixup alpha > 0, got 0.0"),
])
def test_mixup_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        audio_mixup(torch.zeros(2, SR), **{"prob": 0.5, "alpha": 1.0, **kwargs})
    with pytest.raises(ValueError, match=r"waveforms of shape \(B, S\), got \(2, 3, 4\)"):
        audio_mixup(torch.zeros(2, 3, 4))


def test_step_rejects_spectrograms_when_mixing_and_wrong_label_shapes() -> None:
    model = tiny_model()
    task = AveTask(AveOptions(mixup_prob=0.5))
    head = task.build_head(model)
    batch = tiny_batch(2)
    spectrogram_batch = {**{k: v for k, v in batch.items() if k != "waveform"},
                         "audio": torch.zeros(2, 10, 16, 32)}
    with pytest.raises(ValueError, match="mixup acts on waveforms: expected a batch with 'waveform'"):
        task.step(model, head, spectrogram_batch, train=True)
    assert task.step(model, head, spectrogram_batch, train=False).outputs["pred"].shape == (2, 10)
    with pytest.raises(ValueError, match=r"labels of shape \(B, 10\) \(one per second\), got \(2, 9\)"):
        task.step(model, head, {**batch, "labels": batch["labels"][:, :9]}, train=False)


def test_options_are_a_dataclass_with_the_paper_defaults() -> None:
    o = AveOptions()
    assert (o.label_smoothing, o.mixup_prob, o.mixup_alpha, o.spec_augment, o.freq_mask, o.time_mask) == \
        (0.1, 0.5, 10.0, True, 48, 192)
    assert (o.head_hidden, o.head_dropout, o.num_classes) == (512, 0.5, 29)
    assert dataclasses.is_dataclass(o)
