"""Fused T-Adapter: ``residual + row_scale * (GELU(x W_d^T + b_d) W_u^T + b_u)`` on (R, D) rows.

Layout (Liger-Kernel style): private ``@triton.jit`` kernels, plain launchers (``t_adapter_forward`` /
``t_adapter_backward``), the ``torch.autograd.Function``, the ``torch.library.custom_op`` registration, the public
function with the signature of :func:`stgcma_fast.ops.torch_ops.t_adapter`, then capabilities and tolerances.

Forward: one program per block of BLOCK_R rows. Phase 1 loops over D in BLOCK_D chunks and accumulates the
(BLOCK_R, r) pre-activation in fp32; it is stored (the only tensor saved for backward besides the inputs) and GELU
(erf form) is applied in registers. Phase 2 loops over D again: up-projection, bias, row scale, residual, one cast.

Backward: one program per row block. It recomputes GELU and GELU' from the saved pre-activation, loops over D for
``dg = (dy W_u) * row_scale`` while reducing fp32 partial sums of ``row_scale * dy`` (db_u), forms ``dh = dg * GELU'``
(+ fp32 partial sums for db_d), then loops over D for ``dx = dh W_d``. It also writes ``row_scale * GELU(pre)`` so that
the two weight gradients are plain torch GEMMs: ``dW_u = dy^T (row_scale * g)`` and ``dW_d = dh^T x``. ``dresidual`` is
``dy`` itself; ``row_scale`` (a drop-path mask) gets no gradient.

r (the bottleneck) runs in one power-of-two block of at least 16 with masks (r = 24 -> 32, 96 -> 128, at most 128).

Dtypes. The compute dtype CDT is the dtype of x (fp16, bf16, fp32; fp64 under the interpreter only); ACC is fp32 (fp64
for fp64 x). Mixed precision, as under ``torch.autocast`` (16-bit x from a frozen linear, fp32 residual stream, fp32
master weights), follows what autocast does to the contract :func:`stgcma_fast.ops.torch_ops.t_adapter`:
  * each weight / bias is CDT or fp32; fp32 ones are rounded to CDT when loaded (autocast rounds the weight and bias
    of a 16-bit F.linear), the dots accumulate in ACC. row_scale (any float dtype) is rounded to CDT, as the contract's
    ``row_scale.to(out.dtype)`` does.
  * the residual is CDT, or fp32 when CDT is 16-bit; ``residual + row_scale * y`` is summed in ACC and stored in
    ``torch.promote_types(x, residual)`` (fp32 + fp16 -> fp32: the contract's type promotion).
  * backward: dresidual = dout in the residual's dtype, dx in CDT, dW / db in each parameter's own dtype. The D-wide
    dots read dout rounded to CDT (as autocast's 16-bit linear backward does); db_u sums dout unrounded in ACC. dh and
    ``row_scale * GELU(pre)`` are written in the wider of (CDT, the weight's dtype), so the weight GEMMs run in fp32
    for fp32 master weights (fp32 accumulation, no 16-bit rounding of the result) and in CDT otherwise.
Anything else is refused by ``supports`` (the launchers raise ValueError naming expected vs received).
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.utils.flop_counter import register_flop_formula

from stgcma_fast.flops import t_adapter_flops
from stgcma_fast.kernels._common import (
    LaunchOverrides,
    acc_dtypes,
    autotune_kwargs,
    device_dtype_refusal,
    eager_autograd,
    ieee_dot_precision,
    interpreted,
    launch_sets,
)

# Globals read inside @triton.jit functions must be tl.constexpr (the interpreter does not check this; the GPU does).
_SQRT_HALF = tl.constexpr(0.7071067811865476)  # 1 / sqrt(2)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)  # 1 / sqrt(2 pi)

# ----------------------------------------------------------------------------------------------------------------------
# Launch configurations (the kernels' autotune candidates)
@dataclass(frozen=True)
class _Launch:
    """Rows per program (BLOCK_R), D chunk (BLOCK_D) and launch options of one kernel (block dims powers of two)."""

    block_rows: int
    block_d: int
    num_warps: int
    num_stages: int


_STEPS = ("fwd", "bwd")
_L = _Launch
# Launch candidates per dot class ("fp32": IEEE fp32 dots, which run on CUDA cores; "16-bit": fp16 / bf16 x, whatever
# the residual and weights), padded bottleneck BLOCK_r and kernel step. On the GPU the autotuner times them once per
# key (D, BLOCK_r, HAS_SCALE and the dtypes of every tensor argument) and keeps the fastest; the first is the default
# when autotuning is off (STGCMA_FAST_AUTOTUNE=0). They come from sm_90 ptxas resource reports of the variant the JIT
# builds (16-byte aligned pointers, multiples of 16 specialised, at the model shapes: `python -m
# tests.kernels.compile_check tests.kernels.test_t_adapter:_sm90_specs '["bf16-train"]'` prints registers and spill
# bytes per variant; triton 3.8's ptxas): block shapes that spill no registers within 164 KB of shared memory (A100),
# spill-free ones first, the 16-bit ones in the training mix (bf16 x, fp32 residual, fp32 master weights: the fp32
# weight tiles are converted in registers, the widest case), the fp32 ones in fp32. The former default (the first
# config of the former single list that its pruning rules kept: BLOCK_R = 64, BLOCK_D = 64, 4 warps, 3 stages;
# BLOCK_R = 32 for fp32 at BLOCK_r = 128) is a list's first where the first (unspecialised) reports found it
# spill-free, else its last (the autotuner may still pick it). Spill bytes per thread of each list, in order (the
# unspecialised builds reported up to 1 KB for the last ones):
#   16-bit, training mix  fwd                          bwd
#     BLOCK_r = 32        0, 0, 0, 0                   0, 0, 0, 0, 0 (former default)
#     BLOCK_r = 64        0, 0, 0, 0, 0                0, 0, 0, 0, 0
#     BLOCK_r = 128       0, 0, 0, 0, 0                0, 0, 0, 0, 16
#   fp32 (the IEEE dots run on CUDA cores)
#     BLOCK_r = 32        0, 0, 0, 0, 8                0, 0, 0, 8, 0
#     BLOCK_r = 64        0, 0, 0, 0, 152              0, 0, 0, 0, 232
#     BLOCK_r = 128       0, 0, 0, 8, 8                0, 0, 0, 0, 48
# Every candidate is parity-tested in the interpreter (tests/kernels/test_t_adapter.py::test_every_gpu_launch_candidate)
# and compiled for sm_90 there (fp32, bf16, and the training mix).
_GPU_LAUNCH: dict[str, dict[int, dict[str, tuple[_Launch, ...]]]] = {
    "16-bit": {
        32: {"fwd": (_L(64, 64, 4, 3), _L(128, 64, 8, 3), _L(64, 32, 4, 4), _L(128, 32, 8, 4)),
             "bwd": (_L(64, 64, 8, 3), _L(64, 32, 4, 4), _L(128, 32, 8, 4), _L(32, 64, 4, 3), _L(64, 64, 4, 3))},
        64: {"fwd": (_L(64, 64, 8, 3), _L(128, 32, 8, 4), _L(64, 32, 4, 4), _L(32, 64, 4, 3), _L(64, 64, 4, 3)),
             "bwd": (_L(64, 64, 8, 3), _L(64, 32, 8, 3), _L(32, 64, 4, 3), _L(128, 32, 8, 2), _L(64, 64, 4, 3))},
        128: {"fwd": (_L(64, 64, 8, 3), _L(128, 32, 8, 4), _L(64, 32, 4, 4), _L(32, 64, 8, 3), _L(64, 64, 4, 3)),
              "bwd": (_L(32, 64, 8, 3), _L(64, 32, 8, 2), _L(16, 64, 8, 3), _L(64, 64, 8, 2), _L(64, 64, 4, 3))},
    },
    "fp32": {
        32: {"fwd": (_L(64, 64, 8, 3), _L(64, 32, 4, 4), _L(128, 32, 8, 4), _L(32, 64, 8, 3), _L(64, 64, 4, 3)),
             "bwd": (_L(64, 32, 8, 3), _L(128, 32, 8, 4), _L(32, 64, 8, 3), _L(64, 32, 4, 4), _L(64, 64, 4, 3))},
        64: {"fwd": (_L(64, 32, 8, 3), _L(32, 64, 8, 3), _L(32, 32, 8, 3), _L(16, 64, 8, 2), _L(64, 64, 4, 3)),
             "bwd": (_L(64, 32, 8, 3), _L(32, 64, 8, 3), _L(32, 32, 8, 3), _L(16, 64, 8, 2), _L(64, 64, 4, 3))},
        128: {"fwd": (_L(64, 32, 8, 2), _L(32, 64, 8, 2), _L(16, 64, 8, 2), _L(32, 32, 8, 3), _L(32, 64, 4, 3)),
              "bwd": (_L(64, 32, 8, 2), _L(32, 64, 8, 2), _L(32, 32, 8, 3), _L(16, 64, 8, 2), _L(32, 64, 4, 3))},
    },
}  # fmt: skip
for _classes in _GPU_LAUNCH.values():
    _classes[16] = _classes[32]  # r <= 16 runs in a 16-wide block: fewer registers than 32, the same candidates
# Under TRITON_INTERPRET=1 (no GPU benchmarker) one launch: few, large tiles run faster in numpy; BLOCK_D < 128 so that
# the tests still loop over D chunks.
_INTERPRETER_LAUNCH = _Launch(128, 64, 4, 1)
_OVERRIDES = LaunchOverrides(_STEPS)  # launches forced per step (tests: force_launch)
# The fewest rows per program any candidate runs: the backward sizes its bias-gradient partial sums for it.
_MIN_BLOCK_R = min(launch.block_rows for classes in _GPU_LAUNCH.values() for steps in classes.values()
                   for launch in steps["bwd"] + (_INTERPRETER_LAUNCH,))  # fmt: skip


def _config(launch: _Launch) -> triton.Config:
    return triton.Config({"BLOCK_R": launch.block_rows, "BLOCK_D": launch.block_d}, num_warps=launch.num_warps,
                         num_stages=launch.num_stages)  # fmt: skip


def _dot_class(dot_precision: str) -> str:
    return "fp32" if dot_precision == "ieee" else "16-bit"


def _block_r(r: int) -> int:
    """The bottleneck's power-of-two block: r = 24 -> 32, 96 -> 128; at least 16 (tl.dot needs K >= 16)."""
    return max(16, triton.next_power_of_2(r))


