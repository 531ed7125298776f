"""Fill Triton's on-disk kernel cache, in the background, with the kernel variants a GPU run is about to launch.

    python scripts/warm_triton_cache.py [--jobs N] [TASK ...]

A task runs what a benchmark runs, on a CUDA device, with every Triton launch turned into a compilation
(``JITFunction.run`` with ``warmup=True``: the variant is compiled, specialised and cached exactly as the launch would
have it, nothing runs) and the autotuners' timer turned into one such call, so that every launch candidate of every
autotuned key is compiled once. The later real run then finds each variant on disk instead of compiling it while a
benchmark waits (an autotuner compiles its candidates one after another, in the timed process). Torch operations
still run, on uninitialised kernel outputs: their values are meaningless and unused.

Tasks (default: all, in this order), each in its own process, ``--jobs`` at a time:

  model-b16-train:OP   FastSTGCMA clip-b16-base training step, batch 8 x 10 frames, bf16 autocast, only OP on its
                       Triton kernel (two blocks deep: the first block has no drop path, the others do, and
                       otherwise every block launches the same variants)
  kernels-b16:OP       bench/test_kernels.py's vit-b16 rows of OP's Triton kernel, fwd and fwd+bwd
  model-b16-infer:OP   the clip-b16-base inference step (the forward's variants that keep nothing for backward)

OP: av_adapter, t_adapter, temporal_attention, quick_gelu, layer_norm. A task that fails says why on stderr and the
others go on: warming is an optimisation, the run it precedes compiles whatever is missing itself.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPS = ("av_adapter", "t_adapter", "temporal_attention", "quick_gelu", "layer_norm")
KINDS = ("model-b16-train", "kernels-b16", "model-b16-infer")
TASKS = tuple(f"{kind}:{op}" for kind in KINDS for op in OPS)


def compile_only() -> None:
    """Make every Triton launch in this process a compilation (no launch), and the autotuners' benchmark one such
    call per candidate."""
    import triton
    import triton.testing
    from triton.runtime.jit import JITFunction

    run = JITFunction.run

    def compile_instead(self, *args, grid, warmup, **kwargs):
        return run(self, *args, grid=grid, warmup=True, **kwargs)

    def call_once(fn, *args, quantiles=None, **kwargs):
        fn()
        return [1.0] * len(quantiles) if quantiles else 1.0

    JITFunction.run = compile_instead
    triton.testing.do_bench = call_once


def _model_step(op: str, train: bool) -> None:
    import torch

    from stgcma_fast import FastSTGCMA, STGCMAConfig

    cfg = STGCMAConfig.preset("clip-b16-base", backbone_kwargs={"depth": 2})  # drop path 0 in block 0, > 0 after
    model = FastSTGCMA(cfg, backends={op: "triton"}).cuda().train(train)
    batch = 8  # bench/test_model.py's clip-b16-base batch: the sizes the JIT specialises on (G = 80 frames)
    video = torch.randn(batch, cfg.num_frames, 3, *model.img_size, device="cuda")
    audio = torch.randn(batch, cfg.num_frames, *cfg.audio_size, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.set_grad_enabled(train):
        out = model(video, audio)
    if train:
        (out.video_cls.float().sum() + out.audio_cls.float().sum()).backward()


def _kernel_rows(op: str) -> None:
    import importlib

    import torch

    sys.path.insert(0, str(REPO))  # bench/ is not installed
    from bench.cases import SHAPES, kernel_args, step

    module = importlib.import_module(f"stgcma_fast.kernels.{op}")
    for mode in ("fwd", "fwd+bwd"):
        grad = mode == "fwd+bwd"

        def make(*shape, dtype=None, grad=grad):
            return torch.randn(shape, device="cuda").to(dtype or torch.bfloat16).requires_grad_(grad)

        args = kernel_args(op, SHAPES["vit-b16"], make, torch.bfloat16)
        step(getattr(module, op), args, mode)()


def run_task(task: str) -> None:
    kind, _, op = task.partition(":")
    if kind not in KINDS or op not in OPS:
        raise ValueError(f"expected a task KIND:OP with KIND in {KINDS} and OP in {OPS}, got {task!r}")
    compile_only()
    if kind == "kernels-b16":
        _kernel_rows(op)
    else:
        _model_step(op, train=kind == "model-b16-train")
    import torch

    torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="warm_triton_cache.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("tasks", nargs="*", metavar="TASK", help="KIND:OP (default: all)")
    parser.add_argument("--jobs", type=int, default=4, help="tasks at a time, one process each (default 4)")
    parser.add_argument("--task", help=argparse.SUPPRESS)  # run one task in this process
    ns = parser.parse_args(argv)
    if ns.task:
        start = time.perf_counter()
        try:
            run_task(ns.task)
        except Exception:  # reported, never raised: the run this precedes compiles what is missing itself
            print(f"warm {ns.task}: FAILED after {time.perf_counter() - start:.0f} s\n{traceback.format_exc()}",
                  file=sys.stderr, flush=True)  # fmt: skip
            return 1
        print(f"warm {ns.task}: done in {time.perf_counter() - start:.0f} s", flush=True)
        return 0
    unknown = [t for t in ns.tasks if t not in TASKS]
    if unknown or ns.jobs < 1:
        parser.error(f"expected tasks among {', '.join(TASKS)} and --jobs >= 1, got {unknown or ns.jobs}")
    pending, running = list(ns.tasks or TASKS), []
    while pending or running:
        running = [p for p in running if p.poll() is None]
        while pending and len(running) < ns.jobs:
            cmd = [sys.executable, os.path.abspath(__file__), "--task", pending.pop(0)]
            running.append(subprocess.Popen(cmd, cwd=REPO))
        time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
