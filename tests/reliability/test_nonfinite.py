"""NaN and Inf propagate like in every torch module: into every output of the clip that holds them, never into the
other clips of the batch (see the module doc of stgcma_fast.core)."""

from __future__ import annotations

import pytest
import torch

from stgcma_fast import AVEHead, FastSTGCMA, ReferenceSTGCMA

from ..helpers import inputs, randomize_, tiny_config


@pytest.mark.parametrize("impl", [FastSTGCMA, ReferenceSTGCMA])
@pytest.mark.parametrize("branch", ["video", "audio"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_input_reaches_its_clip_only(impl, branch: str, value: float) -> None:
    cfg = tiny_config()
    model = randomize_(impl(cfg, head=AVEHead(64))).eval()
    video, audio = inputs(cfg, batch=3)
    x = video if branch == "video" else audio
    x[1, 2].view(-1)[5] = value  # one value, in one frame / segment of the middle clip
    with torch.no_grad():
        out = model(video, audio)
    for name in ("video_cls", "audio_cls", "video_tokens", "audio_tokens", "logits"):
        t = getattr(out, name)
        assert torch.isfinite(t[[0, 2]]).all(), f"{name}: a non-finite value leaked into another clip"
        assert not torch.isfinite(t[1]).any(), f"{name}: clip 1 has finite values next to a {value} input"


def test_a_non_finite_value_is_not_an_input_error() -> None:
    cfg = tiny_config()
    model = FastSTGCMA(cfg)
    video, audio = inputs(cfg, batch=1)
    video[0, 0, 0, 0, 0] = float("nan")
    with torch.no_grad():
        out = model(video, audio)  # no check, no masking: torch semantics
    assert out.video_cls.isnan().all() and out.audio_cls.isnan().all()
