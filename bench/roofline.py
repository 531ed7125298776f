"""What the hardware allows: memory traffic, FLOPs and floor time of every kernel case and of a model forward pass,
counted on fake tensors (:mod:`stgcma_fast.roofline`), so it runs on any machine, no GPU needed.

    python -m bench.roofline                  # tables to stdout, at the H100 SXM datasheet figures
    python -m bench.roofline --update-readme  # rewrite the README block between the roofline markers
    python -m bench.roofline --swin           # the Swin presets' model forward (not in the README block yet)

For each kernel case it compares the fused op with the op chain it replaces (the torch backend: the eager chain, or
SDPA with its permute copies): at equal efficiency (the same share of bandwidth and tensor-core rate in every op)
the speed-up is the ratio of their floors; a measured baseline divided by the fused floor is the most any kernel
could gain over it. bench.report uses the floors recorded with each kernel benchmark to show how far a measured
kernel is from its own.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from stgcma_fast import FastSTGCMA, ReferenceSTGCMA, STGCMAConfig
from stgcma_fast.ops import torch_ops
from stgcma_fast.ops.dispatch import REGISTRY
from stgcma_fast.roofline import OpTraffic, Traffic, TrafficCounter, model_forward_traffic, model_train_traffic

from . import report
from .cases import MODES, OPS, SHAPES, kernel_args

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- roofline:start -->", "<!-- roofline:end -->"
# NVIDIA H100 SXM5 datasheet: HBM3 3.35 TB/s, dense BF16 tensor cores 989.4 TFLOP/s (1979 with sparsity).
DATASHEET = ("H100 SXM (datasheet)", 3.35e12, 989.4e12)
BANDWIDTH_GOAL = 0.7  # the AV-Adapter forward's bandwidth target (share of measured HBM bandwidth)
MODEL_PRESETS = ("clip-b16-base", "clip-l14-base")
SWIN_PRESETS = ("swin-b-base", "swin-l-base")
MODEL_BATCH = 8
TRITON_BACKENDS = {op: "triton" for op, backends in REGISTRY.items() if any(b.name == "triton" for b in backends)}
MODEL_PROVIDERS = {"reference": (ReferenceSTGCMA, {}), "fast": (FastSTGCMA, {}),
                   "fast-triton": (FastSTGCMA, {"backends": TRITON_BACKENDS})}


def _fused(op: str):
    return getattr(importlib.import_module(f"stgcma_fast.kernels.{op}"), op)


def case_traffic(op: str, dims: dict, mode: str, provider: str, dtype: torch.dtype = torch.bfloat16) -> Traffic:
    """Traffic of one call of ``op`` at ``dims`` (see bench.cases.kernel_args): ``provider`` "fused" (the Triton op;
    the T-Adapter's weight-gradient GEMMs, which run in torch, included) or "torch" (the torch backend: the eager op
    chain, SDPA for attention). "fwd+bwd" adds the backward into every input that requires grad from a given output
    gradient."""
    fn = _fused(op) if provider == "fused" else getattr(torch_ops, op)
    grad = mode == "fwd+bwd"

    def make(*s, dtype=dtype, grad=grad):
        return torch.empty(s, dtype=dtype, requires_grad=grad)

    with FakeTensorMode():
        args = kernel_args(op, dims, make, dtype)
        inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        with TrafficCounter() as counter:
            out = fn(*args)
            if grad:
                outs = out if isinstance(out, tuple) else (out,)
                torch.autograd.grad(outs, inputs, [torch.empty_like(o) for o in outs])
    return counter.traffic


@functools.cache
def kernel_traffic(op: str, shape: str, mode: str, provider: str, dtype: torch.dtype = torch.bfloat16) -> Traffic:
    """``case_traffic`` of the benchmark case named ``shape`` (bench.cases.SHAPES)."""
    return case_traffic(op, SHAPES[shape], mode, provider, dtype)


def kernel_floor(op: str, shape: str, mode: str, dtype: torch.dtype) -> Traffic:
    """The traffic floor of a kernel case: its fused op's."""
    return kernel_traffic(op, shape, mode, "fused", dtype)


@functools.cache
def model_traffic(preset: str, provider: str, batch: int = MODEL_BATCH) -> Traffic:
    """One bf16-autocast forward pass (inference) of ``batch`` clips, as on a CUDA GPU."""
    cls, kwargs = MODEL_PROVIDERS[provider]
    return model_forward_traffic(cls, STGCMAConfig.preset(preset), batch, **kwargs)


def _baseline(op: str) -> str:
    return "sdpa + permutes" if op == "temporal_attention" else "eager chain"


