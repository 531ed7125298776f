"""Kernel benchmarks: each STG-CMA op (and the frozen LayerNorm and QuickGELU) on each provider (fused Triton,
eager torch chain, torch.compile of that chain, xformers / SDPA for attention), forward and forward+backward, at
CLIP ViT-B/16, ViT-L/14 and a Swin-like shape on a GPU, and at a tiny shape on CPU only (where only the harness is
exercised).

Bytes and FLOPs of each case are those of its fused (Triton) run, counted op by op on fake tensors by
bench.roofline (its inputs and outputs, and for fwd+bwd the backward's: the floor any implementation pays). They
give every provider's GB/s, share of the copy bandwidth measured in the same run (machine_info
["copy_bandwidth_gbps"]) and TFLOP/s; the per-op counts (``floor_ops``) give bench.report the case's floor time.
On a GPU each case is timed on the device (CUDA-graph replay, else CUDA events: ``bench.common.device_time``), not by
the host clock: a kernel of a few microseconds would otherwise measure mostly its launch and a synchronisation.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from stgcma_fast.ops import torch_ops

from .cases import MODES, SHAPES, kernel_args, step
from .common import CPU_ONLY, DEVICE, GPU_ONLY, HAS_CUDA, run_benchmark
from .roofline import kernel_floor

DTYPE = torch.bfloat16 if HAS_CUDA else torch.float32


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


# Providers per op: the fused kernel, the torch backend (eager; SDPA with its permute copies for attention) and
# torch.compile of that backend, or xformers for attention.
PROVIDERS = {"av_adapter": ("triton", "eager", "compile"), "t_adapter": ("triton", "eager", "compile"),
             "temporal_attention": ("triton", "xformers", "sdpa"), "quick_gelu": ("triton", "eager", "compile"),
             "layer_norm": ("triton", "eager", "compile")}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op, provider", [(op, p) for op, providers in PROVIDERS.items() for p in providers])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_kernel(benchmark, shape, op, provider, mode):
    _bench(benchmark, op, shape, provider, mode)


def _bench(benchmark, op: str, shape: str, provider: str, mode: str) -> None:
    d = _shape(shape)
    grad = mode == "fwd+bwd"

    def make(*shape, dtype=None, grad=grad):
        return (0.5 * torch.randn(shape, device=DEVICE)).to(dtype or DTYPE).requires_grad_(grad)

    args = kernel_args(op, d, make, DTYPE)
    fn = _call(_provider(op, "eager" if provider == "sdpa" else provider), op, args)
    floor = kernel_floor(op, shape, mode, DTYPE)
    run_benchmark(benchmark, step(fn, args, mode), bytes_moved=floor.bytes, flops=floor.flops or None, op=op,
                  provider=provider, mode=mode, shape=shape, dtype=str(DTYPE), dims=d,
                  floor_ops=[[o.bytes, o.flops] for o in floor.ops], device_timer=True)


# ----------------------------------------------------------------------------------------------------------------------
# The global AV-Adapter of a Swin stage 1: the whole 56 x 56 map, N = 3,136 tokens per frame each side, r = 32, C =
# 128 (Swin-B Base), where an N x N score matrix per frame is 39 MB in fp32. Providers: "eager", the plain matmul +
# softmax chain (which holds the scores), the torch backend (SDPA with a head axis: fused, tiled) and the Triton
# kernel (streamed). On CPU a 28 x 28 map of one frame keeps the case CI-sized (eager chain and torch backend; the
# Triton kernel would run in the interpreter); the largest tensor any aten op returns is recorded next to the time
# (CPU peak memory is not measured by the harness).
GLOBAL_AVA = {"swin-b-stage1": dict(G=80, N=3136, D=128, r=32, gpu=True),
              "swin-b-stage1-cpu": dict(G=1, N=784, D=128, r=32, gpu=False)}  # fmt: skip


def _plain_av_adapter(u_v, u_a, x_v, x_a, wdv, bdv, wuv, buv, wda, bda, wua, bua, alpha, beta):
    """The AV-Adapter as the eager chain of its equations (both N_v x N_a score matrices in memory)."""
    F = torch.nn.functional
    h_v, h_a = F.gelu(F.linear(u_v, wdv, bdv)), F.gelu(F.linear(u_a, wda, bda))
    hv = h_v + alpha * torch.softmax(h_v @ h_a.transpose(-1, -2), -1) @ h_a
    ha = h_a + beta * torch.softmax(h_a @ h_v.transpose(-1, -2), -1) @ h_v
    return x_v + u_v + F.linear(hv, wuv, buv), x_a + u_a + F.linear(ha, wua, bua)


def _largest_output(fn) -> int:
    """Elements of the largest tensor any aten op returns during ``fn()``."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    Largest.numel = max(Largest.numel, t.numel())
            return out

    with Largest():
        fn()
    return Largest.numel


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ["eager", "torch-backend", "triton"])  # "eager": the report's speed-up base
@pytest.mark.parametrize("shape", list(GLOBAL_AVA))
def test_global_av_adapter(benchmark, shape, provider, mode):
    from stgcma_fast.flops import av_adapter_flops

    d = GLOBAL_AVA[shape]
    if d["gpu"] != HAS_CUDA:
        pytest.skip(GPU_ONLY if d["gpu"] else CPU_ONLY)
    G, N, D, r = d["G"], d["N"], d["D"], d["r"]
    grad = mode == "fwd+bwd"

    def make(*shape):
        return (0.5 * torch.randn(shape, device=DEVICE)).to(DTYPE).requires_grad_(grad)

    w = lambda: (make(r, D), make(r), make(D, r), make(D))  # noqa: E731
    args = (make(G, N, D), make(G, N, D), make(G, N, D), make(G, N, D), *w(), *w(), make(), make())
    fn = {"eager": _plain_av_adapter, "torch-backend": torch_ops.av_adapter}.get(provider)
    if fn is None and not HAS_CUDA:
        pytest.skip("the Triton kernel runs in the interpreter on CPU (seconds per call at 784 tokens): a GPU case; "
                    "its CPU parity is tests/kernels/test_av_adapter.py")
    if fn is None:
        fn = _call(_provider("av_adapter", provider), "av_adapter", args)
    run = step(fn, args, mode)
    largest = _largest_output(run) if not HAS_CUDA else None
    flops = av_adapter_flops(G, N, N, D, r, 2, backward=False) + (av_adapter_flops(G, N, N, D, r, 2, backward=True)
                                                                   if grad else 0)  # fmt: skip
    run_benchmark(benchmark, run, flops=flops, op="av_adapter-global", provider=provider, mode=mode, shape=shape,
                  dtype=str(DTYPE), dims=d, device_timer=True)
    if largest is not None:
        benchmark.extra_info["largest_tensor_mib"] = largest * torch.finfo(DTYPE).bits / 8 / 2**20
        benchmark.extra_info["n_by_n_mib"] = G * N * N * torch.finfo(DTYPE).bits / 8 / 2**20
