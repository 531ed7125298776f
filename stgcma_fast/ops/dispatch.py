"""Backend selection for the STG-CMA ops (the four of the spec, and the frozen FFN activation and LayerNorm).

Each backend declares what it accepts through ``supports(*args) -> reason | None``. A dispatcher, owned by one
model instance, picks the first backend in preference order that accepts the inputs, or the one the user forced
(then a refusal is an error that says why). ``Dispatcher.last`` records what was picked; nothing is global.

Backend modules are imported when a dispatcher is built, not while a model runs, and ``supports`` functions only
look at devices, dtypes and shapes, so ``torch.compile(fullgraph=True)`` traces the selection as constants.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

OPS = ("temporal_attention", "spatial_attention", "t_adapter", "av_adapter", "quick_gelu", "layer_norm")


_MODULES: dict[str, Any] = {}  # module name -> module, or the ImportError message if it cannot be imported


def _import(module: str) -> Any:
    if module not in _MODULES:
        try:
            _MODULES[module] = importlib.import_module(module)
        except ImportError as err:  # e.g. triton or xformers missing
            _MODULES[module] = f"cannot import {module}: {err}"
    return _MODULES[module]


def _device_type(args: tuple) -> str:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device.type
    return "cpu"


def gpu_validated(module: Any) -> bool:
    """Whether ``module``'s ``GPU_VALIDATED`` flag is set; a module without the flag is not validated."""
    return getattr(module, "GPU_VALIDATED", False) is True


@dataclass(frozen=True)
class Backend:
    """One implementation of an op: ``module`` provides a function named ``op`` and, optionally:

    - ``supports(*args) -> reason | None``: what it accepts (device, dtype, shapes);
    - ``AUTO_DEVICES``: device types on which automatic selection may pick it (default: all). Triton kernels list
      only ``("cuda",)``: on CPU they run in the interpreter, which tests use by forcing the backend;
    - ``GPU_VALIDATED``: False until its parity tests have passed on a GPU; automatic selection then skips it on
      CUDA (forcing it still works) unless ``stgcma-fast selftest`` recorded it as validated on this machine's GPU
      (:mod:`stgcma_fast.ops.selftest`; the dispatcher passes those modules as ``validated``). A module without
      the flag counts as NOT validated (:func:`gpu_validated`): the torch and xformers backends set it True.
    """

    name: str
    op: str
    module: str

    def fn(self) -> Callable[..., Any]:
        return getattr(_import(self.module), self.op)

    def refusal(self, *args: Any, forced: bool = False, validated: frozenset[str] = frozenset(),
                **kwargs: Any) -> str | None:  # fmt: skip
        """None if this backend accepts these inputs, else the reason it does not. ``forced`` skips the
        automatic-selection policies (AUTO_DEVICES, GPU_VALIDATED) but not ``supports``; ``validated``: modules a
        self-test on this GPU passed (they count as GPU_VALIDATED)."""
        mod = _import(self.module)
        if isinstance(mod, str):
            return mod
        if not forced:
            device = _device_type(args)
            auto = getattr(mod, "AUTO_DEVICES", None)
            if auto is not None and device not in auto:
                return f"not chosen automatically on {device} (only on {', '.join(auto)}); force it to use it"
            if device == "cuda" and not gpu_validated(mod) and self.module not in validated:
                return ("not yet validated on a GPU (its GPU parity tests are pending): run `stgcma-fast selftest` "
                        "on this GPU, or force it to use it")
        supports = getattr(mod, "supports", None)
        return None if supports is None else supports(*args, **kwargs)


_TORCH = "stgcma_fast.ops.torch_ops"
_XFORMERS = "stgcma_fast.ops.xformers_ops"
_KERNELS = "stgcma_fast.kernels"

# Preference order per op: the first backend that accepts the inputs runs them. The plain-torch backend accepts
# everything, so the library works on any device.
REGISTRY: dict[str, list[Backend]] = {
    "temporal_attention": [Backend("triton", "temporal_attention", f"{_KERNELS}.temporal_attention"),
                           Backend("sdpa", "temporal_attention", _TORCH),
                           Backend("xformers", "temporal_attention", _XFORMERS)],
    "spatial_attention": [Backend("sdpa", "spatial_attention", _TORCH),
                          Backend("xformers", "spatial_attention", _XFORMERS)],
    "t_adapter": [Backend("triton", "t_adapter", f"{_KERNELS}.t_adapter"), Backend("torch", "t_adapter", _TORCH)],
    "av_adapter": [Backend("triton", "av_adapter", f"{_KERNELS}.av_adapter"), Backend("torch", "av_adapter", _TORCH)],
    "quick_gelu": [Backend("triton", "quick_gelu", f"{_KERNELS}.quick_gelu"), Backend("torch", "quick_gelu", _TORCH)],
    "layer_norm": [Backend("triton", "layer_norm", f"{_KERNELS}.layer_norm"), Backend("torch", "layer_norm", _TORCH)],
}


def available_backends(op: str) -> list[str]:
    if op not in REGISTRY:
        raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
    return [b.name for b in REGISTRY[op]]


class Dispatcher:
    """Per-instance op dispatch with optional overrides ``{op: backend name}``; ``last`` maps each op to the backend
    its last eager call ran on (not updated while torch.compile traces)."""

    def __init__(self, overrides: dict[str, str] | None = None, validated: frozenset[str] | None = None) -> None:
        """``validated``: kernel modules to treat as validated on CUDA (default: what ``stgcma-fast selftest``
        recorded for the current CUDA device; empty without CUDA)."""
        self.overrides: dict[str, str] = {}
        self.last: dict[str, str] = {}
        for backends in REGISTRY.values():
            for backend in backends:
                _import(backend.module)
        if validated is None:
            from stgcma_fast.ops.selftest import validated_modules_for_current_device

            validated = validated_modules_for_current_device()
        self.validated: frozenset[str] = frozenset(validated)
        for op, name in (overrides or {}).items():
            self.set_backend(op, name)

    def set_backend(self, op: str, name: str | None) -> None:
        """Force ``op`` to run on backend ``name`` (None restores automatic selection)."""
        names = available_backends(op)
        if name is None:
            self.overrides.pop(op, None)
            return
        if name not in names:
            raise ValueError(f"unknown backend {name!r} for {op}; expected one of {names}")
        self.overrides[op] = name

    def select(self, op: str, *args: Any, **kwargs: Any) -> Backend:
        forced = self.overrides.get(op)
        reasons = []
        for backend in REGISTRY[op]:
            if forced is not None and backend.name != forced:
                continue
            reason = backend.refusal(*args, forced=forced is not None, validated=self.validated, **kwargs)
            if reason is None:
                # Recorded in eager calls only: a traced mutation would be a side effect torch.compile refuses inside
                # a recomputed (checkpointed) segment; the traced choice is the eager one for the same inputs.
                if not torch.compiler.is_compiling():
                    self.last[op] = backend.name
                return backend
            reasons.append(f"{backend.name}: {reason}")
        what = f"backend {forced!r} (forced)" if forced else "no backend"
        raise ValueError(f"{what} cannot run {op} on these inputs: " + "; ".join(reasons))

    def __call__(self, op: str, *args: Any, **kwargs: Any) -> Any:
        return self.select(op, *args, **kwargs).fn()(*args, **kwargs)
