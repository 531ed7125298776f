"""STG-CMA on a Swin backbone: identity with timm's Swin, Fast vs Reference parity, information flow, outputs,
Microsoft-format checkpoints.

The tiny Swin: 32 x 32 frames, 4 x 4 patches -> an 8 x 8 map; window 4; stages of 2, 2, 1 blocks at widths 16, 32,
64 with maps 8 x 8 (4 windows, block 1 shifted by 2), 4 x 4 (the window is the map: no shift) and 2 x 2 (window
clipped to the map).
"""

from __future__ import annotations

import pytest
import torch

from stgcma_fast import AVEHead, FastSTGCMA, ReferenceSTGCMA, STGCMAConfig
from stgcma_fast.testing import assert_close

from .helpers import inputs, model_pair, randomize_

TINY_SWIN = dict(img_size=32, embed_dim=16, depths=(2, 2, 1), num_heads=(2, 2, 4), window_size=4)
IMPLS = {"reference": ReferenceSTGCMA, "fast": FastSTGCMA}
PRECISIONS = {  # as tests/test_parity.py
    "float64": (torch.float64, 0.3, 1e-9, 1e-7),
    "float32": (torch.float32, 0.1, 5e-5, 5e-4),
}


def swin_config(**overrides) -> STGCMAConfig:
    kw = dict(backbone="swin_tiny_patch4_window7_224", backbone_kwargs=TINY_SWIN, num_frames=3, drop_path_rate=0.0)
    kw.update(overrides)
    return STGCMAConfig(**kw)


def timm_stages(backbone, images: torch.Tensor) -> list[torch.Tensor]:
    """timm's own Swin forward_features on (G, C, H, W) images, each stage's output (G, C_s, H_s, W_s), the last
    after the final norm."""
    x = backbone.patch_embed(images)
    out = []
    for s, layer in enumerate(backbone.layers):
        x = layer(x)
        out.append((backbone.norm(x) if s == len(backbone.layers) - 1 else x).permute(0, 3, 1, 2))
    assert torch.equal(out[-1], backbone.forward_features(images).permute(0, 3, 1, 2))
    return out


