"""With fresh adapters (zero up-projections, gates and temporal embeddings) STG-CMA computes the frozen backbone."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from stgcma_fast import FastSTGCMA, ReferenceSTGCMA
from stgcma_fast.backbone import audio_pos_embed
from stgcma_fast.testing import assert_close

from .helpers import inputs, randomize_, tiny_config

IMPLS = {"reference": ReferenceSTGCMA, "fast": FastSTGCMA}
ATOL, RTOL = 1e-5, 1e-5


def _frozen_audio_forward(bb, audio: torch.Tensor, grid, reduction: str = "mean") -> torch.Tensor:
    """The frozen backbone on one audio segment per row, written from timm's pieces: (B, T, F) -> (B, N_a, D)."""
    w = bb.patch_embed.proj.weight
    w = w.mean(1, keepdim=True) if reduction == "mean" else w.sum(1, keepdim=True)
    x = F.conv2d(audio.unsqueeze(1), w, bb.patch_embed.proj.bias, stride=bb.patch_embed.patch_size)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([bb.cls_token.expand(x.shape[0], -1, -1), x], 1)
    x = x + audio_pos_embed(bb.pos_embed, bb.patch_embed.grid_size, grid)
    return bb.norm(bb.blocks(bb.norm_pre(x)))


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_fresh_model_is_the_frozen_backbone(impl, train):
    cfg = tiny_config(drop_path_rate=0.2)
    model = IMPLS[impl](cfg)
    model.train(train)
    video, audio = inputs(cfg)
    with torch.no_grad():
        out = model(video, audio)
        for m in range(cfg.num_frames):
            expected_v = model.backbone.forward_features(video[:, m])  # timm's own forward of frame m
            assert_close(out.video_tokens[:, m], expected_v, ATOL, RTOL, f"video frame {m}")
            assert_close(out.video_cls[:, m], expected_v[:, 0], ATOL, RTOL, f"video cls {m}")
            expected_a = _frozen_audio_forward(model.backbone, audio[:, m], model.audio_grid)
            assert_close(out.audio_tokens[:, m], expected_a, ATOL, RTOL, f"audio segment {m}")


@pytest.mark.parametrize("impl", list(IMPLS))
def test_temporal_embedding_is_added_to_every_token_of_its_frame(impl):
    cfg = tiny_config()
    model = IMPLS[impl](cfg).eval()
    with torch.no_grad():
        model.temporal_embed_v.normal_(std=0.5)
    video, audio = inputs(cfg)
    with torch.no_grad():
        out = model(video, audio)
        for m in range(cfg.num_frames):
            bb = copy.deepcopy(model.backbone)
            bb.pos_embed += model.temporal_embed_v[m]  # same as adding e_m to every token of the frame
            assert_close(out.video_tokens[:, m], bb.forward_features(video[:, m]), ATOL, RTOL, f"frame {m}")


@pytest.mark.parametrize("impl", list(IMPLS))
def test_audio_temporal_embedding_is_added_to_every_token_of_its_segment(impl):
    """The audio twin of the video test: e_m of the AUDIO table is added to every token (class token included) of
    segment m, before the pre-norm. Both tables hold distinct random values, so reading the video table (or the
    wrong row, or adding after the pre-norm) fails."""
    cfg = tiny_config()
    model = IMPLS[impl](cfg).eval()
    with torch.no_grad():
        model.temporal_embed_a.normal_(std=0.5)
        model.temporal_embed_v.normal_(std=0.5)
    video, audio = inputs(cfg)
    with torch.no_grad():
        out = model(video, audio)
        for m in range(cfg.num_frames):
            bb = copy.deepcopy(model.backbone)
            bb.pos_embed += model.temporal_embed_a[m]  # the audio position embedding is derived from this one
            expected = _frozen_audio_forward(bb, audio[:, m], model.audio_grid)
            assert_close(out.audio_tokens[:, m], expected, ATOL, RTOL, f"audio segment {m}")


@pytest.mark.parametrize("impl", list(IMPLS))
def test_audio_reduction_sum_is_three_times_mean(impl):
    cfg = tiny_config(audio_patch_reduction="sum")
    model = IMPLS[impl](cfg).eval()
    _, audio = inputs(cfg)
    video, _ = inputs(cfg)
    with torch.no_grad():
        out = model(video, audio)
        expected = _frozen_audio_forward(model.backbone, audio[:, 0], model.audio_grid, reduction="sum")
        assert_close(out.audio_tokens[:, 0], expected, ATOL, RTOL, "audio (sum)")
        # the summed kernel is 3x the mean kernel: feeding audio / 3 through "sum" equals "mean" on audio
        mean_expected = _frozen_audio_forward(model.backbone, audio[:, 0] / 3, model.audio_grid, reduction="sum")
        assert_close(_frozen_audio_forward(model.backbone, audio[:, 0], model.audio_grid), mean_expected, ATOL, RTOL)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("branches", ["audio-visual", "video", "audio"])
def test_pooled_features_and_stage_maps_of_a_vit(impl, branches):
    """ViT: the pooled feature is the class token, and the one stage map holds patch token (h, w) of the grid at
    [..., :, h, w] (rows = time for audio); both are what the tokens say, for every branch setting."""
    cfg = tiny_config(branches=branches)
    model = randomize_(IMPLS[impl](cfg), frozen_too=False).double().eval()
    assert model.num_features == model.embed_dim == 64
    video, audio = inputs(cfg, dtype=torch.float64)
    with torch.no_grad():
        out = model(video, audio)
    B, M = 2, cfg.num_frames
    for name, grid in (("video", (4, 4)), ("audio", (2, 3))):
        tokens, cls = getattr(out, f"{name}_tokens"), getattr(out, f"{name}_cls")
        pooled, stages = getattr(out, f"{name}_pooled"), getattr(out, f"{name}_stages")
        if tokens is None:
            assert pooled is None and stages is None and cls is None, name
            continue
        assert pooled.shape == (B, M, model.num_features), name
        assert torch.equal(pooled, cls) and torch.equal(pooled, tokens[:, :, 0]), name
        assert isinstance(stages, list) and len(stages) == 1, name
        H, W = grid
        assert stages[0].shape == (B, M, model.embed_dim, H, W), name
        for h in range(H):
            for w in range(W):
                assert torch.equal(stages[0][:, :, :, h, w], tokens[:, :, 1 + h * W + w]), f"{name} ({h}, {w})"


@pytest.mark.parametrize("impl", list(IMPLS))
def test_head_reads_the_pooled_features(impl):
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, video_pooled, audio_pooled):
            seen["args"] = (video_pooled, audio_pooled)
            return video_pooled.sum(-1, keepdim=True) - audio_pooled.sum(-1, keepdim=True)

    cfg = tiny_config()
    model = randomize_(IMPLS[impl](cfg, head=Recorder()), frozen_too=False).eval()
    video, audio = inputs(cfg)
    with torch.no_grad():
        out = model(video, audio)
    assert seen["args"][0] is out.video_pooled and seen["args"][1] is out.audio_pooled
    assert out.logits.shape == (2, cfg.num_frames, 1)
