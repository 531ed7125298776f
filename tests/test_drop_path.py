"""Drop path on the temporal branch, in both implementations (``x = x + DropPath(Ad_T(MHSA_t(LN1(x))))``).

What is pinned down (each by a test that a plausible bug fails):
- the schedule: block i of a depth-L model drops with p_i = linspace(0, rate, L)[i];
- eval mode: the model computes exactly what it computes with ``drop_path_rate=0``;
- training: each (clip, token) sequence of a block's temporal branch is either dropped (the branch adds exactly 0)
  or kept and scaled by 1 / (1 - p_i), and the decision is the same on all M frames of the sequence; decisions vary
  between the tokens of a clip and between the clips of a batch.

The training test observes every temporal-branch call of a whole training forward: it records the call's input x
and output, and reruns the same call in eval mode on the same x for the undropped contribution.
"""

from __future__ import annotations

import pytest
import torch

from stgcma_fast import FastSTGCMA, ReferenceSTGCMA

from .helpers import TINY_VIT, inputs, randomize_, tiny_config

IMPLS = {"reference": ReferenceSTGCMA, "fast": FastSTGCMA}
RATE = 0.5
DEPTH = 3  # p = 0, 0.25, 0.5: the first block never drops, the others scale by 4/3 and 2
# The fast model draws its keep mask in fp32: 1 / (1 - p) is exact to fp32 rounding, whatever the model's dtype.
SCALE_RTOL = 1e-6


def _model(impl: str, rate: float, depth: int = DEPTH, seed: int = 0) -> torch.nn.Module:
    cfg = tiny_config(drop_path_rate=rate, backbone_kwargs={**TINY_VIT, "depth": depth})
    model = IMPLS[impl](cfg)
    randomize_(model)  # nonzero adapters: the temporal branch contributes
    return model.double()


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("depth", [1, 3, 4])
def test_schedule_is_linspace_from_zero_to_rate(impl, depth):
    model = _model(impl, 0.3, depth)
    expected = torch.linspace(0.0, 0.3, depth, dtype=torch.float64)
    assert torch.allclose(torch.tensor(model.drop_path_rates, dtype=torch.float64), expected, rtol=0, atol=1e-12), (
        f"drop_path_rates {model.drop_path_rates}, expected {expected.tolist()}")


@pytest.mark.parametrize("impl", list(IMPLS))
def test_eval_equals_rate_zero(impl):
    model = _model(impl, RATE).eval()
    plain = _model(impl, 0.0).eval()
    plain.load_state_dict(model.state_dict())
    video, audio = inputs(model.config, dtype=torch.float64)
    with torch.no_grad():
        out, expected = model(video, audio), plain(video, audio)
    for name in ("video_tokens", "audio_tokens"):
        assert torch.equal(getattr(out, name), getattr(expected, name)), f"{name}: eval output depends on the rate"


def _record_temporal_calls(model: torch.nn.Module) -> list[tuple[int, str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Wrap the model's temporal-branch method; each call appends (block, modality, x, out, out_eval): out_eval is
    the same call on the same x in eval mode (no drop path)."""
    records = []
    adapters = list(model.adapters)
    if isinstance(model, FastSTGCMA):
        name = "_temporal"  # (i, frozen weights, T-Adapter, x)
        where = lambda args: (args[0], args[2], args[3])  # noqa: E731
    else:
        name = "temporal"  # (frozen block parts, T-Adapter, x, drop rate)
        parts = [model.arch.block_parts(i) for i in range(model.depth)]
        where = lambda args: (next(i for i, p in enumerate(parts) if p is args[0]), args[1], args[2])  # noqa: E731
    orig = getattr(model, name)

    def wrapper(*args):
        out = orig(*args)
        i, ad, x = where(args)
        model.train(False)
        base = orig(*args)
        model.train(True)
        modality = "video" if ad is adapters[i].temporal_v else "audio"
        assert modality == "video" or ad is adapters[i].temporal_a
        records.append((i, modality, x.clone(), out.clone(), base.clone()))
        return out

    setattr(model, name, wrapper)
    return records


@pytest.mark.parametrize("impl", list(IMPLS))
def test_training_drops_or_rescales_whole_clip_token_sequences(impl):
    torch.manual_seed(1)
    model = _model(impl, RATE).train()
    records = _record_temporal_calls(model)
    video, audio = inputs(model.config, dtype=torch.float64)
    with torch.no_grad():
        model(video, audio)
    rates = torch.linspace(0.0, RATE, DEPTH).tolist()
    assert sorted((i, m) for i, m, *_ in records) == sorted(
        (i, m) for i in range(DEPTH) for m in ("video", "audio")), "one temporal call per block and modality"
    differs_within_clip = differs_across_clips = False
    for i, modality, x, out, base in records:
        p = rates[i]
        delta, full = out - x, base - x  # (B, M, N, D) the branch's contribution in training / without drop path
        assert full.abs().amax(dim=(1, 3)).min() > 0, "an undropped contribution is zero: the test cannot see drops"
        B, M, N, D = x.shape
        keep = torch.zeros(B, N, dtype=torch.bool)
        for b in range(B):
            for n in range(N):
                where = f"block {i} (p = {p}), {modality}, clip {b}, token {n}"
                seq, seq_full = delta[b, :, n], full[b, :, n]  # (M, D): every frame of the sequence
                if torch.equal(out[b, :, n], x[b, :, n]):
                    continue  # dropped: the branch adds exactly 0 on every frame
                expected = seq_full / (1.0 - p)
                err = float(((seq - expected).abs() / expected.abs().clamp_min(1e-3)).max())
                assert err <= SCALE_RTOL, (
                    f"{where}: neither dropped nor scaled by 1 / (1 - p) = {1 / (1 - p):.6f} on all {M} frames; "
                    f"per-frame ratios {(seq / seq_full).median(dim=-1).values.tolist()}")
                keep[b, n] = True
        if p == 0.0:
            assert keep.all(), f"block {i} has rate 0 but dropped {(~keep).sum()} sequences"
            continue
        assert not keep.all() and keep.any(), f"block {i} (p = {p}), {modality}: keep mask {keep.tolist()}"
        differs_within_clip |= bool((keep.any(dim=1) & ~keep.all(dim=1)).any())
        differs_across_clips |= bool((keep != keep[:1]).any())
    assert differs_within_clip, "every clip kept or dropped all its tokens together"
    assert differs_across_clips, "every clip drew the same keep mask: decisions must be per (clip, token)"
