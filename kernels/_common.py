"""Small host-side helpers shared by the kernel launchers."""

from __future__ import annotations

import torch
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


def acc_dtypes(dtype: torch.dtype) -> tuple[torch.dtype, tl.dtype]:
    """Accumulation dtype (torch, triton) for inputs of ``dtype``: fp64 for fp64 (interpreter gradchecks), else fp32."""
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def ieee_dot_precision(dtype: torch.dtype) -> str:
    """IEEE fp32 dots (parity with the fp64 reference); the setting only affects fp32 operands."""
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def interpreted(kernel) -> bool:
    """True when ``kernel`` (a ``@triton.jit`` function) was defined under TRITON_INTERPRET=1 (runs on CPU tensors)."""
    return isinstance(kernel.fn, InterpretedFunction)


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
