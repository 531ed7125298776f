"""Spec-level checks that a parity test between two implementations cannot give: which way information flows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stgcma_fast import FastSTGCMA, ReferenceSTGCMA
from stgcma_fast.backbone import audio_pos_embed
from stgcma_fast.modules import AVAdapter
from stgcma_fast.ops import torch_ops
from stgcma_fast.reference import av_adapter
from stgcma_fast.testing import assert_close

from .helpers import inputs, randomize_, tiny_config

IMPLS = {"reference": ReferenceSTGCMA, "fast": FastSTGCMA}

# fusion -> (video reads audio, audio reads video)
FLOWS = {"bidirectional": (True, True), "a2v": (True, False), "v2a": (False, True), "none": (False, False)}


def _changes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) > 1e-6


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("fusion", list(FLOWS))
def test_information_flows_only_in_the_enabled_directions(impl, fusion):
    cfg = tiny_config(fusion=fusion)
    model = randomize_(IMPLS[impl](cfg), std=0.2, frozen_too=False).double().eval()
    video, audio = (t.double() for t in inputs(cfg))
    with torch.no_grad():
        base = model(video, audio)
        moved_v = model(video + torch.randn_like(video), audio)  # perturb the video only
        moved_a = model(video, audio + torch.randn_like(audio))  # perturb the audio only
    v_reads_a, a_reads_v = FLOWS[fusion]
    assert _changes(base.audio_tokens, moved_v.audio_tokens) == a_reads_v, "audio output vs video input"
    assert _changes(base.video_tokens, moved_a.video_tokens) == v_reads_a, "video output vs audio input"


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("stages", [("spatial", "global"), ("temporal", "spatial", "global")], ids=["no-T", "T"])
def test_frames_interact_only_through_the_temporal_stage(impl, stages):
    cfg = tiny_config(stages=stages)
    model = randomize_(IMPLS[impl](cfg), std=0.2, frozen_too=False).double().eval()
    video, audio = (t.double() for t in inputs(cfg))
    moved = video.clone()
    moved[:, 1] += torch.randn_like(moved[:, 1])
    with torch.no_grad():
        base, out = model(video, audio), model(moved, audio)
    assert _changes(base.video_tokens[:, 1], out.video_tokens[:, 1])
    temporal = "temporal" in stages
    for m in (0, 2):
        assert _changes(base.video_tokens[:, m], out.video_tokens[:, m]) == temporal, f"frame {m}"
        assert _changes(base.audio_tokens[:, m], out.audio_tokens[:, m]) == temporal, f"audio segment {m}"
    # audio segment 1 sees video frame 1 through the AV-Adapters in both cases
    assert _changes(base.audio_tokens[:, 1], out.audio_tokens[:, 1])


def _naive_av_adapter(av: AVAdapter, alpha, beta, u_v, u_a):
    """The AV-Adapter for ONE frame written with explicit loops over tokens, straight from the equations."""
    gelu = torch.nn.functional.gelu
    h_v = [gelu(av.video.down.weight @ u + av.video.down.bias) for u in u_v]  # N_v vectors of size r
    h_a = [gelu(av.audio.down.weight @ u + av.audio.down.bias) for u in u_a]
    out_v, out_a = [], []
    for hv in h_v:  # softmax over the audio tokens
        scores = torch.stack([hv @ ha for ha in h_a])
        w = torch.exp(scores - scores.max())
        w = w / w.sum()
        hv2 = hv + alpha * sum(wi * ha for wi, ha in zip(w, h_a))
        out_v.append(av.video.up.weight @ hv2 + av.video.up.bias)
    for ha in h_a:  # softmax over the video tokens
        scores = torch.stack([ha @ hv for hv in h_v])
        w = torch.exp(scores - scores.max())
        w = w / w.sum()
        ha2 = ha + beta * sum(wi * hv for wi, hv in zip(w, h_v))
        out_a.append(av.audio.up.weight @ ha2 + av.audio.up.bias)
    return torch.stack(out_v), torch.stack(out_a)


def test_av_adapter_matches_the_equations_token_by_token():
    torch.manual_seed(1)
    D, r, Nv, Na = 16, 8, 5, 3
    av = AVAdapter(D, r).double()
    for p in av.parameters():
        torch.nn.init.normal_(p, std=0.5)
    alpha, beta = torch.tensor(0.7, dtype=torch.float64), torch.tensor(-1.3, dtype=torch.float64)
    u_v, u_a = torch.randn(Nv, D, dtype=torch.float64), torch.randn(Na, D, dtype=torch.float64)
    exp_v, exp_a = _naive_av_adapter(av, alpha, beta, u_v, u_a)
    got_v, got_a = av_adapter(av, alpha, beta, u_v[None], u_a[None])
    assert_close(got_v[0], exp_v, 1e-10, 1e-10, "reference video")
    assert_close(got_a[0], exp_a, 1e-10, 1e-10, "reference audio")
    # the op contract (x + u + adapter) against the same equations
    zv, za = torch.zeros_like(u_v), torch.zeros_like(u_a)
    w = lambda t: (t.down.weight, t.down.bias, t.up.weight, t.up.bias)  # noqa: E731
    op_v, op_a = torch_ops.av_adapter(u_v[None], u_a[None], zv[None], za[None], *w(av.video), *w(av.audio), alpha,
                                      beta)
    assert_close(op_v[0], u_v + exp_v, 1e-10, 1e-10, "op video")
    assert_close(op_a[0], u_a + exp_a, 1e-10, 1e-10, "op audio")


def test_audio_position_embedding_crops_the_centre_and_keeps_orientation():
    D, gh, gw = 4, 6, 8
    grid = torch.arange(gh * gw * D, dtype=torch.float32).reshape(1, gh * gw, D)
    cls = torch.full((1, 1, D), -1.0)
    pos = torch.cat([cls, grid], 1)
    out = audio_pos_embed(pos, (gh, gw), (2, 4))
    assert out.shape == (1, 1 + 8, D)
    assert torch.equal(out[:, 0], cls[:, 0])
    full = grid.reshape(gh, gw, D)
    expected = full[gh // 2 - 1 : gh // 2 + 1, gw // 2 - 2 : gw // 2 + 2].reshape(1, 8, D)  # rows = time
    assert torch.equal(out[:, 1:], expected)
    # same grid: unchanged
    assert torch.equal(audio_pos_embed(pos, (gh, gw), (gh, gw)), pos)


def test_audio_position_embedding_resizes_a_larger_axis_bilinearly():
    D, gh, gw = 3, 4, 4
    pos = torch.randn(1, 1 + gh * gw, D)
    out = audio_pos_embed(pos, (gh, gw), (2, 8))  # time cropped 4 -> 2, frequency resized 4 -> 8
    g = pos[:, 1:].reshape(1, gh, gw, D).permute(0, 3, 1, 2)
    resized = F.interpolate(g, size=(4, 8), mode="bilinear", align_corners=False)[:, :, 1:3, :]
    assert_close(out[:, 1:], resized.flatten(2).transpose(1, 2), 1e-6, 1e-6)
