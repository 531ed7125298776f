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