def launch_candidates(step: str, r: int, dot_precision: str, D: int) -> tuple[_Launch, ...]:
    """What the kernel of ``step`` ("fwd", "bwd") may run for bottleneck ``r``, the kernels' ``DOT_PRECISION``
    ("ieee" for fp32 x) and width ``D``: the forced launch, the interpreter's one launch, or the GPU candidates whose D
    chunk is not wider than D needs (the first only when autotuning is off)."""
    return _OVERRIDES.candidates(step, _interpreted(), _INTERPRETER_LAUNCH,
                                 lambda: _gpu_candidates(step, r, dot_precision, D))  # fmt: skip


def _gpu_candidates(step: str, r: int, dot_precision: str, D: int) -> tuple[_Launch, ...]:
    """The GPU candidates of ``step`` whose D chunk is not wider than D needs (the narrowest if none)."""
    launches = _GPU_LAUNCH[_dot_class(dot_precision)][_block_r(r)][step]
    fit = tuple(c for c in launches if c.block_d <= max(32, triton.next_power_of_2(D)))
    return fit or (min(launches, key=lambda c: c.block_d),)


def gpu_launch_sets(dtype: torch.dtype, *, r: int, D: int, **dims: int) -> list[dict[str, _Launch]]:
    """The launch sets (step -> launch, for ``force_launch``) that together hold every GPU candidate for x of
    ``dtype``, bottleneck ``r`` and width ``D`` (:func:`stgcma_fast.kernels._common.launch_sets`); other ``dims``
    (the row count) do not matter."""
    prec = ieee_dot_precision(dtype)
    return launch_sets({step: _gpu_candidates(step, r, prec, D) for step in _STEPS})


