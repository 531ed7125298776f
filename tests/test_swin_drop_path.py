"""Drop path on a Swin's temporal branch, both implementations: the rate rises linearly over ALL blocks of all stages
(timm's own schedule), only the even blocks of a stage use it, eval equals rate 0, and in training each (clip,
token) sequence is dropped or scaled by exactly 1 / (1 - p_i) on all frames."""

from __future__ import annotations

import pytest
import torch

from .helpers import inputs, randomize_
from .test_drop_path import IMPLS, SCALE_RTOL, _record_temporal_calls
from .test_swin_model import swin_config

RATE = 0.5  # 5 blocks: p = 0, 0.125, 0.25, 0.375, 0.5; the temporal pass runs in blocks 0, 2 and 4


def _model(impl: str, rate: float) -> torch.nn.Module:
    return randomize_(IMPLS[impl](swin_config(drop_path_rate=rate)), std=0.3).double()


@pytest.mark.parametrize("impl", list(IMPLS))
def test_schedule_spans_every_block_of_every_stage(impl):
    model = _model(impl, 0.2)
    assert model.depth == 5
    assert torch.allclose(torch.tensor(model.drop_path_rates), torch.linspace(0, 0.2, 5), atol=1e-7)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_eval_equals_rate_zero(impl):
    model, plain = _model(impl, RATE).eval(), _model(impl, 0.0).eval()
    plain.load_state_dict(model.state_dict())
    video, audio = inputs(model.config, dtype=torch.float64)
    with torch.no_grad():
        out, expected = model(video, audio), plain(video, audio)
    assert torch.equal(out.video_tokens, expected.video_tokens) and torch.equal(out.audio_tokens,
                                                                               expected.audio_tokens)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_training_drops_or_rescales_whole_clip_token_sequences(impl):
    torch.manual_seed(2)
    model = _model(impl, RATE).train()
    records = _record_temporal_calls(model)
    video, audio = inputs(model.config, dtype=torch.float64)
    with torch.no_grad():
        model(video, audio)
    rates = torch.linspace(0.0, RATE, 5).tolist()
    assert sorted((i, m) for i, m, *_ in records) == sorted((i, m) for i in (0, 2, 4) for m in ("video", "audio"))
    for i, modality, x, out, base in records:
        p = rates[i]
        delta, full = out - x, base - x  # (B, M, N, C)
        B, M, N, C = x.shape
        dropped = kept = 0
        for b in range(B):
            for n in range(N):
                if torch.equal(out[b, :, n], x[b, :, n]):
                    dropped += 1
                    continue
                expected = full[b, :, n] / (1.0 - p)
                err = float(((delta[b, :, n] - expected).abs() / expected.abs().clamp_min(1e-3)).max())
                assert err <= SCALE_RTOL, f"block {i} ({modality}), clip {b}, token {n}: not scaled by 1 / (1 - p)"
                kept += 1
        assert (dropped == 0) == (p == 0.0) and kept > 0, (i, modality, dropped, kept)
