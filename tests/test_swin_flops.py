"""The Swin model benchmark's analytic FLOP count (bench.test_model.swin_flops) equals torch's FLOP counter on the
reference forward, across fusion, branches and stages."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.test_model import TINY_SWIN, swin_flops
from stgcma_fast import ReferenceSTGCMA, STGCMAConfig

CASES = {"full": {}, "no-fusion": dict(fusion="none"), "a2v": dict(fusion="a2v"), "video-only": dict(branches="video"),
         "spatial-only": dict(stages=("spatial",)), "global-only": dict(stages=("global",))}


@pytest.mark.parametrize("case", list(CASES))
def test_swin_flops_match_torchs_counter(case):
    cfg = STGCMAConfig(**{**TINY_SWIN, **CASES[case]})
    model = ReferenceSTGCMA(cfg).eval()
    video = torch.randn(1, cfg.num_frames, 3, 56, 56)
    audio = torch.randn(1, cfg.num_frames, 56, 56) if cfg.has_audio else None
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(video, audio)
    assert swin_flops(model).forward == counter.get_total_flops()
