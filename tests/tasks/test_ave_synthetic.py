"""The synthetic AVE set: written once (marker), regenerated when partial or stale, and truly audio-visual."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import stgcma_fast.data.synth as synth
from stgcma_fast.data import AveDataset, decode_audio, read_ave_annotations
from stgcma_fast.data.ave import BACKGROUND
from stgcma_fast.data.synth import ave_clip_media, class_motif, fundamental
from stgcma_fast.data.video import decode_frames, probe_video
from stgcma_fast.tasks.ave import SYNTHETIC_SMALL, AveOptions, AveTask, make_synthetic_ave
from stgcma_fast.tasks.ave import synthetic as synthetic_module
from stgcma_fast.tasks.ave.synthetic import MARKER, read_marker

from .test_ave_task import tiny_model

TINY = dataclasses.replace(SYNTHETIC_SMALL, clips=6, size=32, fps=2, num_events=3, distractor_prob=1.0)


@pytest.fixture
def count_synth(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of synth_ave made by make_synthetic_ave."""
    calls: list[int] = []
    real = synth.synth_ave

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "synth_ave", counting)
    return calls


def test_written_once_then_reused(tmp_path, count_synth) -> None:
    folder = make_synthetic_ave(tmp_path, seed=3, settings=TINY)
    assert folder == tmp_path / "ave-synthetic-small-seed3" and count_synth == [1]
    assert read_marker(folder) == TINY.generation_params(3)
    videos = sorted((folder / "AVE").iterdir())
    assert len(videos) == 6 and all(v.suffix == ".mkv" for v in videos)
    assert probe_video(videos[0]).codec == "vp9"
    assert len(list((folder / "audio_wav").glob("*.wav"))) == 6
    assert sum(len(read_ave_annotations(folder / f"{s}Set.txt")) for s in ("train", "val", "test")) == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folder left behind"
    stamp = (folder / MARKER).stat().st_mtime_ns
    assert make_synthetic_ave(tmp_path, seed=3, settings=TINY) == folder
    assert count_synth == [1] and (folder / MARKER).stat().st_mtime_ns == stamp


@pytest.mark.parametrize("damage", ["no marker", "older version", "other parameters", "corrupt marker"])
def test_partial_or_stale_sets_are_regenerated(tmp_path, count_synth, damage: str) -> None:
    folder = make_synthetic_ave(tmp_path, seed=0, settings=TINY)
    marker = folder / MARKER
    params = json.loads(marker.read_text())
    (folder / "AVE" / "stale.mkv").write_bytes(b"left over")
    settings = TINY
    if damage == "no marker":
        marker.unlink()
    elif damage == "older version":
        marker.write_text(json.dumps({**params, "format_version": params["format_version"] - 1}))
    elif damage == "corrupt marker":
        marker.write_text("{not json")
    else:
        settings = dataclasses.replace(TINY, distractor_prob=0.5)
    assert make_synthetic_ave(tmp_path, seed=0, settings=settings) == folder
    assert count_synth == [1, 1]
    assert read_marker(folder) == settings.generation_params(0)
    assert not (folder / "AVE" / "stale.mkv").exists()


def test_task_make_synthetic_uses_the_small_settings(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic_module, "SYNTHETIC_SMALL", TINY)
    folder = AveTask().make_synthetic(tmp_path, seed=1, small=True)
    assert read_marker(folder) == TINY.generation_params(1)
    with pytest.raises(ValueError, match="expected seed to be an int >= 0, got -1"):
        make_synthetic_ave(tmp_path, seed=-1, settings=TINY)


def test_loader_and_step_on_the_synthetic_set(tmp_path) -> None:
    folder = make_synthetic_ave(tmp_path, seed=0, settings=TINY)
    model = tiny_model()
    task = AveTask(AveOptions(mixup_prob=1.0))
    loader = task.build_loader(folder, "train", train=True, batch_size=2, seed=0, device=torch.device("cpu"),
                               model=model)
    batch = next(iter(loader))
    assert batch["video"].shape[1:] == (10, 3, 32, 32) and batch["waveform"].shape[1:] == (160000,)
    assert batch["labels"].shape[1:] == (10,) and "audio" not in batch
    result = task.step(model, task.build_head(model), batch, train=True, generator=torch.Generator())
    assert torch.isfinite(result.loss)