def kernel_table(bandwidth: float, flop_rate: float) -> str:
    out = ["| op | shape | mode | provider | launches | MB moved | GFLOP | FLOP/byte | floor µs | "
           f"TFLOP/s needed at {BANDWIDTH_GOAL:.0%} of bandwidth | fused speed-up at equal efficiency |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for op in OPS:
        for shape, dims in SHAPES.items():
            if not dims["gpu"]:
                continue
            for mode in MODES:
                base = kernel_traffic(op, shape, mode, "torch")
                fused = kernel_traffic(op, shape, mode, "fused")
                for name, t in ((_baseline(op), base), ("fused", fused)):
                    needed = BANDWIDTH_GOAL * bandwidth * t.flops / t.bytes / 1e12
                    ratio = base.seconds(bandwidth, flop_rate) / fused.seconds(bandwidth, flop_rate)
                    out.append(f"| {op} | {shape} | {mode} | {name} | {t.launches} | {t.bytes / 1e6:.1f} | "
                               f"{t.flops / 1e9:.2f} | {t.flops / t.bytes:.1f} | "
                               f"{1e6 * t.seconds(bandwidth, flop_rate):.1f} | "
                               f"{needed:.0f} | {f'{ratio:.2f}x' if name == 'fused' else '-'} |")
    return "\n".join(out)


def model_table(bandwidth: float, flop_rate: float, presets: Sequence[str] = MODEL_PRESETS) -> str:
    out = [f"| preset | provider | launches | GB moved | TFLOP | floor ms (batch {MODEL_BATCH}) | GEMM-only ms | "
           "floor vs reference |", "|---|---|---|---|---|---|---|---|"]
    for preset in presets:
        ref = model_traffic(preset, "reference").seconds(bandwidth, flop_rate)
        for provider in MODEL_PROVIDERS:
            t = model_traffic(preset, provider)
            floor = t.seconds(bandwidth, flop_rate)
            out.append(f"| {preset} | {provider} | {t.launches} | {t.bytes / 1e9:.1f} | {t.flops / 1e12:.2f} | "
                       f"{1e3 * floor:.2f} | {1e3 * t.flops / flop_rate:.2f} | {ref / floor:.2f}x |")
    return "\n".join(out)


def train_rows() -> list[dict]:
    """Per preset and provider, the counts of one training step (``model_train_traffic``: fake CPU tensors, which
    the Triton kernels accept only when TRITON_INTERPRET=1 was set before they were imported)."""
    rows = []
    for preset in MODEL_PRESETS:
        for provider, (cls, kwargs) in MODEL_PROVIDERS.items():
            t = model_train_traffic(cls, STGCMAConfig.preset(preset), MODEL_BATCH, **kwargs)
            rows.append(dict(preset=preset, provider=provider, ops=[[o.bytes, o.flops] for o in t.ops]))
    return rows


@functools.cache
def _train_rows_in_interpreter_mode() -> list[dict]:
    """``train_rows`` from a process of its own with TRITON_INTERPRET=1 (this one counts the forward pass as on a
    GPU, where the kernels must not be in interpreter mode)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "bench.roofline", "--train-rows"], cwd=README.parent, env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout)


def train_table(bandwidth: float, flop_rate: float) -> str:
    out = [f"| preset | provider | launches | GB moved | TFLOP | floor ms (batch {MODEL_BATCH}) | GEMM-only ms | "
           "floor vs reference |", "|---|---|---|---|---|---|---|---|"]
    rows = _train_rows_in_interpreter_mode()
    floors = {(r["preset"], r["provider"]): Traffic([OpTraffic("", b, 0, f) for b, f in r["ops"]]) for r in rows}
    for (preset, provider), t in floors.items():
        floor = t.seconds(bandwidth, flop_rate)
        ref = floors[(preset, "reference")].seconds(bandwidth, flop_rate)
        out.append(f"| {preset} | {provider} | {t.launches} | {t.bytes / 1e9:.1f} | {t.flops / 1e12:.2f} | "
                   f"{1e3 * floor:.2f} | {1e3 * t.flops / flop_rate:.2f} | {ref / floor:.2f}x |")
    return "\n".join(out)


def where_table(bandwidth: float, flop_rate: float, preset: str = MODEL_PRESETS[0], top: int = 8) -> str:
    """The ops that take most of the fast-triton forward floor."""
    t = model_traffic(preset, "fast-triton")
    total = t.seconds(bandwidth, flop_rate)
    rows = t.by_op(bandwidth, flop_rate)[:top]
    out = ["| op | launches | GB moved | floor ms | share of the floor |", "|---|---|---|---|---|"]
    for name, n, nbytes, _flops, secs in rows:
        out.append(f"| {name} | {n} | {nbytes / 1e9:.2f} | {1e3 * secs:.2f} | {secs / total:.0%} |")
    return "\n".join(out)


def render(device: tuple[str, float, float] = DATASHEET) -> str:
    name, bandwidth, flop_rate = device
    return "\n\n".join([
        f"Counted by `python -m bench.roofline` on fake tensors (no GPU); floor times at the {name} figures: "
        f"{bandwidth / 1e12:.2f} TB/s, {flop_rate / 1e12:.0f} TFLOP/s bf16. Each op reads its inputs and writes its "
        "outputs once; a fused op counts its inputs and outputs only.",
        "**Kernels** (bf16; fwd+bwd includes the backward into every input)",
        kernel_table(bandwidth, flop_rate),
        f"**Model forward** (bf16 autocast, inference, {MODEL_BATCH} clips of 10 frames + 10 audio segments)",
        model_table(bandwidth, flop_rate),
        f"**Training step** (forward and backward into the adapters, {MODEL_BATCH} clips; counted with CPU "
        "dispatch and fp16 autocast, see `model_train_traffic`: CPU autocast keeps the reference's softmax in 16 "
        "bits, so its count is low)",
        train_table(bandwidth, flop_rate),
        f"**Where the fast-triton forward floor goes** ({MODEL_PRESETS[0]})",
        where_table(bandwidth, flop_rate),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.roofline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update-readme", action="store_true", help="rewrite the README's roofline block")
    parser.add_argument("--train-rows", action="store_true", help=argparse.SUPPRESS)  # JSON of train_rows()
    parser.add_argument("--swin", action="store_true", help="print the Swin presets' model forward table only")
    args = parser.parse_args(argv)
    if args.train_rows:
        print(json.dumps(train_rows()))
        return 0
    if args.swin:
        name, bandwidth, flop_rate = DATASHEET
        print(f"**Model forward, Swin** (bf16 autocast, inference, {MODEL_BATCH} clips of 10 frames + 10 audio "
              f"segments; floors at the {name} figures)\n")
        print(model_table(bandwidth, flop_rate, SWIN_PRESETS))
        return 0
    text = render()
    print(text)
    if args.update_readme:
        report.update_readme(text, README, START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