# ---------------------------------------------------------------- identity
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_fresh_model_is_timms_swin_stage_by_stage(impl, train):
    """Fresh adapters (zero up-projections and gates): every frame's video stage maps are timm's Swin stages, the
    pooled feature their token mean; the audio ones are timm's Swin on the spectrogram as a grey image (mean
    reduction: the 3-channel image x / 3), through the separate audio patch embedding."""
    cfg = swin_config(drop_path_rate=0.2)
    model = IMPLS[impl](cfg).double()
    randomize_(model.backbone, std=0.3)
    with torch.no_grad():  # the audio embedding follows the randomised backbone
        model.audio_patch_embed.proj.weight.copy_(model.backbone.patch_embed.proj.weight.mean(1, keepdim=True))
        model.audio_patch_embed.proj.bias.copy_(model.backbone.patch_embed.proj.bias)
        model.audio_patch_embed.norm.load_state_dict(model.backbone.patch_embed.norm.state_dict())
    model.train(train)
    video, audio = inputs(cfg, dtype=torch.float64)
    out = model(video, audio)
    B, M = video.shape[:2]
    expected_v = timm_stages(model.backbone.eval(), video.flatten(0, 1))
    expected_a = timm_stages(model.backbone, audio.flatten(0, 1).unsqueeze(1).expand(-1, 3, -1, -1) / 3)
    assert len(out.video_stages) == len(out.audio_stages) == 3
    for s, (ev, ea) in enumerate(zip(expected_v, expected_a)):
        assert out.video_stages[s].shape == (B, M, *ev.shape[1:]) == (B, M, 16 * 2**s, 8 // 2**s, 8 // 2**s)
        assert_close(out.video_stages[s], ev.view(B, M, *ev.shape[1:]), 1e-10, 1e-9, f"video stage {s}")
        assert_close(out.audio_stages[s], ea.view(B, M, *ea.shape[1:]), 1e-10, 1e-9, f"audio stage {s}")
    assert_close(out.video_pooled, expected_v[-1].mean((-1, -2)).view(B, M, -1), 1e-10, 1e-9, "video_pooled")
    assert_close(out.audio_pooled, expected_a[-1].mean((-1, -2)).view(B, M, -1), 1e-10, 1e-9, "audio_pooled")
    assert out.video_cls is None and out.audio_cls is None and model.num_features == 64
    assert out.video_tokens.shape == (B, M, 4, 64)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_audio_patch_embedding_is_the_rgb_reduced_pretrained_one(impl):
    cfg = swin_config()
    for reduction, factor in (("mean", 1 / 3), ("sum", 1.0)):
        model = IMPLS[impl](swin_config(audio_patch_reduction=reduction))
        w = model.backbone.patch_embed.proj.weight
        assert torch.allclose(model.audio_patch_embed.proj.weight, w.sum(1, keepdim=True) * factor, atol=1e-7)
        assert torch.equal(model.audio_patch_embed.proj.bias, model.backbone.patch_embed.proj.bias)
        assert torch.equal(model.audio_patch_embed.norm.weight, model.backbone.patch_embed.norm.weight)
    assert not hasattr(IMPLS[impl](swin_config(branches="video")), "audio_patch_embed") and cfg.has_audio


# ---------------------------------------------------------------- parity
CASES = {
    "bidirectional": dict(fusion="bidirectional"),
    "a2v": dict(fusion="a2v"),
    "v2a": dict(fusion="v2a"),
    "no-fusion": dict(fusion="none"),
    "video-only": dict(branches="video"),
    "audio-only": dict(branches="audio"),
    "temporal-only": dict(stages=("temporal",)),
    "spatial-only": dict(stages=("spatial",)),
    "global-only": dict(stages=("global",)),
    "spatial+global": dict(stages=("spatial", "global")),
    "frozen-only": dict(stages=()),
    "shared-gates": dict(shared_gates=True),
    "per-stage-widths": dict(adapter=[5, 0.5, 3]),
    "one-frame": dict(num_frames=1),
}


def _run(model, video, audio):
    model.zero_grad(set_to_none=True)
    out = model(video, audio)
    g = torch.Generator().manual_seed(3)
    loss = 0
    for t in (out.video_tokens, out.audio_tokens, out.logits, *(out.video_stages or []), *(out.audio_stages or [])):
        if t is not None:
            loss = loss + (t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum()
    loss.backward()
    return out, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_fast_matches_reference_outputs_and_gradients(case, precision):
    dtype, std, atol, rtol = PRECISIONS[precision]
    cfg = swin_config(**CASES[case])
    head = lambda: AVEHead(64, branches=cfg.branches)  # noqa: E731
    ref = randomize_(ReferenceSTGCMA(cfg, head=head()), std=std).to(dtype).eval()
    fast = FastSTGCMA(cfg, head=head()).to(dtype).eval()
    fast.load_state_dict(ref.state_dict())
    video, audio = inputs(cfg, dtype=dtype)
    out_r, grads_r = _run(ref, video, audio)
    out_f, grads_f = _run(fast, video, audio)
    for name in ("video_tokens", "audio_tokens", "video_pooled", "audio_pooled", "logits"):
        a, b = getattr(out_r, name), getattr(out_f, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert_close(b, a, atol, rtol, name)
    for s, (a, b) in enumerate(zip(out_r.video_stages or [], out_f.video_stages or [])):
        assert_close(b, a, atol, rtol, f"video stage {s}")
    assert grads_r.keys() == grads_f.keys()
    for name, g in grads_r.items():
        assert g is not None and grads_f[name] is not None, name
        assert_close(grads_f[name], g, atol, 10 * rtol, f"grad {name}")
    if "temporal" in cfg.stages and cfg.num_frames > 1:  # the bias tables learn
        assert any(n.endswith("temporal_bias_v") and g.abs().max() > 0 for n, g in grads_r.items()) \
            or not cfg.has_video  # fmt: skip


def test_parity_in_training_mode_with_drop_path():
    """Drop path draws differ between the implementations; at rate 0 in training mode they agree exactly, and the
    train-mode forward keeps the frozen backbone in its own (dropout-free) behaviour."""
    cfg = swin_config()
    ref, fast = model_pair(cfg, std=0.3)
    video, audio = inputs(cfg, dtype=torch.float64)
    a, b = ref.train()(video, audio), fast.train()(video, audio)
    assert_close(b.video_tokens, a.video_tokens, 1e-9, 1e-7, "video_tokens")


# ---------------------------------------------------------------- information flow
def _perturbed(model, video, audio, which: str, frame: int = 0):
    v2, a2 = video.clone(), audio.clone()
    (v2 if which == "video" else a2)[:, frame] += 1.0
    return model(video, audio), model(v2, a2)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_a2v_audio_is_independent_of_video(impl):
    cfg = swin_config(fusion="a2v")
    model = randomize_(IMPLS[impl](cfg), std=0.1).eval()
    video, audio = inputs(cfg)
    base, moved = _perturbed(model, video, audio, "video")
    assert torch.equal(base.audio_tokens, moved.audio_tokens)
    assert not torch.allclose(base.video_tokens, moved.video_tokens)
    base, moved = _perturbed(model, video, audio, "audio")
    assert not torch.allclose(base.video_tokens, moved.video_tokens)  # audio reaches video


@pytest.mark.parametrize("stages", [("spatial", "global"), ("temporal", "spatial", "global")])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_frames_interact_only_through_the_temporal_stage(impl, stages):
    cfg = swin_config(stages=stages)
    model = randomize_(IMPLS[impl](cfg), std=0.1).eval()
    video, audio = inputs(cfg)
    base, moved = _perturbed(model, video, audio, "video", frame=0)
    others_same = torch.equal(base.video_tokens[:, 1:], moved.video_tokens[:, 1:]) and \
        torch.equal(base.audio_tokens[:, 1:], moved.audio_tokens[:, 1:])  # fmt: skip
    assert others_same == ("temporal" not in stages)
    assert not torch.allclose(base.video_tokens[:, 0], moved.video_tokens[:, 0])


@pytest.mark.parametrize("impl", list(IMPLS))
def test_shifted_windows_pair_the_same_windows(impl):
    """One stage of two blocks on an 8 x 8 map (window 4), block 0 made the identity, block 1 shifted by 2; only the
    spatial AV-Adapter, audio -> video. An audio change at token (3, 3) of segment 1 reaches, through block 1's
    SW-MSA, exactly its shifted window (rows and columns 2..5), and the AV-Adapter hands it to the video tokens of
    that same window of frame 1, nowhere else (the unshifted window would be rows and columns 0..3)."""
    cfg = swin_config(backbone_kwargs={**TINY_SWIN, "depths": (2,), "num_heads": (2,)}, stages=("spatial",),
                      fusion="a2v")  # fmt: skip
    model = randomize_(IMPLS[impl](cfg).double(), std=0.3).eval()
    assert model.arch.block_parts(1).layout.shift == (2, 2) and model.arch.block_parts(0).layout.shift == (0, 0)
    blk0 = model.backbone.layers[0].blocks[0]
    with torch.no_grad():
        for p in (blk0.attn.proj.weight, blk0.attn.proj.bias, blk0.mlp.fc2.weight, blk0.mlp.fc2.bias):
            p.zero_()
        for p in model.adapters[0].parameters():
            p.zero_()
    video, audio = inputs(cfg, dtype=torch.float64)
    audio2 = audio.clone()
    audio2[:, 1, 12:16, 12:16] += 1.0  # the 4 x 4 patch of token (3, 3)
    a, b = model(video, audio), model(video, audio2)
    changed = (a.video_stages[0] - b.video_stages[0]).abs().amax(dim=2) > 1e-12  # (B, M, 8, 8)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:6, 2:6] = True
    assert not changed[:, [0, 2]].any()
    assert torch.equal(changed[:, 1], expected.expand(2, 8, 8))


# ---------------------------------------------------------------- checkpoints
def _microsoft_state_dict(timm_state: dict[str, torch.Tensor]) -> dict:
    """timm's Swin state dict in Microsoft's original layout: patch merging at the END of stages 0-2
    (``layers.{i-1}.downsample``), the buffers saved, a classifier ``head``, all under ``model``."""
    import re

    out = {}
    for k, v in timm_state.items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        out[k] = v.clone()
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 16, 16)
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    out["head.weight"], out["head.bias"] = torch.randn(10, 64), torch.randn(10)
    return {"model": out}


@pytest.mark.parametrize("impl", list(IMPLS))
def test_microsoft_format_checkpoint_loads_through_timms_conversion(impl, tmp_path):
    cfg = swin_config()
    source = randomize_(ReferenceSTGCMA(cfg).backbone, std=0.2)
    state = {k: v for k, v in source.state_dict().items()}
    ms = _microsoft_state_dict(state)
    assert "layers.0.downsample.reduction.weight" in ms["model"]
    path = tmp_path / "swin_tiny_22k.pth"
    torch.save(ms, path)
    model = IMPLS[impl](cfg, checkpoint_path=path)
    for k, v in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    assert torch.equal(model.audio_patch_embed.proj.weight, state["patch_embed.proj.weight"].mean(1, keepdim=True))
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_checkpoint_missing_a_tensor_is_refused_naming_it(tmp_path):
    cfg = swin_config()
    state = dict(ReferenceSTGCMA(cfg).backbone.state_dict())
    del state["layers.1.downsample.reduction.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing \['layers.1.downsample.reduction.weight'\]"):
        ReferenceSTGCMA(cfg, checkpoint_path=path)


def test_head_reads_the_token_mean():
    cfg = swin_config()
    _, fast = model_pair(cfg, std=0.1, dtype=torch.float32)
    fast.head = AVEHead(fast.num_features)
    out = fast.eval()(*inputs(cfg))
    expected = fast.head(out.video_tokens.mean(2), out.audio_tokens.mean(2))
    assert out.logits.shape == (2, 3, 29) and torch.allclose(out.logits, expected, atol=1e-6)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_meta_model_materialised_with_to_empty_computes_like_a_built_one(impl):
    """to_empty leaves non-persistent buffers uninitialised; the model recomputes Swin's relative-position indices
    and shift masks, so a meta-built model loaded with a state dict computes what the built one does."""
    cfg = swin_config()
    built = randomize_(IMPLS[impl](cfg), std=0.1).eval()
    with torch.device("meta"):
        model = IMPLS[impl](cfg)
    model.to_empty(device="cpu")
    model.load_state_dict(built.state_dict())
    blk, ref = model.backbone.layers[0].blocks[1], built.backbone.layers[0].blocks[1]
    assert torch.equal(blk.attn_mask, ref.attn_mask)
    assert torch.equal(blk.attn.relative_position_index, ref.attn.relative_position_index)
    video, audio = inputs(cfg)
    assert torch.equal(model.eval()(video, audio).video_tokens, built(video, audio).video_tokens)


@pytest.mark.parametrize("grid, window, shift", [((8, 8), (4, 4), (0, 0)), ((8, 8), (4, 4), (2, 2)),
                                                 ((14, 14), (7, 7), (3, 3)), ((4, 4), (4, 4), (0, 0))])
def test_window_order_is_the_partition_of_the_token_indices(grid, window, shift):
    from stgcma_fast.backbones import ShiftedWindows

    layout = ShiftedWindows(grid=grid, window=window, shift=shift)
    x = torch.randn(2, 3, grid[0] * grid[1], 5)
    assert torch.equal(x[:, :, layout.order()].view(6, layout.num_windows, layout.area, 5), layout.partition(x))
    assert torch.equal(layout.reverse(layout.partition(x), 2), x)
    assert layout.row_major == torch.equal(layout.order(), torch.arange(grid[0] * grid[1]))


def test_fast_model_regathers_tokens_only_where_the_window_order_changes():
    """Stage 0 (8 x 8, window 4): into block 0's windows, into block 1's shifted windows, back to row-major; stages
    1 and 2 (one window each, no shift): nothing moves."""
    model = FastSTGCMA(swin_config())
    moves = {name for name, b in model.named_buffers() if name.startswith("_order_") and b is not None}
    assert moves == {"_order_in_0", "_order_in_1", "_order_out_0"}
