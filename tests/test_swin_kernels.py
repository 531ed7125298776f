"""FastSTGCMA on a Swin backbone with its Triton kernels forced on (CPU: the Triton interpreter) against
ReferenceSTGCMA: per-window AV-Adapter, temporal attention with the relative-position bias, per-stage widths."""

from __future__ import annotations

import os

import pytest
import torch

from stgcma_fast import ReferenceSTGCMA
from stgcma_fast.ops.dispatch import REGISTRY
from stgcma_fast.testing import assert_close

from .helpers import inputs, model_pair
from .test_swin_model import swin_config

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton kernels need a GPU or TRITON_INTERPRET=1",
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL_OPS = [op for op, backends in REGISTRY.items() if any(b.name == "triton" for b in backends)]
# Widths 16 / 32 / 64 with 2 / 2 / 4 heads: head dims 8, 16, 16.
CASES = {"bidirectional": {}, "no-fusion": dict(fusion="none"), "video-only": dict(branches="video")}


def _grads(model, video, audio):
    model.zero_grad(set_to_none=True)
    out = model(video, audio)
    g = torch.Generator().manual_seed(3)
    loss = sum((t * torch.randn(t.shape, generator=g).to(t.device)).sum()
               for t in (out.video_tokens, out.audio_tokens) if t is not None)  # fmt: skip
    loss.backward()
    return out, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("case", list(CASES))
def test_swin_model_with_kernels_matches_reference(case):
    cfg = swin_config(num_frames=2, **CASES[case])
    ref, fast = model_pair(cfg, std=0.1, dtype=torch.float32, backends={op: "triton" for op in KERNEL_OPS})
    assert isinstance(ref, ReferenceSTGCMA)
    ref.to(DEVICE).eval(), fast.to(DEVICE).eval()
    video, audio = (None if t is None else t.to(DEVICE) for t in inputs(cfg, batch=1))
    out_r, grads_r = _grads(ref, video, audio)
    out_f, grads_f = _grads(fast, video, audio)
    used = {op: name for op, name in fast.ops.last.items() if op in KERNEL_OPS}
    assert used and all(name == "triton" for name in used.values()), fast.ops.last
    for name in ("video_tokens", "audio_tokens"):
        r, f = getattr(out_r, name), getattr(out_f, name)
        if r is not None:
            assert_close(f, r, 1e-4, 1e-3, name)
    for name, gr in grads_r.items():
        assert_close(grads_f[name], gr, 1e-4, 5e-3, f"grad {name}")