def force_launch(**launches: _Launch):
    """Run the given steps (``fwd=``, ``bwd=``) with these launches inside the block, bypassing the autotuner (tests
    use it to check every GPU candidate); a context manager."""
    return _OVERRIDES.force(**launches)


def _min_block_rows() -> int:
    forced = _OVERRIDES.get("bwd")
    return _MIN_BLOCK_R if forced is None else min(_MIN_BLOCK_R, forced.block_rows)


def _autotune(step: str) -> dict:
    return autotune_kwargs(
        (launch for classes in _GPU_LAUNCH.values() for steps in classes.values() for launch in steps[step]), _config,
        ["D", "BLOCK_r", "HAS_SCALE"],
        lambda args, meta: launch_candidates(step, meta["BLOCK_r"], meta["DOT_PRECISION"], args["D"]))


# The backward writes one row of bias-gradient partial sums per row block, and the launcher sums ALL rows: on the GPU
# the autotuner runs every candidate on the same buffers, and a candidate with a smaller BLOCK_R leaves more rows than
# the one it keeps, which would then be summed too. So the tuner zeroes them before each timed run and after tuning.
_BWD_RESET = ["DBD_PART", "DBU_PART"]

# Dispatch policy (stgcma_fast.ops.dispatch): on CPU this kernel runs only in the interpreter, which tests use by
# forcing the backend; on CUDA it is picked automatically once its GPU parity tests have passed there.
AUTO_DEVICES = ("cuda",)
GPU_VALIDATED = False  # set True after `pytest -m gpu tests/kernels/test_t_adapter.py` passes on a GPU


