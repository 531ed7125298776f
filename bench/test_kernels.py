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
