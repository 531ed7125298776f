"""Small host-side helpers shared by the kernel modules: the eager / custom-op switch, dtype and device policy,
interpreter detection, and the launch-tuning scaffolding (autotune arguments, launch candidates, forced launches)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import triton
import triton.language as tl
from torch.utils._python_dispatch import _get_current_dispatch_mode
from triton.runtime.interpreter import InterpretedFunction


def eager_autograd() -> bool:
    """Whether a kernel's public function runs its ``torch.autograd.Function`` (True: a plain eager call) or its
    ``torch.library`` custom op (under torch.compile, and under a Python dispatch mode: fake tensors, FlopCounterMode,
    stgcma_fast.roofline's counter, tracing, which see the custom op as one op with its fake implementation and FLOP
    formula). Both run the same launchers; a custom op costs several times the Python time of the Function per eager
    call (on CPU with the launchers stubbed out, with grad: QuickGELU 68 vs 10 us, the AV-Adapter 257 vs 34 us),
    which at 168 kernel calls per ViT-B/16 forward is milliseconds a GPU would wait for."""
    return not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None


def acc_dtypes(dtype: torch.dtype) -> tuple[torch.dtype, tl.dtype]:
    """Accumulation dtype (torch, triton) for inputs of ``dtype``: fp64 for fp64 (interpreter gradchecks), else fp32."""
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def ieee_dot_precision(dtype: torch.dtype) -> str:
    """IEEE fp32 dots (parity with the fp64 reference); the setting only affects fp32 operands."""
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def interpreted(kernel) -> bool:
    """True when ``kernel`` (a ``@triton.jit`` function, or an autotuner around one) was defined under
    TRITON_INTERPRET=1 (runs on CPU tensors)."""
    return isinstance(kernel, InterpretedFunction) or isinstance(getattr(kernel, "fn", None), InterpretedFunction)


def device_dtype_refusal(device: torch.device, dtype: torch.dtype, is_interpreted: bool,
                         dtypes: tuple[torch.dtype, ...], interpreter_dtypes: tuple[torch.dtype, ...]) -> str | None:
    """Why a kernel cannot run on ``device`` / ``dtype`` (None if it can): CUDA with ``dtypes``, or CPU tensors under
    the interpreter with ``interpreter_dtypes``."""
    if device.type == "cpu" and not is_interpreted:
        return "device cpu needs TRITON_INTERPRET=1"
    if device.type not in ("cpu", "cuda"):
        return f"device {device.type} unsupported (cuda, or cpu under TRITON_INTERPRET=1)"
    allowed = interpreter_dtypes if is_interpreted else dtypes
    if dtype not in allowed:
        why = " (the Triton interpreter computes bf16 tl.dot wrong)" if dtype == torch.bfloat16 else ""
        return f"dtype {str(dtype).removeprefix('torch.')} unsupported{why}; supported: " + ", ".join(
            str(d).removeprefix("torch.") for d in allowed)
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Autotuning: switch, timer and forced launches (tests check every GPU candidate by forcing it)
def autotune_enabled() -> bool:
    """Whether the GPU launchers time their candidates (``STGCMA_FAST_AUTOTUNE``, default on; "0" turns it off and
    each launcher runs its first candidate)."""
    return os.environ.get("STGCMA_FAST_AUTOTUNE", "1") != "0"


def quick_bench(fn, quantiles=None):
    """The autotuners' timer: a shorter warm-up and repeat than Triton's default (25 / 100 ms); these kernels take
    tens to hundreds of microseconds, and each (kernel, key) times its few candidates once per process."""
    return triton.testing.do_bench(fn, warmup=5, rep=25, quantiles=quantiles)


def autotune_kwargs(launches: Iterable, config: Callable[[Any], triton.Config], key: list[str],
                    candidates: Callable[[dict, dict], Iterable], **extra: Any) -> dict:  # fmt: skip
    """The ``@triton.autotune`` arguments of one kernel step: a config per distinct launch in ``launches`` (every GPU
    candidate of the step), timed per ``key`` by :func:`quick_bench`, pruned before each tuning to ``candidates(
    named_args, constexprs)``, the launches that fit this call (``LaunchOverrides.candidates``); ``extra`` (e.g.
    ``reset_to_zero``) is passed on."""

    def prune(configs, named_args, **kwargs):
        return [config(launch) for launch in candidates(named_args, kwargs)]

    return dict(configs=[config(launch) for launch in dict.fromkeys(launches)], key=key,
                prune_configs_by={"early_config_prune": prune}, do_bench=quick_bench, **extra)  # fmt: skip


def launch_sets(per_step: dict) -> list[dict]:
    """Every launch set the autotuners may combine, read column-wise: set i holds each step's i-th candidate (its
    last where a step has fewer), so that each candidate of each step is in some set. ``per_step``: step ->
    candidates."""
    n = max(len(launches) for launches in per_step.values())
    return [{step: launches[min(i, len(launches) - 1)] for step, launches in per_step.items()} for i in range(n)]


class LaunchOverrides:
    """The launches forced per kernel step of one kernel module, and the autotuned kernels whose cached picks a
    change of them must forget.

    ``steps``: the step names (e.g. ``("fwd", "bwd")``); ``kernels`` (set once the kernels are defined): step ->
    ``@triton.autotune`` kernel.
    """

    def __init__(self, steps: tuple[str, ...]) -> None:
        self.steps = steps
        self.forced: dict[str, object] = {}
        self.kernels: dict[str, object] = {}

    def check_step(self, step: str) -> None:
        if step not in self.steps:
            raise ValueError(f"expected step in {self.steps}, got {step!r}")

    def get(self, step: str):
        """The launch forced for ``step``, or None."""
        return self.forced.get(step)

    def candidates(self, step: str, is_interpreted: bool, interpreter_launch: Any,
                   gpu_candidates: Callable[[], tuple]) -> tuple:  # fmt: skip
        """What the kernel of ``step`` may run, in the order every kernel module decides it: the forced launch; under
        the interpreter its one ``interpreter_launch``; else ``gpu_candidates()``, only the first of them when
        autotuning is off (``STGCMA_FAST_AUTOTUNE=0``)."""
        self.check_step(step)
        forced = self.get(step)
        if forced is not None:
            return (forced,)
        if is_interpreted:
            return (interpreter_launch,)
        fit = tuple(gpu_candidates())
        return fit if autotune_enabled() else fit[:1]

    @contextlib.contextmanager
    def force(self, **launches) -> Iterator[None]:
        """Run the given steps with these launches inside the block, bypassing the autotuner; the autotuners' cached
        picks are forgotten on entry and on exit (else a forced launch would not run, or would outlive the block)."""
        unknown = set(launches) - set(self.steps)
        if unknown:
            raise ValueError(f"expected steps among {self.steps}, got {sorted(unknown)}")
        before = dict(self.forced)
        self.forced.update(launches)
        self.forget_tuning()
        try:
            yield
        finally:
            self.forced.clear()
            self.forced.update(before)
            self.forget_tuning()

    def forget_tuning(self) -> None:
        for kernel in self.kernels.values():
            kernel.cache.clear()