# ----------------------------------------------------------------------------------------------------------------------
# Kernels
@triton.autotune(**_autotune("fwd"))
@triton.jit
def _t_adapter_fwd_kernel(
    X,  # (R, D) adapter input, rows stride_x apart, unit column stride
    RES,  # (R, D) residual, rows stride_res apart, unit column stride
    WD,  # (r, D) contiguous down-projection weight, dtype of X or fp32 (rounded to the dtype of X on load)
    BD,  # (r,) down-projection bias, likewise
    WU,  # (D, r) contiguous up-projection weight, likewise
    BU,  # (D,) up-projection bias, likewise
    S,  # (R,) row scale (drop path), any float dtype, rounded to the dtype of X; not read unless HAS_SCALE
    OUT,  # (R, D) contiguous output, promote_types(X, RES) (X, or fp32 for 16-bit X and an fp32 RES)
    PRE,  # (R, r) contiguous pre-activation x W_d^T + b_d in ACC dtype, saved for backward
    R,
    D,
    r,
    stride_x,
    stride_res,
    HAS_SCALE: tl.constexpr,
    ACC: tl.constexpr,  # tl.float32 (tl.float64 for fp64 inputs under the interpreter)
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 operands (no TF32), the default "tf32" (unused) for 16-bit ones
    BLOCK_r: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # 64-bit base offsets of this row block; in-tile offsets stay 32-bit (BLOCK_R * row stride < 2**31).
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_R
    X += row0 * stride_x
    RES += row0 * stride_res
    OUT += row0 * D
    PRE += row0 * r
    rows = tl.arange(0, BLOCK_R)
    row_ok = rows < R - row0
    ks = tl.arange(0, BLOCK_r)
    k_ok = ks < r
    CDT = X.dtype.element_ty  # compute dtype of the dots: weights, biases and row scale are rounded to it

    # Phase 1: pre = x W_d^T + b_d, accumulated over D chunks.
    pre = tl.zeros((BLOCK_R, BLOCK_r), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        col_ok = cols < D
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        wd = tl.load(WD + ks[:, None] * D + cols[None, :], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        pre = tl.dot(x, tl.trans(wd.to(CDT)), pre, input_precision=DOT_PRECISION)
    pre += tl.load(BD + ks, mask=k_ok, other=0.0).to(CDT).to(ACC)[None, :]
    tl.store(PRE + rows[:, None] * r + ks[None, :], pre, mask=row_ok[:, None] & k_ok[None, :])
    g = (0.5 * pre * (1.0 + tl.math.erf(pre * _SQRT_HALF))).to(CDT)  # padded columns stay 0
    if HAS_SCALE:
        scale = tl.load(S + row0 + rows, mask=row_ok, other=0.0).to(CDT).to(ACC)

    # Phase 2: out = residual + scale * (g W_u^T + b_u), one D chunk at a time.
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        col_ok = cols < D
        mask = row_ok[:, None] & col_ok[None, :]
        wu = tl.load(WU + cols[:, None] * r + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        y = tl.dot(g, tl.trans(wu.to(CDT)), input_precision=DOT_PRECISION).to(ACC)
        y += tl.load(BU + cols, mask=col_ok, other=0.0).to(CDT).to(ACC)[None, :]
        if HAS_SCALE:
            y = y * scale[:, None]
        res = tl.load(RES + rows[:, None] * stride_res + cols[None, :], mask=mask, other=0.0).to(ACC)
        tl.store(OUT + rows[:, None] * D + cols[None, :], (res + y).to(OUT.dtype.element_ty), mask=mask)


@triton.autotune(**_autotune("bwd"), reset_to_zero=_BWD_RESET)
@triton.jit
def _t_adapter_bwd_kernel(
    DY,  # (R, D) upstream gradient in the dtype of out (X's or fp32), rows stride_dy apart, unit column stride
    PRE,  # (R, r) contiguous saved pre-activation (ACC dtype)
    WD,  # (r, D) contiguous down-projection weight, dtype of X or fp32 (rounded to the dtype of X on load)
    WU,  # (D, r) contiguous up-projection weight, likewise
    S,  # (R,) row scale, rounded to the dtype of X; not read unless HAS_SCALE
    DX,  # (R, D) contiguous output: dL/dx, dtype of X (the compute dtype)
    DH,  # (R, r) contiguous output: dL/dpre, wider of (X, W_d) dtypes (operand of the dW_d GEMM)
    GS,  # (R, r) contiguous output: row_scale * GELU(pre), wider of (X, W_u) dtypes (operand of the dW_u GEMM)
    DBD_PART,  # (cdiv(R, MIN_BLOCK_R), r) zero-initialised ACC-dtype partial sums of dh, one row per row block
    DBU_PART,  # (cdiv(R, MIN_BLOCK_R), D) zero-initialised ACC-dtype partial sums of row_scale * dy, likewise
    R,
    D,
    r,
    stride_dy,
    HAS_SCALE: tl.constexpr,
    ACC: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_r: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row0 = pid * BLOCK_R  # 64-bit base offsets; in-tile offsets stay 32-bit
    DY += row0 * stride_dy
    PRE += row0 * r
    DX += row0 * D
    DH += row0 * r
    GS += row0 * r
    rows = tl.arange(0, BLOCK_R)
    row_ok = rows < R - row0
    ks = tl.arange(0, BLOCK_r)
    k_ok = ks < r
    rk_mask = row_ok[:, None] & k_ok[None, :]
    CDT = DX.dtype.element_ty  # compute dtype of the dots (the dtype of x)

    pre = tl.load(PRE + rows[:, None] * r + ks[None, :], mask=rk_mask, other=0.0).to(ACC)
    cdf = 0.5 * (1.0 + tl.math.erf(pre * _SQRT_HALF))
    g = pre * cdf
    dgelu = cdf + pre * _INV_SQRT_2PI * tl.exp(-0.5 * pre * pre)
    if HAS_SCALE:
        scale = tl.load(S + row0 + rows, mask=row_ok, other=0.0).to(CDT).to(ACC)
        g = g * scale[:, None]
    tl.store(GS + rows[:, None] * r + ks[None, :], g.to(GS.dtype.element_ty), mask=rk_mask)

    # dg = (dy W_u) * scale, plus this block's partial column sums of scale * dy (db_u).
    dg = tl.zeros((BLOCK_R, BLOCK_r), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        col_ok = cols < D
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        wu = tl.load(WU + cols[:, None] * r + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        dg = tl.dot(dy.to(CDT), wu.to(CDT), dg, input_precision=DOT_PRECISION)
        dy = dy.to(ACC)  # db_u sums dout unrounded
        if HAS_SCALE:
            dy = dy * scale[:, None]
        tl.store(DBU_PART + pid * D + cols, tl.sum(dy, axis=0), mask=col_ok)
    if HAS_SCALE:
        dg = dg * scale[:, None]
    dh = dg * dgelu  # padded rows and columns are 0
    tl.store(DBD_PART + pid * r + ks, tl.sum(dh, axis=0), mask=k_ok)
    tl.store(DH + rows[:, None] * r + ks[None, :], dh.to(DH.dtype.element_ty), mask=rk_mask)
    dh = dh.to(CDT)

    # dx = dh W_d, one D chunk at a time.
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        col_ok = cols < D
        wd = tl.load(WD + ks[:, None] * D + cols[None, :], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        dx = tl.dot(dh, wd.to(CDT), input_precision=DOT_PRECISION)
        tl.store(DX + rows[:, None] * D + cols[None, :], dx.to(DX.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])


_KERNELS = {"fwd": _t_adapter_fwd_kernel, "bwd": _t_adapter_bwd_kernel}
_OVERRIDES.kernels.update(_KERNELS)


# ----------------------------------------------------------------------------------------------------------------------
# Launchers
def _interpreted() -> bool:
    """True when this module's kernels were defined under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    return interpreted(_t_adapter_fwd_kernel)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """A view with unit column stride and 32-bit in-tile offsets (rows may be strided); copies only when it has to."""
    return t if t.stride(-1) == 1 and t.stride(0) * 128 < 2**31 else t.contiguous()


def _raise_if_unsupported(*args) -> None:
    reason = supports(*args)
    if reason is not None:
        raise ValueError(f"t_adapter Triton kernel: {reason}")


def t_adapter_forward(
    x: torch.Tensor,  # (R, D)
    residual: torch.Tensor,  # (R, D)
    w_down: torch.Tensor,  # (r, D)
    b_down: torch.Tensor,  # (r,)
    w_up: torch.Tensor,  # (D, r)
    b_up: torch.Tensor,  # (D,)
    row_scale: torch.Tensor | None = None,  # (R,)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``out`` (R, D) in ``promote_types(x, residual)`` (x's dtype, or fp32 for 16-bit x with an fp32
    residual) and the pre-activation ``x W_d^T + b_d`` (R, r) in fp32 (fp64 for fp64 x)."""
    _raise_if_unsupported(x, residual, w_down, b_down, w_up, b_up, row_scale)
    R, D = x.shape
    r = w_down.shape[0]
    acc_torch, acc_tl = acc_dtypes(x.dtype)
    out = torch.empty((R, D), dtype=_out_dtype(x, residual), device=x.device)
    pre = torch.empty((R, r), dtype=acc_torch, device=x.device)
    if R == 0:
        return out, pre
    x, residual = _rows(x), _rows(residual)
    has_scale = row_scale is not None
    grid = lambda meta: (triton.cdiv(R, meta["BLOCK_R"]),)
    _t_adapter_fwd_kernel[grid](
        x, residual, w_down.contiguous(), b_down.contiguous(), w_up.contiguous(), b_up.contiguous(),
        row_scale.contiguous() if has_scale else x, out, pre,
        R, D, r, x.stride(0), residual.stride(0),
        HAS_SCALE=has_scale, ACC=acc_tl, DOT_PRECISION=ieee_dot_precision(x.dtype),
        BLOCK_r=_block_r(r),
    )
    return out, pre


def t_adapter_backward(
    grad_out: torch.Tensor,  # (R, D)
    pre: torch.Tensor,  # (R, r) saved by t_adapter_forward
    w_down: torch.Tensor,  # (r, D)
    w_up: torch.Tensor,  # (D, r)
    row_scale: torch.Tensor | None = None,  # (R,)
    compute_dtype: torch.dtype | None = None,  # the dtype of x; None: the dtype of w_down (all dtypes equal)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Elementwise part of the backward pass and both bias gradients.

    Returns ``dx`` (R, D) in ``compute_dtype``, ``db_down`` (r,) and ``db_up`` (D,) in the accumulation dtype (fp32;
    fp64 for fp64 x), ``dh`` (R, r) = dL/dpre in the wider of (compute_dtype, w_down's dtype) and ``gs`` (R, r) =
    ``row_scale * GELU(pre)`` in the wider of (compute_dtype, w_up's dtype). The weight gradients are then ``dh^T x``
    and ``grad_out^T gs`` (see :func:`_t_adapter_grads`). ``grad_out`` may be fp32 with a 16-bit compute dtype (an
    fp32 residual); the dots read it rounded to the compute dtype.
    """
    r, D = w_down.shape
    R = pre.shape[0]
    dtype = w_down.dtype if compute_dtype is None else compute_dtype
    acc_torch, acc_tl = acc_dtypes(dtype)
    expected = [("grad_out", grad_out, (R, D)), ("pre", pre, (R, r)), ("w_up", w_up, (D, r))]
    if row_scale is not None:
        expected.append(("row_scale", row_scale, (R,)))
    for name, t, shape in expected:
        if tuple(t.shape) != shape:
            raise ValueError(f"t_adapter backward: expected {name} of shape {shape}, got {tuple(t.shape)}")
        if t.device != w_down.device:
            raise ValueError(f"t_adapter backward: expected {name} on {w_down.device}, got {t.device}")
    if pre.dtype != acc_torch:
        raise ValueError(f"t_adapter backward: expected pre of dtype {acc_torch} (from t_adapter_forward), "
                         f"got {pre.dtype}")
    for name, t in [("w_down", w_down), ("w_up", w_up)]:
        if t.dtype not in _allowed_dtypes(dtype):
            raise ValueError(f"t_adapter backward: expected {name} of dtype {_dtype_rule(dtype)}, got {t.dtype}")
    if grad_out.dtype not in _allowed_dtypes(dtype):
        grad_out = grad_out.to(dtype)
    grad_out = _rows(grad_out)
    dx = torch.empty((R, D), dtype=dtype, device=pre.device)
    dh = torch.empty((R, r), dtype=torch.promote_types(dtype, w_down.dtype), device=pre.device)
    gs = torch.empty((R, r), dtype=torch.promote_types(dtype, w_up.dtype), device=pre.device)
    n_part = triton.cdiv(R, _min_block_rows())  # enough partial-sum rows for the smallest BLOCK_R that may run
    dbd_part = torch.zeros((n_part, r), dtype=acc_torch, device=pre.device)
    dbu_part = torch.zeros((n_part, D), dtype=acc_torch, device=pre.device)
    if R > 0:
        has_scale = row_scale is not None
        grid = lambda meta: (triton.cdiv(R, meta["BLOCK_R"]),)
        _t_adapter_bwd_kernel[grid](
            grad_out, pre.contiguous(), w_down.contiguous(), w_up.contiguous(),
            row_scale.contiguous() if has_scale else pre, dx, dh, gs, dbd_part, dbu_part,
            R, D, r, grad_out.stride(0),
            HAS_SCALE=has_scale, ACC=acc_tl, DOT_PRECISION=ieee_dot_precision(dtype),
            BLOCK_r=_block_r(r),
        )
    return dx, dbd_part.sum(0), dbu_part.sum(0), dh, gs


def _t_adapter_grads(backward, needs_input_grad, grad_out, x, pre, w_down, w_up, row_scale, dtypes):
    """Gradients of (x, residual, w_down, b_down, w_up, b_up, row_scale) from a backward launcher or op.

    ``dtypes``: the dtypes of (residual, b_down, b_up), which are not saved for backward. Each gradient comes back
    in its input's dtype; the weight GEMMs run in the dtype of dh / gs (fp32 for fp32 master weights)."""
    res_dtype, bd_dtype, bu_dtype = dtypes
    dx, db_down, db_up, dh, gs = backward(grad_out, pre, w_down, w_up, row_scale, x.dtype)
    dw_down = (dh.t() @ x.to(dh.dtype)).to(w_down.dtype) if needs_input_grad[2] else None  # (r, D) torch GEMM
    dw_up = (grad_out.to(gs.dtype).t() @ gs).to(w_up.dtype) if needs_input_grad[4] else None  # (D, r) torch GEMM
    return dx, grad_out.to(res_dtype), dw_down, db_down.to(bd_dtype), dw_up, db_up.to(bu_dtype), None


# ----------------------------------------------------------------------------------------------------------------------
# Autograd
class TAdapterFunction(torch.autograd.Function):
    """Eager autograd wrapper around the launchers (the custom op below is the torch.compile-friendly path)."""

    @staticmethod
    def forward(ctx, x, residual, w_down, b_down, w_up, b_up, row_scale=None):
        out, pre = t_adapter_forward(x, residual, w_down, b_down, w_up, b_up, row_scale)
        ctx.save_for_backward(x, pre, w_down, w_up, row_scale)
        ctx.dtypes = (residual.dtype, b_down.dtype, b_up.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, pre, w_down, w_up, row_scale = ctx.saved_tensors
        return _t_adapter_grads(t_adapter_backward, ctx.needs_input_grad, grad_out, x, pre, w_down, w_up, row_scale,
                                ctx.dtypes)


# ----------------------------------------------------------------------------------------------------------------------
# torch.library registration: custom_op (not triton_op) so that torch.compile(fullgraph=True) traces it on CPU too.
@torch.library.custom_op("stgcma_fast::t_adapter", mutates_args=())
def _t_adapter_op(
    x: torch.Tensor,
    residual: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    w_up: torch.Tensor,
    b_up: torch.Tensor,
    row_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    return t_adapter_forward(x, residual, w_down, b_down, w_up, b_up, row_scale)


@_t_adapter_op.register_fake
def _(x, residual, w_down, b_down, w_up, b_up, row_scale=None):
    problem = _shape_problem(x, residual, w_down, b_down, w_up, b_up, row_scale)
    if problem is not None:
        raise ValueError(f"t_adapter Triton kernel: {problem}")
    acc_torch, _ = acc_dtypes(x.dtype)
    return (x.new_empty(x.shape, dtype=_out_dtype(x, residual)),
            x.new_empty((x.shape[0], w_down.shape[0]), dtype=acc_torch))


@torch.library.custom_op("stgcma_fast::t_adapter_backward", mutates_args=())
def _t_adapter_backward_op(
    grad_out: torch.Tensor,
    pre: torch.Tensor,
    w_down: torch.Tensor,
    w_up: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return t_adapter_backward(grad_out, pre, w_down, w_up, row_scale, compute_dtype)


@_t_adapter_backward_op.register_fake
def _(grad_out, pre, w_down, w_up, row_scale=None, compute_dtype=None):
    (r, D), R = w_down.shape, pre.shape[0]
    dtype = w_down.dtype if compute_dtype is None else compute_dtype
    acc_torch, _ = acc_dtypes(dtype)
    return (pre.new_empty((R, D), dtype=dtype), pre.new_empty((r,), dtype=acc_torch),
            pre.new_empty((D,), dtype=acc_torch), pre.new_empty((R, r), dtype=torch.promote_types(dtype, w_down.dtype)),
            pre.new_empty((R, r), dtype=torch.promote_types(dtype, w_up.dtype)))


def _setup_context(ctx, inputs, output):
    x, residual, w_down, b_down, w_up, b_up, row_scale = inputs
    ctx.save_for_backward(x, output[1], w_down, w_up, row_scale)
    ctx.dtypes = (residual.dtype, b_down.dtype, b_up.dtype)


def _backward(ctx, grad_out, _grad_pre):
    x, pre, w_down, w_up, row_scale = ctx.saved_tensors
    return _t_adapter_grads(torch.ops.stgcma_fast.t_adapter_backward, ctx.needs_input_grad, grad_out, x, pre,
                            w_down, w_up, row_scale, ctx.dtypes)


_t_adapter_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.stgcma_fast.t_adapter)
def _(x, residual, w_down, *args, out_shape=None, **kwargs) -> int:
    return t_adapter_flops(x[0], x[1], w_down[0])


@register_flop_formula(torch.ops.stgcma_fast.t_adapter_backward)
def _(grad_out, pre, w_down, *args, out_shape=None, **kwargs) -> int:
    return t_adapter_flops(grad_out[0], grad_out[1], w_down[0])


def t_adapter(
    x: torch.Tensor,  # (R, D) adapter input rows
    residual: torch.Tensor,  # (R, D) added to the adapter output
    w_down: torch.Tensor,  # (r, D)
    b_down: torch.Tensor,  # (r,)
    w_up: torch.Tensor,  # (D, r)
    b_up: torch.Tensor,  # (D,)
    row_scale: torch.Tensor | None = None,  # (R,) per-row factor on the adapter output (drop path), or None
) -> torch.Tensor:
    """Fused ``residual + row_scale * (GELU(x W_d^T + b_d) W_u^T + b_u)`` (exact GELU); (R, D).

    Same contract as :func:`stgcma_fast.ops.torch_ops.t_adapter`, plus the autocast mix: weights / biases may be
    fp32 with a 16-bit x (rounded to x's dtype in the kernel), the residual may be fp32 with a 16-bit x (out is then
    fp32). Gradients come back in each input's dtype. See the module docstring.
    """
    if eager_autograd():
        return TAdapterFunction.apply(x, residual, w_down, b_down, w_up, b_up, row_scale)
    return torch.ops.stgcma_fast.t_adapter(x, residual, w_down, b_down, w_up, b_up, row_scale)[0]


# ----------------------------------------------------------------------------------------------------------------------
# Capabilities
DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # dtypes of x (the compute dtype)
INTERPRETER_DTYPES = (torch.float32, torch.float16, torch.float64)  # bf16 tl.dot is wrong there; fp64 for gradcheck
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MASTER_DTYPE = torch.float32  # residual, weights and biases may be fp32 whatever x is (autocast's fp32 master copies)
MAX_BOTTLENECK = 128

# (atol, rtol) against a float64 reference, applied after dividing both tensors by max(1, max |reference|). Mixed
# cases use the row of x's dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (2e-6, 2e-5),
    torch.float16: (2e-3, 4e-3),
    torch.bfloat16: (1.6e-2, 3.2e-2),
}


def tolerance(dtype: torch.dtype, device: torch.device | str) -> tuple[float, float]:
    """(atol, rtol) for results computed in ``dtype`` on ``device``: ``TOLERANCES[dtype]`` on every device (fp32
    dots run as "ieee" everywhere, ``ieee_dot_precision``)."""
    return TOLERANCES[dtype]


def _allowed_dtypes(compute: torch.dtype) -> tuple[torch.dtype, ...]:
    """Dtypes accepted for the residual, weights and biases when x has dtype ``compute``."""
    return (compute,) if compute == MASTER_DTYPE else (compute, MASTER_DTYPE)


def _dtype_rule(compute: torch.dtype) -> str:
    rule = f"{compute} (the dtype of x)"
    return rule if compute == MASTER_DTYPE else f"{rule} or {MASTER_DTYPE}"


def _out_dtype(x: torch.Tensor, residual: torch.Tensor) -> torch.dtype:
    """The dtype of ``residual + adapter(x)`` under torch's type promotion (the contract under autocast)."""
    return torch.promote_types(x.dtype, residual.dtype)


def _shape_problem(x, residual, w_down, b_down, w_up, b_up, row_scale) -> str | None:
    """Shape and dtype-mix problems (device independent, so the fake implementation checks them too)."""
    if x.dim() != 2:
        return f"expected x of shape (R, D), got {tuple(x.shape)}"
    R, D = x.shape
    if w_down.dim() != 2 or w_down.shape[1] != D:
        return f"expected w_down of shape (r, D={D}), got {tuple(w_down.shape)}"
    r = w_down.shape[0]
    expected = [("residual", residual, (R, D)), ("b_down", b_down, (r,)), ("w_up", w_up, (D, r)), ("b_up", b_up, (D,))]
    if row_scale is not None:
        expected.append(("row_scale", row_scale, (R,)))
    for name, t, shape in expected:
        if tuple(t.shape) != shape:
            return f"expected {name} of shape {shape}, got {tuple(t.shape)}"
    if x.dtype not in _FLOAT_DTYPES:
        return f"expected x of a floating dtype {_FLOAT_DTYPES}, got {x.dtype}"
    allowed, rule = _allowed_dtypes(x.dtype), _dtype_rule(x.dtype)
    for name, t in [("residual", residual), ("w_down", w_down), ("b_down", b_down), ("w_up", w_up), ("b_up", b_up)]:
        if t.dtype not in allowed:
            return f"expected {name} of dtype {rule}, got {t.dtype}"
    if row_scale is not None and not row_scale.is_floating_point():
        return f"expected a floating-point row_scale, got {row_scale.dtype}"
    if not 1 <= r <= MAX_BOTTLENECK:
        return f"bottleneck r={r} outside [1, {MAX_BOTTLENECK}]"
    if D < 1:
        return f"expected D >= 1, got D={D}"
    return None


def supports(
    x: torch.Tensor,
    residual: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    w_up: torch.Tensor,
    b_up: torch.Tensor,
    row_scale: torch.Tensor | None = None,
) -> str | None:
    """None if the Triton kernel accepts these inputs, else a human-readable reason (same arguments as the op)."""
    problem = _shape_problem(x, residual, w_down, b_down, w_up, b_up, row_scale)
    if problem is not None:
        return problem
    tensors = [x, residual, w_down, b_down, w_up, b_up] + ([row_scale] if row_scale is not None else [])
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        return f"expected all tensors on one device, got {sorted(str(d) for d in devices)}"
    return device_dtype_refusal(x.device, x.dtype, _interpreted(), DTYPES, INTERPRETER_DTYPES)
