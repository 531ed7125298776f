"""FastSTGCMA with its Triton kernels forced on (CPU: the Triton interpreter) against ReferenceSTGCMA."""

from __future__ import annotations

import os

import pytest
import torch

from stgcma_fast import FastSTGCMA
from stgcma_fast.ops.dispatch import REGISTRY
from stgcma_fast.testing import assert_close

from .helpers import inputs, model_pair, tiny_config

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton kernels need a GPU or TRITON_INTERPRET=1",
)

# Where the kernels run: the GPU when there is one (no interpreter there), else CPU tensors under the interpreter.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL_OPS = [op for op, backends in REGISTRY.items() if any(b.name == "triton" for b in backends)]
CASES = {"bidirectional": {}, "a2v": dict(fusion="a2v"), "no-fusion": dict(fusion="none"),
         "video-only": dict(branches="video"), "spatial+global": dict(stages=("spatial", "global"))}


def _on_device(*tensors):
    return [None if t is None else t.to(DEVICE) for t in tensors]


def _grads(model, video, audio, grad_out):
    model.zero_grad(set_to_none=True)
    out = model(video, audio)
    sum((t * g).sum() for t, g in zip((out.video_tokens, out.audio_tokens), grad_out) if t is not None).backward()
    return out, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("case", list(CASES))
def test_model_with_kernels_matches_reference(case):
    cfg = tiny_config(**CASES[case])
    ref, fast = model_pair(cfg, std=0.1, dtype=torch.float32, backends={op: "triton" for op in KERNEL_OPS})
    ref.to(DEVICE).eval(), fast.to(DEVICE).eval()
    video, audio = _on_device(*inputs(cfg))
    g = torch.Generator().manual_seed(3)
    shapes = [(2, cfg.num_frames, n, 64) for n in (17, 7)]
    grad_out = _on_device(*(torch.randn(s, generator=g) for s in shapes))
    out_r, grads_r = _grads(ref, video, audio, grad_out)
    out_f, grads_f = _grads(fast, video, audio, grad_out)
    assert all(fast.ops.last[op] == "triton" for op in KERNEL_OPS if op in fast.ops.last), fast.ops.last
    for name in ("video_tokens", "audio_tokens"):
        r, f = getattr(out_r, name), getattr(out_f, name)
        if r is not None:
            assert_close(f, r, 1e-4, 1e-3, name)
    for name, gr in grads_r.items():
        assert_close(grads_f[name], gr, 1e-4, 5e-3, f"grad {name}")


def test_compile_fullgraph_with_kernels():
    cfg = tiny_config()
    ref, fast = model_pair(cfg, std=0.1, dtype=torch.float32, backends={op: "triton" for op in KERNEL_OPS})
    ref.to(DEVICE), fast.to(DEVICE).eval()
    video, audio = _on_device(*inputs(cfg))
    out = torch.compile(fast, fullgraph=True, backend="aot_eager")(video, audio)
    assert_close(out.video_tokens, ref.eval()(video, audio).video_tokens, 1e-4, 1e-3, "compiled video_tokens")


def test_fresh_model_with_kernels_is_the_frozen_backbone():
    cfg = tiny_config()
    model = FastSTGCMA(cfg, backends={op: "triton" for op in KERNEL_OPS}).to(DEVICE).eval()
    video, audio = _on_device(*inputs(cfg))
    with torch.no_grad():
        out = model(video, audio)
        for m in range(cfg.num_frames):
            assert_close(out.video_tokens[:, m], model.backbone.forward_features(video[:, m]), 1e-5, 1e-5, f"frame {m}")
    assert set(model.ops.last.values()) == {"triton", "sdpa"}


def test_kernels_inside_recomputed_segments_match_reference():
    """Training mode with selective recomputation: the temporal-attention kernel runs again in backward (inside a
    checkpoint), the adapters' kernels outside; gradients still match the reference."""
    cfg = tiny_config()
    ref, fast = model_pair(cfg, std=0.1, dtype=torch.float32, backends={op: "triton" for op in KERNEL_OPS},
                           recompute=("attention", "ffn"))  # fmt: skip
    ref.to(DEVICE).train(), fast.to(DEVICE).train()
    video, audio = _on_device(*inputs(cfg))
    g = torch.Generator().manual_seed(5)
    grad_out = _on_device(*(torch.randn((2, cfg.num_frames, n, 64), generator=g) for n in (17, 7)))
    _, grads_r = _grads(ref, video, audio, grad_out)
    _, grads_f = _grads(fast, video, audio, grad_out)
    assert fast.ops.last["temporal_attention"] == "triton"
    for name, gr in grads_r.items():
        assert_close(grads_f[name], gr, 1e-4, 5e-3, f"grad {name}")
