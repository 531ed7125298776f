"""The analytic FLOP count (used for MFU) against torch's own FLOP counter on the reference model."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from stgcma_fast import ReferenceSTGCMA, STGCMAConfig
from stgcma_fast.flops import stgcma_flops

from .helpers import inputs, tiny_config

CASES = [dict(), dict(stages=("spatial",)), dict(stages=("temporal", "global")), dict(fusion="a2v"),
         dict(fusion="none"), dict(branches="audio"), dict(branches="video", stages=("temporal",))]


@pytest.mark.parametrize("overrides", CASES, ids=[str(c) for c in CASES])
def test_forward_and_train_step_flops_match_torch_flop_counter(overrides):
    cfg = tiny_config(**overrides)
    model = ReferenceSTGCMA(cfg)
    video, audio = inputs(cfg, batch=1)
    with FlopCounterMode(display=False) as fwd:
        model(video, audio)
    with FlopCounterMode(display=False) as step:
        out = model(video, audio)
        sum(t.sum() for t in (out.video_tokens, out.audio_tokens) if t is not None).backward()
    count = stgcma_flops(model)
    assert count.forward == fwd.get_total_flops()
    assert count.train_step == step.get_total_flops()


def test_clip_b16_base_is_about_600_gflop_per_clip():
    with torch.device("meta"):
        model = ReferenceSTGCMA(STGCMAConfig.preset("clip-b16-base"))
    gflop = stgcma_flops(model).forward / 1e9
    assert 570 <= gflop <= 620, gflop
