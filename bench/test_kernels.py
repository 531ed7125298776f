"""Kernel benchmarks: each STG-CMA op on each provider (fused Triton, eager torch chain, torch.compile of that
chain, xformers / SDPA for attention), forward and forward+backward, at CLIP ViT-B/16, ViT-L/14 and a Swin-like
shape on a GPU, and at a tiny shape on CPU only (where only the harness is exercised).

Bytes that must move (the floor any implementation pays; reported as GB/s and as a share of the copy bandwidth
measured in the same run, see machine_info["copy_bandwidth_gbps"]), with e = bytes per element, R token rows:
- t_adapter: forward reads x and the residual and writes the output: 3 R D e (+ weights 2 r D e); forward+backward
  adds reading the output gradient and x and writing dx: 6 R D e in all.
- av_adapter: the same per modality with R = G (N_v + N_a): 3 R D e forward, 6 R D e forward+backward.
- temporal_attention: forward reads q, k, v and writes o: 4 B M N D e; forward+backward also reads q, k, v, o, do
  and writes dq, dk, dv: 12 B M N D e.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from stgcma_fast.ops import torch_ops

from .common import CPU_ONLY, DEVICE, GPU_ONLY, HAS_CUDA, run_benchmark

DTYPE = torch.bfloat16 if HAS_CUDA else torch.float32

# name -> dims; GPU shapes use batch 8 clips of 10 frames (G = 80 frames).
SHAPES = {
    "tiny": dict(B=1, M=4, Nv=17, Na=7, D=64, H=4, r=24, gpu=False),
    "vit-b16": dict(B=8, M=10, Nv=197, Na=49, D=768, H=12, r=96, gpu=True),
    "vit-l14": dict(B=8, M=10, Nv=257, Na=64, D=1024, H=16, r=64, gpu=True),
    "swin-like": dict(B=8, M=10, Nv=49, Na=49, D=256, H=8, r=32, gpu=True),
}
MODES = ("fwd", "fwd+bwd")


def _provider(op: str, provider: str):
    """The callable for ``op`` on ``provider``, or pytest.skip with the reason it is unavailable."""
    eager = getattr(torch_ops, op)
    if provider == "eager":
        return eager
    if provider == "compile":
        if not HAS_CUDA:
            pytest.skip("torch.compile providers are measured on GPU only (compile time dominates tiny CPU cases)")
        return torch.compile(eager)
    if provider == "triton":
        try:
            mod = importlib.import_module(f"stgcma_fast.kernels.{op}")
        except ImportError as err:
            pytest.skip(f"no Triton kernel for {op}: {err}")
        return mod
    if provider == "xformers":
        try:
            import xformers.ops  # noqa: F401
        except ImportError as err:
            pytest.skip(f"xformers not installed: {err}")
        from stgcma_fast.ops import xformers_ops

        return getattr(xformers_ops, op)
    raise ValueError(provider)


def _call(fn_or_mod, op: str, args: tuple):
    if hasattr(fn_or_mod, "supports"):  # a kernel module: refuse with its own reason
        reason = fn_or_mod.supports(*args)
        if reason is not None:
            pytest.skip(f"{op} kernel refuses these inputs: {reason}")
        fn_or_mod = getattr(fn_or_mod, op)
    return fn_or_mod


def _shape(name: str) -> dict:
    dims = SHAPES[name]
    if dims["gpu"] != HAS_CUDA:
        pytest.skip(GPU_ONLY if dims["gpu"] else CPU_ONLY)
    return dims


def _t(*shape, grad: bool) -> torch.Tensor:
    return (0.5 * torch.randn(shape, device=DEVICE)).to(DTYPE).requires_grad_(grad)


def _step(fn, args: tuple, mode: str):
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


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ["triton", "eager", "compile"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_av_adapter(benchmark, shape, provider, mode):
    d = _shape(shape)
    G, Nv, Na, D, r = d["B"] * d["M"], d["Nv"], d["Na"], d["D"], d["r"]
    grad = mode == "fwd+bwd"
    w = lambda: (_t(r, D, grad=grad), _t(r, grad=grad), _t(D, r, grad=grad), _t(D, grad=grad))  # noqa: E731
    args = (_t(G, Nv, D, grad=grad), _t(G, Na, D, grad=grad), _t(G, Nv, D, grad=grad), _t(G, Na, D, grad=grad),
            *w(), *w(), _t(grad=grad), _t(grad=grad))
    fn = _call(_provider("av_adapter", provider), "av_adapter", args)
    rows, e = G * (Nv + Na), torch.finfo(DTYPE).bits // 8
    run_benchmark(benchmark, _step(fn, args, mode), bytes_moved=(3 if mode == "fwd" else 6) * rows * D * e,
                  op="av_adapter", provider=provider, mode=mode, shape=shape, dtype=str(DTYPE), dims=d)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ["triton", "eager", "compile"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_t_adapter(benchmark, shape, provider, mode):
    d = _shape(shape)
    R, D, r = d["B"] * d["M"] * d["Nv"], d["D"], d["r"]
    grad = mode == "fwd+bwd"
    args = (_t(R, D, grad=grad), _t(R, D, grad=grad), _t(r, D, grad=grad), _t(r, grad=grad), _t(D, r, grad=grad),
            _t(D, grad=grad))
    fn = _call(_provider("t_adapter", provider), "t_adapter", args)
    e = torch.finfo(DTYPE).bits // 8
    run_benchmark(benchmark, _step(fn, args, mode), bytes_moved=(3 if mode == "fwd" else 6) * R * D * e,
                  op="t_adapter", provider=provider, mode=mode, shape=shape, dtype=str(DTYPE), dims=d)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ["triton", "xformers", "sdpa"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_temporal_attention(benchmark, shape, provider, mode):
    d = _shape(shape)
    B, M, N, D, H = d["B"], d["M"], d["Nv"], d["D"], d["H"]
    qkv = _t(B, M, N, 3 * D, grad=mode == "fwd+bwd")
    args = (qkv, H, (D // H) ** -0.5)
    fn = _call(_provider("temporal_attention", "eager" if provider == "sdpa" else provider), "temporal_attention",
               args)
    e = torch.finfo(DTYPE).bits // 8
    flops = 4 * B * N * M * M * D * (1 if mode == "fwd" else 3)
    run_benchmark(benchmark, _step(fn, args, mode), bytes_moved=(4 if mode == "fwd" else 12) * B * M * N * D * e,
                  flops=flops, op="temporal_attention", provider=provider, mode=mode, shape=shape, dtype=str(DTYPE),
                  dims=d)
