"""Fused QuickGELU, ``x * sigmoid(1.702 x)`` (CLIP's FFN activation), forward and backward in one pass each.

Layout (Liger-Kernel style): private ``@triton.jit`` kernels, plain launchers (``quick_gelu_forward`` /
``quick_gelu_backward``), the ``torch.autograd.Function``, the ``torch.library.custom_op`` registration with its
autograd, the public function with
the signature of :func:`stgcma_fast.ops.torch_ops.quick_gelu`, then capabilities and tolerances.

Why: in eager PyTorch the activation is three elementwise kernels forward (``1.702 * x``, ``sigmoid``, ``*``) and,
recomputing the sigmoid from the saved input as the memory-lean torch backend does, eight backward, each a full
pass over the FFN's 4D-wide hidden (R x 4D), the widest tensor of a block: about 27 bytes of HBM traffic per element
in bf16 for forward and backward, against 10 here (forward reads x and writes y; backward reads x and the output
gradient and writes dx). ``python -m bench.roofline`` counts both.

Both kernels compute in fp32 (fp64 for fp64 x, interpreter gradchecks) and round once on store. Backward saves x
only and recomputes the sigmoid: ``dx = g * (s + 1.702 x s (1 - s))``, ``s = sigmoid(1.702 x)``. One program per
BLOCK elements of the flattened tensor, int64 offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from stgcma_fast.kernels._common import LaunchOverrides, acc_dtypes, device_dtype_refusal, eager_autograd, interpreted

_ALPHA = tl.constexpr(1.702)  # globals read inside @triton.jit functions must be tl.constexpr
_NEG_ALPHA = tl.constexpr(-1.702)


@dataclass(frozen=True)
class _Launch:
    """Elements per program (a power of two) and warps."""

    block: int
    num_warps: int


_STEPS = ("fwd", "bwd")
# One launch: an elementwise pass runs at the memory bandwidth with any reasonable tile; 1024 elements over 4 warps
# is 8 per thread, one 16-byte vector load of 16-bit values.
_GPU_LAUNCH = _Launch(1024, 4)
_INTERPRETER_LAUNCH = _Launch(1024, 1)
_OVERRIDES = LaunchOverrides(_STEPS)  # launches forced per step (the self-test forces the one there is)

AUTO_DEVICES = ("cuda",)
GPU_VALIDATED = False  # set True after `pytest -m gpu tests/kernels/test_quick_gelu.py` passes on a GPU


# ----------------------------------------------------------------------------------------------------------------------
# Kernels
@triton.jit
def _quick_gelu_fwd_kernel(
    X,  # (n,) contiguous input
    Y,  # (n,) contiguous output, dtype of X
    n,  # number of elements
    ACC: tl.constexpr,  # compute dtype: fp32 (fp64 for fp64 X)
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(ACC)
    y = x / (1.0 + tl.exp(x * _NEG_ALPHA))
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _quick_gelu_bwd_kernel(
    X,  # (n,) contiguous input saved by the forward
    G,  # (n,) contiguous gradient of the output
    DX,  # (n,) contiguous gradient of the input, dtype of X
    n,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(ACC)
    g = tl.load(G + offs, mask=mask, other=0.0).to(ACC)
    s = 1.0 / (1.0 + tl.exp(x * _NEG_ALPHA))
    dx = g * (s + _ALPHA * x * s * (1.0 - s))
    tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------------
# Launchers
def _interpreted() -> bool:
    """True when this module's kernels were defined under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    return interpreted(_quick_gelu_fwd_kernel)


def _launch(step: str) -> _Launch:
    forced = _OVERRIDES.get(step)
    return forced if forced is not None else _INTERPRETER_LAUNCH if _interpreted() else _GPU_LAUNCH