# ----------------------------------------------------------------------------------------------- AV-ness


@pytest.mark.parametrize("distractor_prob", [0.0, 0.5, 1.0])
def test_generator_flags_event_iff_visible_and_audible(distractor_prob: float) -> None:
    """A second is an event exactly when the picture AND the sound are there; with distractors, background seconds
    show only one of them."""
    rng = np.random.default_rng(0)
    distractors = background = 0
    for trial in range(40):
        start = int(rng.integers(0, 10))
        end = int(rng.integers(start + 1, 11))
        _, _, _, visible, audible = ave_clip_media(trial % 28, start, end, np.random.default_rng(trial), size=16,
                                                   fps=1, distractor_prob=distractor_prob)
        for s in range(10):
            event = start <= s < end
            assert event == (visible[s] and audible[s]), (trial, s)
            if not event:
                background += 1
                distractors += visible[s] or audible[s]
    if distractor_prob == 0.0:
        assert distractors == 0
    elif distractor_prob == 1.0:
        assert distractors == background
    else:
        assert 0.3 * background < distractors < 0.7 * background


def _visible(frame: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    distance = np.abs(frame.astype(np.int32) - np.asarray(rgb, np.int32)).sum(-1)
    return bool((distance < 90).mean() > 0.05)


def _audible(second: np.ndarray, freq: float, rate: int = 16000) -> bool:
    spectrum = np.abs(np.fft.rfft(second))
    peak = spectrum[int(round(freq * len(second) / rate)) - 2: int(round(freq * len(second) / rate)) + 3].max()
    return bool(peak > 50 * np.median(spectrum))


def test_written_media_events_need_both_modalities(tmp_path) -> None:
    """Decode the written clips: per second, the class's motif in the frame and its tone in the audio; the label is
    the event exactly when both are there, and every background second (distractor_prob = 1) has one of them."""
    folder = make_synthetic_ave(tmp_path, seed=0, settings=TINY)
    dataset = AveDataset(folder, "all")
    seen = {"event": 0, "picture only": 0, "sound only": 0}
    for item in dataset.items:
        labels = item.labels
        event_class = next(c for c in labels if c != BACKGROUND)
        frames, indices, _ = decode_frames(item.video, 10)
        assert indices == [2 * m + 1 for m in range(10)]  # the frame in the middle of each second
        wave = decode_audio(item.audio, 16000, seconds=10).numpy()
        for s in range(10):
            visible = _visible(frames[s].numpy(), class_motif(event_class).rgb)
            audible = _audible(wave[s * 16000: (s + 1) * 16000], fundamental(event_class))
            assert (labels[s] == event_class) == (visible and audible), (item.video_id, s, visible, audible)
            if labels[s] == BACKGROUND:
                assert visible != audible, (item.video_id, s)
                seen["picture only" if visible else "sound only"] += 1
            else:
                seen["event"] += 1
    assert all(seen.values()), seen


@pytest.mark.parametrize("branches", ["audio-visual", "video", "audio"])
def test_small_settings_build_the_clip_shaped_model(branches: str) -> None:
    from stgcma_fast import FastSTGCMA
    from stgcma_fast.data.video import CLIP_MEAN
    from stgcma_fast.tasks.ave.task import frame_settings, frontend_settings

    cfg = SYNTHETIC_SMALL.model_config(branches)
    assert cfg.branches == branches and cfg.num_frames == 10 and cfg.backbone.startswith("vit_base_patch16_clip")
    model = FastSTGCMA(cfg)
    assert model.img_size == (SYNTHETIC_SMALL.size,) * 2 and model.bottleneck == SYNTHETIC_SMALL.adapter
    frames = frame_settings(model, (0.6, 1.0))
    assert (frames.crop_size, frames.num_frames, frames.mean, frames.crop_scale) == (32, 10, CLIP_MEAN, (0.6, 1.0))
    audio = frontend_settings(model)
    assert (audio.target_frames, audio.num_mel_bins, audio.num_segments) == (48, 128, 10)
    options = AveOptions(**SYNTHETIC_SMALL.task_options)
    assert options.mixup_prob == 0.0 and not options.spec_augment
