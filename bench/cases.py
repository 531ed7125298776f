"""The kernel benchmark cases (shapes and arguments), shared by bench/test_kernels.py, which times them, and
bench/roofline.py, which counts their memory traffic and FLOPs on fake tensors."""

from __future__ import annotations

from collections.abc import Callable

import torch

OPS = ("av_adapter", "t_adapter", "temporal_attention", "quick_gelu", "layer_norm")
MODES = ("fwd", "fwd+bwd")
# name -> dims; GPU shapes use batch 8 clips of 10 frames (G = 80 frames).
SHAPES = {
    "tiny": dict(B=1, M=4, Nv=17, Na=7, D=64, H=4, r=24, gpu=False),
    "vit-b16": dict(B=8, M=10, Nv=197, Na=49, D=768, H=12, r=96, gpu=True),
    "vit-l14": dict(B=8, M=10, Nv=257, Na=64, D=1024, H=16, r=64, gpu=True),
    "swin-like": dict(B=8, M=10, Nv=49, Na=49, D=256, H=8, r=32, gpu=True),
}


def kernel_args(op: str, d: dict, make: Callable[..., torch.Tensor], dtype: torch.dtype = torch.bfloat16) -> tuple:
    """The arguments of ``op`` (the signature of :mod:`stgcma_fast.ops.torch_ops`) at dims ``d`` for compute dtype
    ``dtype``; ``make(*shape, dtype=None, grad=None)`` makes each tensor (by default in the case's dtype, requiring
    grad as the case does)."""
    G, D = d["B"] * d["M"], d["D"]
    if op == "av_adapter":
        r = d["r"]
        w = lambda: (make(r, D), make(r), make(D, r), make(D))  # noqa: E731
        return (make(G, d["Nv"], D), make(G, d["Na"], D), make(G, d["Nv"], D), make(G, d["Na"], D), *w(), *w(),
                make(), make())  # fmt: skip
    if op == "t_adapter":
        R, r = G * d["Nv"], d["r"]
        return make(R, D), make(R, D), make(r, D), make(r), make(D, r), make(D)
    if op == "temporal_attention":
        return make(d["B"], d["M"], d["Nv"], 3 * D), d["H"], (D // d["H"]) ** -0.5
    if op == "quick_gelu":  # the video FFN's hidden: 4D wide
        return (make(G * d["Nv"], 4 * D),)
    if op == "layer_norm":  # as under autocast: the fp32 residual stream and frozen fp32 affine, output in dtype
        f32 = torch.float32
        return make(G * d["Nv"], D, dtype=f32), make(D, dtype=f32, grad=False), make(D, dtype=f32, grad=False), \
            1e-5, dtype
    raise ValueError(f"unknown op {op!r}; expected one of {OPS}")


def step(fn: Callable[..., object], args: tuple, mode: str) -> Callable[[], object]:
    """One call of the case: ``fn(*args)``, and for "fwd+bwd" the backward from an all-ones output gradient into
    every argument that requires grad (their .grad is reset, so repeated calls do not accumulate)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

    def run():
        out = fn(*args)
        if mode == "fwd+bwd":
            outs = out if isinstance(out, tuple) else (out,)
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
            for t in tensors:
                t.grad = None
        return out

    return run
