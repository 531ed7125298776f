"""Fused LayerNorm of a frozen norm that writes its output in the dtype the next GEMM reads, forward and backward.

Layout (Liger-Kernel style): private ``@triton.jit`` kernels, plain launchers (``layer_norm_forward`` /
``layer_norm_backward``), the ``torch.autograd.Function``, the ``torch.library.custom_op`` registration with its
autograd, the public function with
the signature of :func:`stgcma_fast.ops.torch_ops.layer_norm`, then capabilities and tolerances.

Why: under bf16 autocast a block's LayerNorms read the fp32 residual stream and, as autocast runs layer_norm in fp32,
write an fp32 output that the following linear layer then casts to bf16: read 4, write 4, read 4, write 2 bytes per
element forward, and in backward the cast of the bf16 gradient to fp32 and the fp32 LayerNorm backward (read 2,
write 4; read 4 + 4, write 4). Here the forward reads x once and writes ``out_dtype`` once (6 bytes), the backward
reads x and the gradient and writes dx (10 bytes): nothing else is saved or written, the row statistics are
recomputed in backward. ``python -m bench.roofline`` counts both.

The backbone's norms are frozen, so no weight or bias gradient is computed: ``supports`` refuses a weight or bias
that requires grad (the torch backend then runs). One program per row (up to 4096 channels in one block), statistics
and the affine map in fp32 (fp64 for fp64 x), one rounding on store; int64 row offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from stgcma_fast.kernels._common import LaunchOverrides, acc_dtypes, device_dtype_refusal, eager_autograd, interpreted


@dataclass(frozen=True)
class _Launch:
    """Warps per program (one row per program; the channel block is the next power of two of D)."""

    num_warps: int


_STEPS = ("fwd", "bwd")
_OVERRIDES = LaunchOverrides(_STEPS)  # launches forced per step (the self-test forces the one there is)
MAX_CHANNELS = 4096

AUTO_DEVICES = ("cuda",)
GPU_VALIDATED = False  # set True after `pytest -m gpu tests/kernels/test_layer_norm.py` passes on a GPU


def _gpu_launch(D: int) -> _Launch:
    """Warps for a row of D channels: about 8 to 16 of them per thread (Liger's rule)."""
    block = triton.next_power_of_2(D)
    return _Launch(16 if block >= 4096 else 8 if block >= 2048 else 4)


# ----------------------------------------------------------------------------------------------------------------------
# Kernels
@triton.jit
def _layer_norm_fwd_kernel(
    X,  # (R, D) input rows, stride_x apart, unit column stride
    W,  # (D,) weight, or X when HAS_W is False
    B,  # (D,) bias, or X when HAS_B is False
    Y,  # (R, D) contiguous output, in the requested output dtype
    stride_x,
    D,
    eps,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    ACC: tl.constexpr,  # fp32 (fp64 for fp64 x)
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    # Statistics of x - x[0]: exact for a row far from zero whose spread is small (a large mean would otherwise
    # cost the fp32 sum its low bits), the same variance.
    shift = tl.load(X + row * stride_x).to(ACC)
    xs = tl.where(mask, tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(ACC) - shift, 0.0)
    xc = tl.where(mask, xs - tl.sum(xs, axis=0) / D, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps)
    y = xc * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(ACC)
    if HAS_B:
        y = y + tl.load(B + cols, mask=mask, other=0.0).to(ACC)
    tl.store(Y + row * D + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _layer_norm_bwd_kernel(
    X,  # (R, D) the forward's input rows, stride_x apart
    W,  # (D,) weight, or X when HAS_W is False
    DY,  # (R, D) contiguous gradient of the output
    DX,  # (R, D) contiguous gradient of the input, in X's dtype
    stride_x,
    D,
    eps,
    HAS_W: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    dy = tl.load(DY + row * D + cols, mask=mask, other=0.0).to(ACC)
    shift = tl.load(X + row * stride_x).to(ACC)  # the forward's statistics, recomputed the same way
    xs = tl.where(mask, tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(ACC) - shift, 0.0)
    xc = tl.where(mask, xs - tl.sum(xs, axis=0) / D, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps)
    xhat = xc * rstd
    wdy = dy
    if HAS_W:
        wdy = dy * tl.load(W + cols, mask=mask, other=0.0).to(ACC)
    c1 = tl.sum(xhat * wdy, axis=0) / D
    c2 = tl.sum(wdy, axis=0) / D
    dx = (wdy - (xhat * c1 + c2)) * rstd
    tl.store(DX + row * D + cols, dx.to(DX.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------------
# Launchers
def _interpreted() -> bool:
    """True when this module's kernels were defined under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    return interpreted(_layer_norm_fwd_kernel)


def _launch(step: str, D: int) -> _Launch:
    forced = _OVERRIDES.get(step)
    return forced if forced is not None else _Launch(1) if _interpreted() else _gpu_launch(D)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as (R, D) rows with unit column stride and 32-bit in-row offsets; copies only when it has to."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def layer_norm_forward(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                       out_dtype: torch.dtype | None = None) -> torch.Tensor:  # fmt: skip
    """LayerNorm over the last axis of x, written contiguous in ``out_dtype`` (default: x's dtype)."""
    reason = supports(x, weight, bias, eps, out_dtype)
    if reason is not None:
        raise ValueError(f"layer_norm Triton kernel: {reason}")
    D = x.shape[-1]
    rows = _rows(x)
    y = torch.empty(x.shape, dtype=out_dtype or x.dtype, device=x.device)
    if rows.shape[0]:
        launch = _launch("fwd", D)
        _layer_norm_fwd_kernel[(rows.shape[0],)](
            rows, x if weight is None else weight.contiguous(), x if bias is None else bias.contiguous(), y,
            rows.stride(0), D, eps, HAS_W=weight is not None, HAS_B=bias is not None, ACC=acc_dtypes(x.dtype)[1],
            BLOCK_D=triton.next_power_of_2(D), num_warps=launch.num_warps)  # fmt: skip
    return y


def layer_norm_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """The input gradient from the output gradient ``grad`` (any float dtype) and the forward's input ``x``, in x's
    dtype (the weight and bias are frozen: no gradient for them)."""
    if grad.shape != x.shape:
        raise ValueError(f"layer_norm backward: expected grad of shape {tuple(x.shape)} (the input's), "
                         f"got {tuple(grad.shape)}")
    D = x.shape[-1]
    rows = _rows(x)
    grad = grad.contiguous()
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if rows.shape[0]:
        launch = _launch("bwd", D)
        _layer_norm_bwd_kernel[(rows.shape[0],)](
            rows, x if weight is None else weight.contiguous(), grad, dx, rows.stride(0), D, eps,
            HAS_W=weight is not None, ACC=acc_dtypes(x.dtype)[1], BLOCK_D=triton.next_power_of_2(D),
            num_warps=launch.num_warps)  # fmt: skip
    return dx


# ----------------------------------------------------------------------------------------------------------------------
# Autograd
class LayerNormFunction(torch.autograd.Function):
    """Eager autograd wrapper around the launchers, which ``layer_norm`` runs in plain eager calls (the custom op
    below, which compiles, otherwise: see ``eager_autograd``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype=None):
        ctx.save_for_backward(x, weight)  # x only (and the frozen weight): the row statistics are recomputed
        ctx.eps = eps
        return layer_norm_forward(x, weight, bias, eps, out_dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return layer_norm_backward(grad, x, weight, ctx.eps), None, None, None, None


# ----------------------------------------------------------------------------------------------------------------------
# torch.library registration: custom_op (not triton_op) so that torch.compile(fullgraph=True) traces it on CPU too.
@torch.library.custom_op("stgcma_fast::layer_norm", mutates_args=())
def _layer_norm_op(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                   out_dtype: torch.dtype | None = None) -> torch.Tensor:  # fmt: skip
    return layer_norm_forward(x, weight, bias, eps, out_dtype)


@_layer_norm_op.register_fake
def _(x, weight, bias, eps, out_dtype=None):
    problem = _shape_problem(x, weight, bias, eps, out_dtype)
    if problem is not None:
        raise ValueError(f"layer_norm Triton kernel: {problem}")
    return x.new_empty(x.shape, dtype=out_dtype or x.dtype)


@torch.library.custom_op("stgcma_fast::layer_norm_backward", mutates_args=())
def _layer_norm_backward_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
                            eps: float) -> torch.Tensor:  # fmt: skip
    return layer_norm_backward(grad, x, weight, eps)


@_layer_norm_backward_op.register_fake
def _(grad, x, weight, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, weight, _bias, eps, _out_dtype = inputs
    ctx.save_for_backward(x, weight)  # x only (and the frozen weight): the row statistics are recomputed
    ctx.eps = eps


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    return torch.ops.stgcma_fast.layer_norm_backward(grad, x, weight, ctx.eps), None, None, None, None


_layer_norm_op.register_autograd(_backward, setup_context=_setup_context)


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:  # fmt: skip
    """Fused frozen LayerNorm over the last axis, output in ``out_dtype`` (default x's); the contract is
    :func:`stgcma_fast.ops.torch_ops.layer_norm`. Keeps only x for backward and computes no weight or bias
    gradient (``supports`` refuses a weight or bias that requires grad)."""
    if eager_autograd():
        return LayerNormFunction.apply(x, weight, bias, eps, out_dtype)
    return torch.ops.stgcma_fast.layer_norm(x, weight, bias, eps, out_dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Capabilities
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INTERPRETER_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # no dots here: bf16 is right
MASTER_DTYPE = torch.float32  # weight and bias may be fp32 whatever x is

# (atol, rtol) against a float64 reference, applied after dividing both tensors by max(1, max |reference|), in the
# row of the OUTPUT dtype (forward) and of x's dtype (dx): fp32 statistics, one rounding on store.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (2e-6, 2e-6),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def tolerance(dtype: torch.dtype, device: torch.device | str) -> tuple[float, float]:
    """(atol, rtol) for results computed in ``dtype`` on ``device``: ``TOLERANCES[dtype]`` on every device (no
    dots, so nothing runs at a device-dependent precision)."""
    return TOLERANCES[dtype]


def gpu_launch_sets(dtype: torch.dtype, *, C: int, **dims: int) -> list[dict[str, _Launch]]:
    """The launch sets (step -> launch, for ``force_launch``) a GPU runs for rows of ``C`` channels: the one."""
    return [{step: _gpu_launch(C) for step in _STEPS}]


def force_launch(**launches: _Launch):
    """Run the given steps (``fwd=``, ``bwd=``) with these launches inside the block; a context manager."""
    return _OVERRIDES.force(**launches)


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _shape_problem(x, weight, bias, eps, out_dtype) -> str | None:
    """Shape and dtype problems (device independent, so the fake implementation checks them too)."""
    if x.dim() < 1 or x.shape[-1] < 1:
        return f"expected x of shape (..., D) with D >= 1, got {tuple(x.shape)}"
    D = x.shape[-1]
    if x.dtype not in _FLOAT_DTYPES:
        return f"expected x of a floating dtype {_FLOAT_DTYPES}, got {x.dtype}"
    if D > MAX_CHANNELS:
        return f"D={D} channels above {MAX_CHANNELS} (one row per program)"
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if tuple(t.shape) != (D,):
            return f"expected {name} of shape ({D},), got {tuple(t.shape)}"
        if t.dtype not in (x.dtype, MASTER_DTYPE):
            return f"expected {name} of dtype {x.dtype} (x's) or {MASTER_DTYPE}, got {t.dtype}"
        if t.requires_grad:
            return f"{name} requires grad: this kernel computes no weight or bias gradient (frozen norms only)"
    if out_dtype is not None and out_dtype not in _FLOAT_DTYPES:
        return f"expected out_dtype among {_FLOAT_DTYPES}, got {out_dtype}"
    if not eps > 0:
        return f"expected eps > 0, got {eps}"
    return None


def supports(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
             out_dtype: torch.dtype | None = None) -> str | None:  # fmt: skip
    """None if the Triton kernel accepts these inputs, else a human-readable reason (same arguments as the op)."""
    problem = _shape_problem(x, weight, bias, eps, out_dtype)
    if problem is not None:
        return problem
    devices = {t.device for t in (x, weight, bias) if t is not None}
    if len(devices) > 1:
        return f"expected all tensors on one device, got {sorted(str(d) for d in devices)}"
    allowed = INTERPRETER_DTYPES if _interpreted() else DTYPES
    if out_dtype is not None and out_dtype not in allowed:
        return f"out_dtype {out_dtype} unsupported here; supported: {allowed}"
    return device_dtype_refusal(x.device, x.dtype, _interpreted(), DTYPES, INTERPRETER_DTYPES)