def quick_gelu_forward(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(1.702 x)``, contiguous, in x's dtype."""
    reason = supports(x)
    if reason is not None:
        raise ValueError(f"quick_gelu Triton kernel: {reason}")
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        launch = _launch("fwd")
        _quick_gelu_fwd_kernel[(triton.cdiv(n, launch.block),)](
            x, y, n, ACC=acc_dtypes(x.dtype)[1], BLOCK=launch.block, num_warps=launch.num_warps)
    return y


def quick_gelu_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The input gradient from the output gradient ``grad`` and the forward's input ``x``, in x's dtype."""
    if grad.shape != x.shape:
        raise ValueError(f"quick_gelu backward: expected grad of shape {tuple(x.shape)} (the input's), "
                         f"got {tuple(grad.shape)}")
    x, grad = x.contiguous(), grad.to(x.dtype).contiguous()
    dx = torch.empty_like(x)
    n = x.numel()
    if n:
        launch = _launch("bwd")
        _quick_gelu_bwd_kernel[(triton.cdiv(n, launch.block),)](
            x, grad, dx, n, ACC=acc_dtypes(x.dtype)[1], BLOCK=launch.block, num_warps=launch.num_warps)
    return dx


# ----------------------------------------------------------------------------------------------------------------------
# Autograd
class QuickGELUFunction(torch.autograd.Function):
    """Eager autograd wrapper around the launchers, which ``quick_gelu`` runs in plain eager calls (the custom op
    below, which compiles, otherwise: see ``eager_autograd``)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)  # x only: the sigmoid is recomputed
        return quick_gelu_forward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return quick_gelu_backward(grad, x)


# ----------------------------------------------------------------------------------------------------------------------
# torch.library registration: custom_op (not triton_op) so that torch.compile(fullgraph=True) traces it on CPU too.
@torch.library.custom_op("stgcma_fast::quick_gelu", mutates_args=())
def _quick_gelu_op(x: torch.Tensor) -> torch.Tensor:
    return quick_gelu_forward(x)


@_quick_gelu_op.register_fake
def _(x):
    reason = _dtype_problem(x)
    if reason is not None:
        raise ValueError(f"quick_gelu Triton kernel: {reason}")
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("stgcma_fast::quick_gelu_backward", mutates_args=())
def _quick_gelu_backward_op(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return quick_gelu_backward(grad, x)


@_quick_gelu_backward_op.register_fake
def _(grad, x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])  # x only: the sigmoid is recomputed


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return torch.ops.stgcma_fast.quick_gelu_backward(grad, x)


_quick_gelu_op.register_autograd(_backward, setup_context=_setup_context)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """Fused ``x * sigmoid(1.702 x)`` of any shape; the contract is :func:`stgcma_fast.ops.torch_ops.quick_gelu`.
    Keeps only x for backward. Returns a contiguous tensor in x's dtype."""
    if eager_autograd():
        return QuickGELUFunction.apply(x)
    return torch.ops.stgcma_fast.quick_gelu(x)


# ----------------------------------------------------------------------------------------------------------------------
# Capabilities
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INTERPRETER_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # no dots here: bf16 is right

# (atol, rtol) against a float64 reference, applied after dividing both tensors by max(1, max |reference|): one
# rounding of the result to the dtype (the kernel computes in fp32), with room for the fp32 exp.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-6, 1e-6),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
}


def tolerance(dtype: torch.dtype, device: torch.device | str) -> tuple[float, float]:
    """(atol, rtol) for results computed in ``dtype`` on ``device``: ``TOLERANCES[dtype]`` on every device (no
    dots, so nothing runs at a device-dependent precision)."""
    return TOLERANCES[dtype]


def gpu_launch_sets(dtype: torch.dtype, **dims: int) -> list[dict[str, _Launch]]:
    """The launch sets (step -> launch, for ``force_launch``) a GPU may run: the one launch, whatever the shape."""
    return [{step: _GPU_LAUNCH for step in _STEPS}]


def force_launch(**launches: _Launch):
    """Run the given steps (``fwd=``, ``bwd=``) with these launches inside the block; a context manager."""
    return _OVERRIDES.force(**launches)


def _dtype_problem(x: torch.Tensor) -> str | None:
    if not x.is_floating_point():
        return f"expected a floating-point x, got {x.dtype}"
    return None


def supports(x: torch.Tensor) -> str | None:
    """None if the Triton kernel accepts x, else a human-readable reason (same arguments as the op)."""
    problem = _dtype_problem(x)
    if problem is not None:
        return problem
    return device_dtype_refusal(x.device, x.dtype, _interpreted(), DTYPES, INTERPRETER_DTYPES)
