"""Fused AV-Adapter (cross-modal bottleneck adapter with parameter-free cross attention) in Triton.

Contract: :func:`stgcma_fast.ops.torch_ops.av_adapter`. Per frame g (G = B * M frames)::

    h_v  = GELU(u_v W_dv^T + b_dv)                  (N_v, r)
    h_a  = GELU(u_a W_da^T + b_da)                  (N_a, r)
    h_v' = h_v + alpha * softmax(h_v h_a^T) h_a     no 1/sqrt(r), online max-subtracted softmax
    h_a' = h_a + beta  * softmax(h_a h_v^T) h_v
    out_v = x_v + u_v + h_v' W_uv^T + b_uv
    out_a = x_a + u_a + h_a' W_ua^T + b_ua

Forward, per modality (launched twice, video then audio):
  1. ``_down_gelu_kernel``   rows of (G * N, D) x W_d^T, + bias, GELU -> h (G * N, r), fp32, a forward-only
     temporary; the pre-activation pre is stored too when backward needs it (``SAVE``).
  2. ``_attn_up_kernel``     grid (G, row blocks): online softmax of this modality's h against the other
     modality's h (never materialising the N_v x N_a matrix), gate, up-projection, bias and the residual
     epilogue ``x + u + h' W_u^T + b_u``, written once. Stores the attention output O and its log-sum-exp when
     backward needs them (``SAVE``).

Backward (h = GELU(pre) is recomputed from the saved pre by ``_gelu``, bit for bit the forward's h):
  1. ``_bwd_up_kernel``       dh' = dout W_u, h' = h + gate * O (for the dW_u GEMM), rowdot = rowsum(dh' * O).
  2. ``_bwd_attn_down_kernel`` grid (G, row blocks of X), looping over the tokens of the other modality Y once.
     The score matrix S = h_X h_Y^T serves both directions (the attention has no projections, so
     S_{X<-Y} = S_{Y<-X}^T): one pass yields dQ of "X attends to Y" AND dK + dV of "Y attends to X", i.e. the
     whole dh_X, flash-attention-2 style from the saved LSE, without atomics. Epilogue: dpre = dh * GELU'(pre),
     du = dout + dpre W_d.
  Weight reductions are torch GEMMs / sums on what the kernels produce: dW_u = dout^T h', db_u = sum dout,
  dW_d = dpre^T u, db_d = sum dpre, dalpha = sum rowdot_v, dbeta = sum rowdot_a.

Dtypes. The compute dtype CDT is the dtype of u_v and u_a (fp16, bf16, fp32; fp64 in the interpreter only). Mixed
precision, as under ``torch.autocast`` (16-bit u from frozen linears, fp32 residual stream, fp32 master weights):
  * each weight / bias is CDT or fp32; fp32 ones are rounded to CDT when loaded, as autocast rounds the weight and
    bias of a 16-bit F.linear; the gates alpha / beta are used at their full precision in fp32 (ACC) math.
  * x_v / x_a is CDT, or fp32 when CDT is 16-bit; out = x + u + h' W_u^T + b_u is summed in ACC and stored in x's
    dtype, which is what torch's type promotion gives the contract (fp32 + fp16 -> fp32).
  * backward: dx = dout (the dtype of out), du in CDT (dout + dpre W_d summed in ACC, rounded once), dW / db /
    dgate in each parameter's own dtype. The D-wide dots read dout and dpre rounded to CDT, as autocast's 16-bit
    linear backward does; the weight GEMMs run in torch in the wider of CDT and the parameter's dtype (fp32 for
    master weights, on operands exactly representable in it), i.e. with fp32 accumulation and no 16-bit rounding
    of the result.
Anything else is refused (``supports``) or raises ValueError (``_check_inputs``) naming expected vs received.

Everything r-wide (pre, h, O, LSE, dh') is kept in fp32 (fp64 for fp64 inputs): scores reach ~1e4 and a 16-bit
h would move them by whole units; the attention dots run as "tf32x3" on the GPU (see ``_dot_precisions``). The
D-wide projections run on the input dtype with fp32 accumulation. Saved for backward, per modality: pre (G, N, r),
and for an enabled direction its O (G, N, r) and LSE (G, N), all fp32 (see ``_saved_shapes``); nothing
N_v x N_a wide is ever written. A disabled direction gets empty placeholders for O / LSE, and so do pre, O and LSE
when no input requires grad (inference): the kernels skip those stores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.utils.flop_counter import register_flop_formula

from stgcma_fast.flops import av_adapter_flops
from stgcma_fast.kernels._common import (
    LaunchOverrides,
    acc_dtypes,
    autotune_kwargs,
    device_dtype_refusal,
    eager_autograd,
    interpreted,
    launch_sets,
)

# ----------------------------------------------------------------------------------------------------------------
# Launch configurations (the kernels' autotune candidates)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Launch:
    """Block sizes and launch options of one kernel (all block dims powers of two, >= 16 for tl.dot)."""

    block_m: int  # rows (queries) per program
    block_n: int  # keys per attention-loop step (attention kernels only)
    num_warps: int
    num_stages: int


BLOCK_D = 64  # chunk of D in every projection loop: D = 1536 runs in 24 steps, shared memory stays bounded

# Launch candidates per padded bottleneck BLOCK_R and kernel step. On the GPU the autotuner times them once per key
# (D, BLOCK_R, the flags, the token counts of the attention kernels, the dtypes) and keeps the fastest; the first is
# the default when autotuning is off (STGCMA_FAST_AUTOTUNE=0). They come from sm_90 ptxas resource reports of the
# variant the JIT builds (16-byte aligned pointers, sizes that are multiples of 16 specialised: `python -m
# tests.kernels.compile_check tests.kernels.test_av_adapter:_sm90_specs '["bf16"]'` prints registers and spill bytes
# per variant; triton 3.8's ptxas) in the training build, bf16 u with an fp32 residual and fp32 master weights, at
# the model shapes (G = 80 frames; B/16 Base for BLOCK_R = 128, L/14 Base for 64, B/16 Tiny for 32): of a grid of
# block shapes (16..128 rows, 16..64 keys, 4 / 8 warps, 2 stages; 16 warps or 1 stage spill more) the ones that spill
# no registers within 164 KB of shared memory (A100), spill-free with the most headroom first. Registers / spill bytes
# per thread, in list order:
#   BLOCK_R = 128  down 119/0 80/0 186/0; attn_fwd 195/0 254/0 216/0 250/0; up_bwd 178/0 86/0 60/0;
#                  attn_bwd 254/8 255/16 255/48 255/152: no block shape is spill-free there (the former first, 32 x 32
#                  at 4 warps, spills 672 B, as the former first attn_fwd, 64 x 32 at 8 warps, spills 200 B)
#   BLOCK_R = 64   down 98/0 80/0; attn_fwd 226/0 204/0 170/0 105/0; up_bwd 178/0 92/0;
#                  attn_bwd 173/0 229/0 177/0 255/0 (the former first, 32 x 32 at 4 warps, spills 8 B)
#   BLOCK_R = 32   down 72/0 56/0; attn_fwd 160/0 128/0 168/0 86/0; up_bwd 124/0 72/0;
#                  attn_bwd 187/0 254/0 182/0 106/0 (the former 16 x 32 at 4 warps spills 24 B)
# Without the JIT's specialisation ptxas reports up to three times the registers and spills the real build does
# not have (compile_check). Every candidate is parity-tested in the interpreter
# (tests/kernels/test_av_adapter.py::test_every_gpu_launch_candidate) and compiled for sm_90 there.
_GPU_LAUNCH: dict[int, dict[str, tuple[_Launch, ...]]] = {
    32: {"down": (_Launch(64, 0, 4, 2), _Launch(32, 0, 4, 2)),
         "attn_fwd": (_Launch(64, 32, 8, 2), _Launch(64, 16, 8, 2), _Launch(32, 16, 4, 2), _Launch(16, 32, 4, 2)),
         "up_bwd": (_Launch(64, 0, 4, 2), _Launch(32, 0, 4, 2)),
         "attn_bwd": (_Launch(64, 16, 8, 2), _Launch(64, 32, 8, 2), _Launch(16, 64, 8, 2), _Launch(16, 16, 8, 2))},
    64: {"down": (_Launch(64, 0, 4, 2), _Launch(32, 0, 4, 2)),
         "attn_fwd": (_Launch(64, 32, 4, 2), _Launch(64, 16, 8, 2), _Launch(32, 32, 8, 2), _Launch(16, 32, 8, 2)),
         "up_bwd": (_Launch(64, 0, 4, 2), _Launch(32, 0, 4, 2)),
         "attn_bwd": (_Launch(16, 32, 8, 2), _Launch(64, 16, 4, 2), _Launch(16, 16, 8, 2), _Launch(32, 16, 4, 2))},
    128: {"down": (_Launch(64, 0, 8, 2), _Launch(32, 0, 8, 2), _Launch(128, 0, 8, 2)),
          "attn_fwd": (_Launch(16, 32, 8, 2), _Launch(32, 32, 8, 2), _Launch(16, 64, 8, 2), _Launch(32, 16, 8, 2)),
          "up_bwd": (_Launch(64, 0, 8, 2), _Launch(32, 0, 8, 2), _Launch(16, 0, 8, 2)),
          "attn_bwd": (_Launch(16, 16, 8, 2), _Launch(16, 32, 8, 2), _Launch(16, 16, 4, 2), _Launch(16, 64, 8, 2))},
}  # fmt: skip
# Under TRITON_INTERPRET=1 (no GPU to time on) one launch per step: few, large tiles run fastest in numpy (the
# interpreter tests' token counts are chosen against these blocks).
_INTERPRETER_LAUNCH: dict[int, dict[str, _Launch]] = {
    block_r: {"down": _Launch(64, 0, 4, 2), "attn_fwd": _Launch(64, 32, 4, 2), "up_bwd": _Launch(64, 0, 4, 2),
              "attn_bwd": _Launch(64 if block_r == 32 else 32, 32, 4, 2)}
    for block_r in _GPU_LAUNCH
}  # fmt: skip
_STEPS = ("down", "attn_fwd", "up_bwd", "attn_bwd")
_OVERRIDES = LaunchOverrides(_STEPS)  # launches forced per step (tests: force_launch)


def _config(launch: _Launch, step: str) -> triton.Config:
    meta = {"BLOCK_M": launch.block_m} | ({"BLOCK_N": launch.block_n} if step.startswith("attn") else {})
    return triton.Config(meta, num_warps=launch.num_warps, num_stages=launch.num_stages)


def launch_candidates(step: str, r: int) -> tuple[_Launch, ...]:
    """What the launcher of ``step`` may run for bottleneck ``r``: the forced launch, the interpreter's one launch,
    or the GPU candidates (the first only when autotuning is off)."""
    _OVERRIDES.check_step(step)
    block_r = _block_r(r)
    return _OVERRIDES.candidates(step, _interpreted(), _INTERPRETER_LAUNCH[block_r][step],
                                 lambda: _GPU_LAUNCH[block_r][step])  # fmt: skip


def gpu_launch_sets(dtype: torch.dtype | None = None, *, r: int, **dims: int) -> list[dict[str, _Launch]]:
    """The launch sets (step -> launch, for ``force_launch``) that together hold every GPU candidate of bottleneck
    ``r`` (:func:`stgcma_fast.kernels._common.launch_sets`): what a GPU check must run to cover the autotuner. The
    candidates do not depend on ``dtype`` or the other ``dims`` (taken so that every kernel module is asked alike)."""
    return launch_sets(_GPU_LAUNCH[_block_r(r)])


def force_launch(**launches: _Launch):
    """Run the given steps (``down=``, ``attn_fwd=``, ``up_bwd=``, ``attn_bwd=``) with these launches inside the
    block, bypassing the autotuner (tests use it to check every GPU candidate); a context manager."""
    return _OVERRIDES.force(**launches)


def _autotune(step: str, key: list[str]) -> dict:
    return autotune_kwargs((launch for steps in _GPU_LAUNCH.values() for launch in steps[step]),
                           lambda launch: _config(launch, step), key,
                           lambda args, meta: launch_candidates(step, meta["BLOCK_R"]))  # fmt: skip


def _block_r(r: int) -> int:
    """r padded to a power of two >= 32 (r = 24 -> 32, 48 -> 64, 96 -> 128); tl.dot needs K >= 16."""
    return max(32, triton.next_power_of_2(r))


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------

_SQRT1_2 = tl.constexpr(0.7071067811865476)  # globals in @jit code must be constexpr
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _gelu(pre):
    """Exact (erf) GELU: the forward stores it, the backward kernels recompute it from the saved pre.

    Written as an fma with a zero addend, ``(0.5 pre) (1 + erf(pre / sqrt 2)) + 0``: one rounding, the same value
    as the plain product (up to the sign of a zero), but an fma, which the GPU compiler cannot contract into what
    consumes it (a recomputed plain product would feed ``h + gate * O`` or the tf32x3 split of a dot unrounded). So
    the recomputed h is bit for bit the stored one, in the interpreter and on the GPU.
    """
    return tl.fma(0.5 * pre, 1.0 + tl.erf(pre * _SQRT1_2), 0.0)


@triton.autotune(**_autotune("down", key=["D", "BLOCK_R", "SAVE"]))
@triton.jit
def _down_gelu_kernel(
    U,  # (n_rows, D) adapter input, compute dtype CDT
    W,  # (R, D) down-projection weight, CDT or fp32 (master weight, rounded to CDT on load)
    B,  # (R,) down-projection bias, CDT or fp32 (rounded to CDT on load)
    PRE,  # (n_rows, R) out: pre-activation u W^T + b, ACC dtype (written if SAVE, else an unread placeholder)
    H,  # (n_rows, R) out: GELU(pre), ACC dtype (forward-only: the attention kernels read it)
    n_rows,
    D,
    R,
    SAVE: tl.constexpr,  # backward will run: store pre
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CDT: tl.constexpr,  # compute dtype of the D-wide projections: the dtype of u
    ACC: tl.constexpr,
    PROJ_PREC: tl.constexpr,  # precision of the D-wide projection dots, see _dot_precisions
):
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_M  # int64 base; per-element offsets below stay int32
    U += row0 * D
    PRE += row0 * R
    H += row0 * R
    offs_m = tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_R)
    m_mask = offs_m < n_rows - row0
    r_mask = offs_r < R

    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        u = tl.load(U + offs_m[:, None] * D + offs_d[None, :], mask=m_mask[:, None] & d_mask[None, :], other=0.0)
        w_t = tl.load(W + offs_r[None, :] * D + offs_d[:, None], mask=d_mask[:, None] & r_mask[None, :], other=0.0)
        acc = tl.dot(u, w_t.to(CDT), acc, input_precision=PROJ_PREC, out_dtype=ACC)  # (BLOCK_M, BLOCK_R)

    b = tl.load(B + offs_r, mask=r_mask, other=0.0).to(CDT).to(ACC)
    pre = acc + b[None, :]
    mr_mask = m_mask[:, None] & r_mask[None, :]
    mr_offs = offs_m[:, None] * R + offs_r[None, :]
    if SAVE:
        tl.store(PRE + mr_offs, pre, mask=mr_mask)
    tl.store(H + mr_offs, _gelu(pre), mask=mr_mask)


@triton.autotune(**_autotune("attn_fwd", key=["n_q", "n_kv", "D", "BLOCK_R", "HAS_ATTN", "SAVE"]))
@triton.jit
def _attn_up_kernel(
    HQ,  # (G * n_q, R) h of this modality (the queries), ACC dtype
    HK,  # (G * n_kv, R) h of the other modality (keys = values), ACC dtype
    U,  # (G * n_q, D) adapter input (residual), CDT
    X,  # (G * n_q, D) residual stream, CDT or fp32
    WU,  # (D, R) up-projection weight, CDT or fp32 (rounded to CDT on load)
    BU,  # (D,) up-projection bias, CDT or fp32 (rounded to CDT on load)
    GATE,  # (1,) gate of this direction (alpha or beta), ACC dtype
    OUT,  # (G * n_q, D) out: x + u + h' W_u^T + b_u, computed in ACC, stored in the dtype of x
    ATT,  # (G * n_q, R) out: attention output softmax(h_q h_k^T) h_k, ACC dtype (written if HAS_ATTN and SAVE)
    LSE,  # (G * n_q,) out: log-sum-exp of the score rows, ACC dtype (written if HAS_ATTN and SAVE)
    n_q,
    n_kv,
    D,
    R,
    HAS_ATTN: tl.constexpr,
    SAVE: tl.constexpr,  # backward will run: store O and LSE (else ATT / LSE are unread placeholders)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CDT: tl.constexpr,  # compute dtype of the D-wide projections: the dtype of u
    ACC: tl.constexpr,
    PROJ_PREC: tl.constexpr,  # precision of the D-wide projection dots, see _dot_precisions
    ATT_PREC: tl.constexpr,  # precision of the r-wide fp32 attention dots
):
    g = tl.program_id(0).to(tl.int64)  # frame
    m0 = tl.program_id(1).to(tl.int64) * BLOCK_M  # first query token of this block, within the frame
    row0 = g * n_q + m0  # int64 bases; per-element offsets below stay int32
    HQ += row0 * R
    ATT += row0 * R
    LSE += row0
    U += row0 * D
    X += row0 * D
    OUT += row0 * D
    HK += g * n_kv * R
    offs_m = tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_R)
    m_mask = offs_m < n_q - m0
    r_mask = offs_r < R
    mr_mask = m_mask[:, None] & r_mask[None, :]
    mr_offs = offs_m[:, None] * R + offs_r[None, :]

    hq = tl.load(HQ + mr_offs, mask=mr_mask, other=0.0)  # (BLOCK_M, BLOCK_R)
    hp = hq
    if HAS_ATTN:
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=ACC)
        l_i = tl.zeros((BLOCK_M,), dtype=ACC)
        acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=ACC)
        for n0 in range(0, n_kv, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_mask = offs_n < n_kv
            hk = tl.load(HK + offs_n[:, None] * R + offs_r[None, :], mask=n_mask[:, None] & r_mask[None, :], other=0.0)
            s = tl.dot(hq, tl.trans(hk), input_precision=ATT_PREC, out_dtype=ACC)  # (BLOCK_M, BLOCK_N)
            s = tl.where(n_mask[None, :], s, float("-inf"))  # every block holds >= 1 valid key: m_new is finite
            m_new = tl.maximum(m_i, tl.max(s, 1))
            rescale = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * rescale + tl.sum(p, 1)
            acc = tl.dot(p, hk, acc * rescale[:, None], input_precision=ATT_PREC, out_dtype=ACC)
            m_i = m_new
        o = acc / l_i[:, None]
        if SAVE:
            tl.store(ATT + mr_offs, o, mask=mr_mask)
            tl.store(LSE + offs_m, m_i + tl.log(l_i), mask=m_mask)
        gate = tl.load(GATE).to(ACC)
        hp = tl.fma(gate, o, hq)  # h' = h + gate * O, one rounding: the backward forms it the same way

    # Up-projection and residual epilogue, D in chunks: out = x + u + h' W_u^T + b_u, written once.
    hp_in = hp.to(CDT)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        wu_t = tl.load(WU + offs_d[None, :] * R + offs_r[:, None], mask=r_mask[:, None] & d_mask[None, :], other=0.0)
        y = tl.dot(hp_in, wu_t.to(CDT), input_precision=PROJ_PREC, out_dtype=ACC)  # (BLOCK_M, BLOCK_D)
        bu = tl.load(BU + offs_d, mask=d_mask, other=0.0).to(CDT).to(ACC)
        md_mask = m_mask[:, None] & d_mask[None, :]
        md_offs = offs_m[:, None] * D + offs_d[None, :]
        x = tl.load(X + md_offs, mask=md_mask, other=0.0).to(ACC)
        u = tl.load(U + md_offs, mask=md_mask, other=0.0).to(ACC)
        out = x + u + y + bu[None, :]
        tl.store(OUT + md_offs, out.to(OUT.dtype.element_ty), mask=md_mask)


@triton.autotune(**_autotune("up_bwd", key=["D", "BLOCK_R", "HAS_ATTN"]))
@triton.jit
def _bwd_up_kernel(
    DOUT,  # (n_rows, D) upstream gradient of out, dtype of out (CDT or fp32), rounded to CDT for the dot
    WU,  # (D, R) up-projection weight, CDT or fp32 (rounded to CDT on load)
    PRE,  # (n_rows, R) saved pre-activation, ACC dtype (h = GELU(pre) is recomputed)
    ATT,  # (n_rows, R) saved attention output, ACC dtype (read if HAS_ATTN, else an unread placeholder)
    GATE,  # (1,) gate of this direction, ACC dtype
    DHP,  # (n_rows, R) out: dL/dh' = dout W_u, ACC dtype
    HP,  # (n_rows, R) out: h' = h + gate * O rounded to CDT, as the forward up-projection saw it (dW_u operand)
    ROWDOT,  # (n_rows,) out: rowsum(dh' * O), ACC dtype (written if HAS_ATTN); dgate = sum, Delta = gate * rowdot
    n_rows,
    D,
    R,
    HAS_ATTN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CDT: tl.constexpr,  # compute dtype of the D-wide projections: the dtype of u
    ACC: tl.constexpr,
    PROJ_PREC: tl.constexpr,  # precision of the D-wide projection dots, see _dot_precisions
):
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_M  # int64 base; per-element offsets below stay int32
    DOUT += row0 * D
    PRE += row0 * R
    ATT += row0 * R
    DHP += row0 * R
    HP += row0 * R
    ROWDOT += row0
    offs_m = tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_R)
    m_mask = offs_m < n_rows - row0
    r_mask = offs_r < R

    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        dout = tl.load(DOUT + offs_m[:, None] * D + offs_d[None, :], mask=m_mask[:, None] & d_mask[None, :], other=0.0)
        wu = tl.load(WU + offs_d[:, None] * R + offs_r[None, :], mask=d_mask[:, None] & r_mask[None, :], other=0.0)
        acc = tl.dot(dout.to(CDT), wu.to(CDT), acc, input_precision=PROJ_PREC, out_dtype=ACC)  # (BLOCK_M, BLOCK_R)

    mr_mask = m_mask[:, None] & r_mask[None, :]
    mr_offs = offs_m[:, None] * R + offs_r[None, :]
    tl.store(DHP + mr_offs, acc, mask=mr_mask)
    hp = _gelu(tl.load(PRE + mr_offs, mask=mr_mask, other=0.0))  # h
    if HAS_ATTN:
        o = tl.load(ATT + mr_offs, mask=mr_mask, other=0.0)
        gate = tl.load(GATE).to(ACC)
        hp = tl.fma(gate, o, hp)  # as the forward formed it
        tl.store(ROWDOT + offs_m, tl.sum(acc * o, 1), mask=m_mask)
    tl.store(HP + mr_offs, hp.to(CDT), mask=mr_mask)


@triton.autotune(**_autotune("attn_bwd", key=["n_x", "n_y", "D", "BLOCK_R", "Q_ON", "KV_ON"]))
@triton.jit
def _bwd_attn_down_kernel(
    PREX,  # (G * n_x, R) saved pre-activation of this modality X, ACC dtype (h_X = GELU(pre_X) is recomputed)
    PREY,  # (G * n_y, R) saved pre-activation of the other modality Y, ACC dtype (read if ANY_ATTN)
    DHPX,  # (G * n_x, R) dL/dh'_X, ACC dtype
    DHPY,  # (G * n_y, R) dL/dh'_Y, ACC dtype (read if KV_ON)
    LSEX,  # (G * n_x,) LSE of "X attends to Y", ACC dtype (read if Q_ON, else an unread placeholder)
    LSEY,  # (G * n_y,) LSE of "Y attends to X", ACC dtype (read if KV_ON, else an unread placeholder)
    RDX,  # (G * n_x,) rowsum(dh'_X * O_X), ACC dtype (read if Q_ON, else an unread placeholder)
    RDY,  # (G * n_y,) rowsum(dh'_Y * O_Y), ACC dtype (read if KV_ON, else an unread placeholder)
    GATE_X,  # (1,) gate of "X attends to Y", ACC dtype
    GATE_Y,  # (1,) gate of "Y attends to X", ACC dtype
    WD,  # (R, D) down-projection weight of X, CDT or fp32 (rounded to CDT on load)
    DOUT,  # (G * n_x, D) upstream gradient of out_X (the residual path of du), dtype of out (CDT or fp32)
    DPRE,  # (G * n_x, R) out: dL/dpre_X in the dtype of W_d (operand of the dW_d GEMM)
    DU,  # (G * n_x, D) out: dL/du_X = dout + dpre W_d, computed in ACC, stored in CDT
    n_x,
    n_y,
    D,
    R,
    Q_ON: tl.constexpr,  # "X attends to Y" is enabled: X gets dQ
    KV_ON: tl.constexpr,  # "Y attends to X" is enabled: X gets dK + dV
    ANY_ATTN: tl.constexpr,  # Q_ON or KV_ON
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CDT: tl.constexpr,  # compute dtype of the D-wide projections: the dtype of u
    ACC: tl.constexpr,
    PROJ_PREC: tl.constexpr,  # precision of the D-wide projection dots, see _dot_precisions
    ATT_PREC: tl.constexpr,  # precision of the r-wide fp32 attention dots
):
    g = tl.program_id(0).to(tl.int64)  # frame
    m0 = tl.program_id(1).to(tl.int64) * BLOCK_M  # first X token of this block, within the frame
    row0 = g * n_x + m0  # int64 bases; per-element offsets below stay int32
    col0 = g * n_y
    PREX += row0 * R
    DHPX += row0 * R
    DPRE += row0 * R
    LSEX += row0
    RDX += row0
    DOUT += row0 * D
    DU += row0 * D
    PREY += col0 * R
    DHPY += col0 * R
    LSEY += col0
    RDY += col0
    offs_m = tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_R)
    m_mask = offs_m < n_x - m0
    r_mask = offs_r < R
    mr_mask = m_mask[:, None] & r_mask[None, :]
    mr_offs = offs_m[:, None] * R + offs_r[None, :]

    dhp = tl.load(DHPX + mr_offs, mask=mr_mask, other=0.0)
    dh = dhp  # h' = h + gate * attn(h): the identity path
    if ANY_ATTN:
        hx = _gelu(tl.load(PREX + mr_offs, mask=mr_mask, other=0.0))  # (BLOCK_M, BLOCK_R)
        gate_x = tl.load(GATE_X).to(ACC)
        gate_y = tl.load(GATE_Y).to(ACC)
        do_x = gate_x * dhp  # dL/dO_X
        lse_x = tl.zeros((BLOCK_M,), dtype=ACC)
        delta_x = tl.zeros((BLOCK_M,), dtype=ACC)
        if Q_ON:
            lse_x = tl.load(LSEX + offs_m, mask=m_mask, other=0.0)
            delta_x = gate_x * tl.load(RDX + offs_m, mask=m_mask, other=0.0)
        for n0 in range(0, n_y, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_mask = offs_n < n_y
            nr_mask = n_mask[:, None] & r_mask[None, :]
            nr_offs = offs_n[:, None] * R + offs_r[None, :]
            hy = _gelu(tl.load(PREY + nr_offs, mask=nr_mask, other=0.0))  # (BLOCK_N, BLOCK_R)
            s = tl.dot(hx, tl.trans(hy), input_precision=ATT_PREC, out_dtype=ACC)  # (BLOCK_M, BLOCK_N), S = h_X h_Y^T
            s = tl.where(m_mask[:, None] & n_mask[None, :], s, float("-inf"))
            ds = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
            if Q_ON:  # X queries: P = exp(S - lse_X), dS = P (dO_X h_Y^T - Delta_X), dQ_X = dS h_Y
                p = tl.exp(s - lse_x[:, None])
                dp = tl.dot(do_x, tl.trans(hy), input_precision=ATT_PREC, out_dtype=ACC)
                ds += p * (dp - delta_x[:, None])
            if KV_ON:  # Y queries, X keys/values: P'^T = exp(S - lse_Y), dV_X = P'^T dO_Y, dK_X = dS'^T h_Y
                lse_y = tl.load(LSEY + offs_n, mask=n_mask, other=0.0)
                delta_y = gate_y * tl.load(RDY + offs_n, mask=n_mask, other=0.0)
                do_y = gate_y * tl.load(DHPY + nr_offs, mask=nr_mask, other=0.0)  # (BLOCK_N, BLOCK_R)
                pt = tl.exp(s - lse_y[None, :])
                dpt = tl.dot(hx, tl.trans(do_y), input_precision=ATT_PREC, out_dtype=ACC)
                ds += pt * (dpt - delta_y[None, :])
                dh = tl.dot(pt, do_y, dh, input_precision=ATT_PREC, out_dtype=ACC)
            dh = tl.dot(ds, hy, dh, input_precision=ATT_PREC, out_dtype=ACC)

    # GELU backward and the input gradient du = dout + dpre W_d, D in chunks. pre is loaded again rather than kept
    # live across the key loop next to h_X: the cache modifier makes this load differ from the one above, so the
    # compiler does not merge the two (ptxas sm_90, bf16, BLOCK_R = 128: 776 instead of 1260 bytes of spills).
    pre = tl.load(PREX + mr_offs, mask=mr_mask, other=0.0, cache_modifier=".cg")
    gelu_grad = 0.5 * (1.0 + tl.erf(pre * _SQRT1_2)) + pre * _INV_SQRT_2PI * tl.exp(-0.5 * pre * pre)
    dpre = dh * gelu_grad
    tl.store(DPRE + mr_offs, dpre.to(DPRE.dtype.element_ty), mask=mr_mask)
    dpre_in = dpre.to(CDT)  # the gradient of the CDT pre-activation, as a CDT linear backward would see it
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        wd = tl.load(WD + offs_r[:, None] * D + offs_d[None, :], mask=r_mask[:, None] & d_mask[None, :], other=0.0)
        du = tl.dot(dpre_in, wd.to(CDT), input_precision=PROJ_PREC, out_dtype=ACC)  # (BLOCK_M, BLOCK_D)
        md_mask = m_mask[:, None] & d_mask[None, :]
        md_offs = offs_m[:, None] * D + offs_d[None, :]
        du += tl.load(DOUT + md_offs, mask=md_mask, other=0.0).to(ACC)
        tl.store(DU + md_offs, du.to(CDT), mask=md_mask)


# The autotuned kernel of each launch step.
_KERNELS = {"down": _down_gelu_kernel, "attn_fwd": _attn_up_kernel, "up_bwd": _bwd_up_kernel,
            "attn_bwd": _bwd_attn_down_kernel}  # fmt: skip
_OVERRIDES.kernels.update(_KERNELS)


# ----------------------------------------------------------------------------------------------------------------
# Capabilities, tolerances, host-side checks
# ----------------------------------------------------------------------------------------------------------------


DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # compute dtypes (the dtype of u_v and u_a) on CUDA
# The interpreter computes bf16 tl.dot wrong; fp64 runs there for gradcheck only (not tuned for GPUs).
INTERPRETER_DTYPES = (torch.float32, torch.float16, torch.float64)
# Mixed precision (torch.autocast): weights and biases may be fp32 master copies whatever u is (rounded to u's dtype
# on load); the residual x (and so out) may be fp32 when u is 16-bit.
MASTER_DTYPE = torch.float32
_HALF_DTYPES = (torch.float16, torch.bfloat16)
_GATE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_BOTTLENECK = 128  # r-wide tiles (queries, keys, dh) stay in registers / shared memory
MAX_WIDTH = 16384


def _allowed_dtypes(name: str, compute: torch.dtype) -> tuple[torch.dtype, ...]:
    """Dtypes accepted for input ``name`` (see ``_ARG_NAMES``) when u_v has dtype ``compute``."""
    if name in ("u_v", "u_a"):
        return (compute,)
    if name in ("x_v", "x_a"):  # out = x + u + ... has the dtype of x: torch's type promotion of the contract
        return (compute, MASTER_DTYPE) if compute in _HALF_DTYPES else (compute,)
    return (compute,) if compute == MASTER_DTYPE else (compute, MASTER_DTYPE)

# The compute dtypes the kernels know (CDT: the dtype of u), as Triton dtypes.
_TL_DTYPES: dict[torch.dtype, tl.dtype] = {
    torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32, torch.float64: tl.float64,
}  # fmt: skip

# (atol, rtol) against the float64 torch reference evaluated on the same (rounded) inputs, for outputs and every
# gradient, each tensor divided by max(1, max|expected|) first (weight gradients are sums over G * N rows), keyed by
# (compute dtype, precision the fp32 dots run at: ``dot_precision``). Use ``tolerance(dtype, device)``.
#
# fp32 rows, from the dot precision. A length-K dot accumulated in fp32 is off by up to about K * u_d * sum|a_i b_i|,
# u_d the error each step adds: "ieee" (fp32 FMAs, the interpreter's numpy dots) u_d = u = 2^-24, fp32's unit
# roundoff. "tf32x3" (the GPU's fp32 dots, see _dot_precisions) splits each operand into a tf32 high part and a
# tf32-rounded low part (tf32 keeps 10 mantissa bits: unit roundoff 2^-11) and drops low x low: the low parts'
# rounding and the dropped term add up to 3 * 2^-11 * 2^-11 = 12u per product, so u_d = 13u. The longest reduction
# is a D-wide projection, D <= 1536 in the tests (the r-wide attention dots are <= 128 long). The tolerance is half
# that bound, K * u_d / 2: ieee 1536 * u / 2 = 4.6e-5 -> 5e-5 (the interpreter's observed max scaled error is 1.1e-5,
# tests/kernels/test_av_adapter.py), tf32x3 1536 * 13u / 2 = 6.0e-4.
# 16-bit rows: the rounding of 16-bit outputs and of the 16-bit operands of the D-wide dots dominates (a few units of
# 2^-11 for fp16, 2^-8 for bf16), whatever the fp32 dots run at (tf32x3 adds at most 128 * 13u / 2 = 5e-5 there).
# Observed (interpreter): fp16 7.5e-4 (about one fp16 ulp); mixed fp16 u with fp32 x and / or fp32 master weights
# (the row of u's dtype applies) 3.9e-4..7.5e-4. bf16 is 8x fp16, unmeasured: the interpreter cannot run bf16 dots,
# so it is only checked on a GPU. fp64 (interpreter only): ieee.
TOLERANCES: dict[tuple[torch.dtype, str], tuple[float, float]] = {
    (torch.float64, "ieee"): (1e-10, 1e-8),
    (torch.float32, "ieee"): (5e-5, 5e-5),
    (torch.float32, "tf32x3"): (6e-4, 6e-4),
    (torch.float16, "ieee"): (2e-3, 2e-3),
    (torch.float16, "tf32x3"): (2e-3, 2e-3),
    (torch.bfloat16, "ieee"): (1.6e-2, 3e-2),
    (torch.bfloat16, "tf32x3"): (1.6e-2, 3e-2),
}


def dot_precision(dtype: torch.dtype, device: torch.device | str) -> str:
    """The precision the kernels' fp32 dots effectively run at for compute dtype ``dtype`` on ``device``: "ieee" on
    CPU tensors (the interpreter computes every dot in numpy, whatever ``input_precision`` says), for fp64 and on
    ROCm; else the attention dots' precision from ``_dot_precisions`` ("tf32x3")."""
    if torch.device(device).type == "cpu":
        return "ieee"
    return _dot_precisions(dtype)[1]


def tolerance(dtype: torch.dtype, device: torch.device | str) -> tuple[float, float]:
    """(atol, rtol) for results computed in ``dtype`` on ``device`` (``TOLERANCES`` at ``dot_precision``)."""
    return TOLERANCES[(dtype, dot_precision(dtype, device))]


_ARG_NAMES = (
    "u_v", "u_a", "x_v", "x_a", "w_down_v", "b_down_v", "w_up_v", "b_up_v",
    "w_down_a", "b_down_a", "w_up_a", "b_up_a",
)  # fmt: skip


# Dispatch policy (stgcma_fast.ops.dispatch): on CPU this kernel runs only in the interpreter, which tests use by
# forcing the backend; on CUDA it is picked automatically once its GPU parity tests have passed there.
AUTO_DEVICES = ("cuda",)
GPU_VALIDATED = False  # set True after `pytest -m gpu tests/kernels/test_av_adapter.py` passes on a GPU


def _check_inputs(u_v, u_a, x_v, x_a, w_down_v, b_down_v, w_up_v, b_up_v, w_down_a, b_down_a, w_up_a, b_up_a,
                  alpha, beta) -> None:  # fmt: skip
    """Raise ValueError naming expected vs received for any shape / dtype / device mismatch."""
    if u_v.dim() != 3 or u_a.dim() != 3:
        raise ValueError(f"expected u_v (G, N_v, D) and u_a (G, N_a, D), got {tuple(u_v.shape)} and {tuple(u_a.shape)}")
    if u_v.dtype not in _TL_DTYPES:
        raise ValueError(f"expected u_v of a floating dtype {tuple(_TL_DTYPES)}, got {u_v.dtype}")
    G, N_v, D = u_v.shape
    r = w_down_v.shape[0] if w_down_v.dim() == 2 else -1
    N_a = u_a.shape[1]
    expected = {
        "u_v": (G, N_v, D), "u_a": (G, N_a, D), "x_v": (G, N_v, D), "x_a": (G, N_a, D),
        "w_down_v": (r, D), "b_down_v": (r,), "w_up_v": (D, r), "b_up_v": (D,),
        "w_down_a": (r, D), "b_down_a": (r,), "w_up_a": (D, r), "b_up_a": (D,),
    }  # fmt: skip
    tensors = dict(zip(_ARG_NAMES, (u_v, u_a, x_v, x_a, w_down_v, b_down_v, w_up_v, b_up_v,
                                    w_down_a, b_down_a, w_up_a, b_up_a)))  # fmt: skip
    for name, t in tensors.items():
        if tuple(t.shape) != expected[name]:
            raise ValueError(
                f"expected {name} of shape {expected[name]} (G={G}, N_v={N_v}, N_a={N_a}, D={D}, r={r} from u_v, u_a "
                f"and w_down_v), got {tuple(t.shape)}"
            )
        allowed = _allowed_dtypes(name, u_v.dtype)
        if t.dtype not in allowed:
            why = " (the dtype of u_v)"
            if len(allowed) > 1:
                kind = "residual" if name.startswith("x_") else "master weights"
                why = f" (the dtype of u_v) or {allowed[1]} ({kind}, mixed precision)"
            raise ValueError(f"expected {name} of dtype {allowed[0]}{why}, got {t.dtype}")
        if t.device != u_v.device:
            raise ValueError(f"expected {name} on {u_v.device} (the device of u_v), got {t.device}")
    for name, t in (("alpha", alpha), ("beta", beta)):
        if t.numel() != 1 or t.dim() > 1:
            raise ValueError(f"expected {name} to be a scalar tensor of shape () or (1,), got {tuple(t.shape)}")
        if t.device != u_v.device:
            raise ValueError(f"expected {name} on {u_v.device} (the device of u_v), got {t.device}")
        if t.dtype not in _GATE_DTYPES:
            raise ValueError(f"expected {name} of a floating dtype {_GATE_DTYPES}, got {t.dtype}")
    if min(G, N_v, N_a, D, r) < 1:
        raise ValueError(f"expected non-empty inputs, got G={G}, N_v={N_v}, N_a={N_a}, D={D}, r={r}")


def supports(u_v, u_a, x_v, x_a, w_down_v, b_down_v, w_up_v, b_up_v, w_down_a, b_down_a, w_up_a, b_up_a,
             alpha, beta, a2v: bool = True, v2a: bool = True) -> str | None:  # fmt: skip
    """None if the Triton kernel accepts these inputs (same signature as ``av_adapter``), else the reason why not."""
    try:
        _check_inputs(u_v, u_a, x_v, x_a, w_down_v, b_down_v, w_up_v, b_up_v, w_down_a, b_down_a, w_up_a, b_up_a,
                      alpha, beta)  # fmt: skip
    except ValueError as e:
        return str(e)
    r, D = w_down_v.shape
    if r > MAX_BOTTLENECK:
        return f"r={r} > {MAX_BOTTLENECK}"
    if D > MAX_WIDTH:
        return f"D={D} > {MAX_WIDTH}"
    return device_dtype_refusal(u_v.device, u_v.dtype, _interpreted(), DTYPES, INTERPRETER_DTYPES)


def _dot_precisions(dtype: torch.dtype) -> tuple[str, str]:
    """(projection, attention) tl.dot input precisions.

    The r-wide attention dots always see fp32 operands: plain tf32 would move scores of ~1e4 by whole units, "ieee"
    (FMA) spills registers badly on the GPU, so they use "tf32x3" (fp32-level accuracy on tensor cores). The D-wide
    projections run on the input dtype: 16-bit inputs ignore the setting ("tf32", the default), fp32 inputs get
    "tf32x3" too. fp64 (interpreter only) and ROCm (no tf32x3) use "ieee".
    """
    if dtype == torch.float64 or torch.version.hip is not None:
        return "ieee", "ieee"
    return ("tf32x3" if dtype == torch.float32 else "tf32"), "tf32x3"


def _gate(t: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    return t.detach().reshape(1).to(acc).contiguous()


# What the forward saves for backward, in the order the launchers and the custom ops pass it.
_SAVED = ("pre_v", "o_v", "lse_v", "pre_a", "o_a", "lse_a")


def _saved_shapes(G: int, N_v: int, N_a: int, r: int, a2v: bool, v2a: bool, save: bool) -> dict[str, tuple[int, ...]]:
    """Shape of each ``_SAVED`` tensor. pre (G, N, r) if ``save`` (backward will run); O (G, N, r) and LSE (G, N) of
    a modality if ``save`` and its direction is on (video: a2v, audio: v2a). Anything else is an empty placeholder
    (0,) that no kernel reads or writes."""
    shapes = {}
    for m, n, on in (("v", N_v, a2v), ("a", N_a, v2a)):
        shapes[f"pre_{m}"] = (G, n, r) if save else (0,)
        shapes[f"o_{m}"] = (G, n, r) if save and on else (0,)
        shapes[f"lse_{m}"] = (G, n) if save and on else (0,)
    return shapes


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------


def _interpreted() -> bool:
    """True when this module's kernels were defined under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    return interpreted(_down_gelu_kernel)


def av_adapter_forward(
    u_v: torch.Tensor,  # (G, N_v, D)
    u_a: torch.Tensor,  # (G, N_a, D)
    x_v: torch.Tensor,  # (G, N_v, D)
    x_a: torch.Tensor,  # (G, N_a, D)
    w_down_v: torch.Tensor,  # (r, D)
    b_down_v: torch.Tensor,  # (r,)
    w_up_v: torch.Tensor,  # (D, r)
    b_up_v: torch.Tensor,  # (D,)
    w_down_a: torch.Tensor,  # (r, D)
    b_down_a: torch.Tensor,  # (r,)
    w_up_a: torch.Tensor,  # (D, r)
    b_up_a: torch.Tensor,  # (D,)
    alpha: torch.Tensor,  # ()
    beta: torch.Tensor,  # ()
    a2v: bool = True,
    v2a: bool = True,
    save: bool = True,  # False: no backward will run (inference), nothing is kept for it
) -> tuple[torch.Tensor, ...]:
    """Run the forward kernels.

    Returns ``(out_v, out_a, pre_v, o_v, lse_v, pre_a, o_a, lse_a)``: the two outputs in the dtypes of x_v / x_a,
    then what backward needs, in fp32 (fp64 for fp64 inputs): pre-activations (G, N, r), attention outputs O
    (G, N, r) and their log-sum-exp (G, N). The O / LSE of a disabled direction, and with ``save=False`` all six,
    are empty placeholders (``_saved_shapes``): the kernels skip those stores. h = GELU(pre) is a forward-only
    temporary (the backward recomputes it). Dtypes: see the module docstring (fp32 master weights and an fp32
    residual are accepted with 16-bit u).
    """
    _check_inputs(u_v, u_a, x_v, x_a, w_down_v, b_down_v, w_up_v, b_up_v, w_down_a, b_down_a, w_up_a, b_up_a,
                  alpha, beta)  # fmt: skip
    G, N_v, D = u_v.shape
    N_a = u_a.shape[1]
    r = w_down_v.shape[0]
    acc_t, acc_tl = acc_dtypes(u_v.dtype)
    cdt = _TL_DTYPES[u_v.dtype]
    prec, att_prec = _dot_precisions(u_v.dtype)
    block_r = _block_r(r)
    u_v, u_a, x_v, x_a = (t.contiguous() for t in (u_v, u_a, x_v, x_a))
    w_down_v, b_down_v, w_up_v, b_up_v = (t.contiguous() for t in (w_down_v, b_down_v, w_up_v, b_up_v))
    w_down_a, b_down_a, w_up_a, b_up_a = (t.contiguous() for t in (w_down_a, b_down_a, w_up_a, b_up_a))
    alpha_c, beta_c = _gate(alpha, acc_t), _gate(beta, acc_t)

    shapes = _saved_shapes(G, N_v, N_a, r, a2v, v2a, save)
    saved = {name: torch.empty(shapes[name], device=u_v.device, dtype=acc_t) for name in _SAVED}

    hs = []
    for u, w_d, b_d, n, pre in ((u_v, w_down_v, b_down_v, N_v, saved["pre_v"]),
                                (u_a, w_down_a, b_down_a, N_a, saved["pre_a"])):  # fmt: skip
        h = torch.empty((G, n, r), device=u.device, dtype=acc_t)  # forward-only: freed when the forward returns
        _down_gelu_kernel[lambda meta, rows=G * n: (triton.cdiv(rows, meta["BLOCK_M"]),)](
            u, w_d, b_d, pre, h, G * n, D, r,
            SAVE=bool(save), BLOCK_R=block_r, BLOCK_D=BLOCK_D, CDT=cdt, ACC=acc_tl, PROJ_PREC=prec,
        )  # fmt: skip
        hs.append(h)
    h_v, h_a = hs

    outs = []
    for hq, hk, u, x, w_u, b_u, gate, n_q, n_kv, on, o, lse in (
        (h_v, h_a, u_v, x_v, w_up_v, b_up_v, alpha_c, N_v, N_a, a2v, saved["o_v"], saved["lse_v"]),
        (h_a, h_v, u_a, x_a, w_up_a, b_up_a, beta_c, N_a, N_v, v2a, saved["o_a"], saved["lse_a"]),
    ):
        out = torch.empty(u.shape, device=u.device, dtype=x.dtype)  # x + u + ...: x's dtype (x is u's or fp32)
        _attn_up_kernel[lambda meta, n=n_q: (G, triton.cdiv(n, meta["BLOCK_M"]))](
            hq, hk, u, x, w_u, b_u, gate, out, o, lse, n_q, n_kv, D, r,
            HAS_ATTN=bool(on), SAVE=bool(save), BLOCK_R=block_r, BLOCK_D=BLOCK_D, CDT=cdt, ACC=acc_tl,
            PROJ_PREC=prec, ATT_PREC=att_prec,
        )  # fmt: skip
        outs.append(out)
    return (*outs, *saved.values())


def av_adapter_backward(
    dout_v: torch.Tensor,  # (G, N_v, D) gradient of out_v, dtype of out_v
    dout_a: torch.Tensor,  # (G, N_a, D) gradient of out_a, dtype of out_a
    u_v: torch.Tensor,  # (G, N_v, D)
    u_a: torch.Tensor,  # (G, N_a, D)
    w_down_v: torch.Tensor,  # (r, D)
    b_down_v: torch.Tensor,  # (r,) read for its dtype only
    w_up_v: torch.Tensor,  # (D, r)
    b_up_v: torch.Tensor,  # (D,) read for its dtype only
    w_down_a: torch.Tensor,  # (r, D)
    b_down_a: torch.Tensor,  # (r,) read for its dtype only
    w_up_a: torch.Tensor,  # (D, r)
    b_up_a: torch.Tensor,  # (D,) read for its dtype only
    alpha: torch.Tensor,  # ()
    beta: torch.Tensor,  # ()
    pre_v: torch.Tensor,  # (G, N_v, r) saved, ACC dtype
    o_v: torch.Tensor,  # (G, N_v, r) saved, ACC dtype; (0,) placeholder if a2v is off
    lse_v: torch.Tensor,  # (G, N_v) saved, ACC dtype; (0,) placeholder if a2v is off
    pre_a: torch.Tensor,  # (G, N_a, r) saved
    o_a: torch.Tensor,  # (G, N_a, r) saved; (0,) placeholder if v2a is off
    lse_a: torch.Tensor,  # (G, N_a) saved; (0,) placeholder if v2a is off
    a2v: bool = True,
    v2a: bool = True,
) -> tuple[torch.Tensor, ...]:
    """Gradients of every input except x_v / x_a (whose gradients are dout_v / dout_a themselves).

    Returns ``(du_v, du_a, dw_down_v, db_down_v, dw_up_v, db_up_v, dw_down_a, db_down_a, dw_up_a, db_up_a, dalpha,
    dbeta)``, each in the dtype of its input (fp32 for fp32 master weights); the gate gradient of a disabled
    direction is zero. dout may be fp32 (an fp32 residual) with 16-bit u: the D-wide dots read it rounded to u's
    dtype (as autocast's 16-bit linear backward would), the residual path du = dout + ... and the dW_u GEMM read it
    unrounded. The weight GEMMs run in the wider of (u's dtype, the weight's dtype): fp32 for fp32 master weights,
    on operands that are exact in it (16-bit u, the 16-bit h' that the forward dot saw, dpre kept in fp32), so
    their only rounding is fp32 accumulation. The saved tensors are those of ``av_adapter_forward(..., save=True)``;
    h = GELU(pre) is recomputed in the kernels.
    """
    G, N_v, D = u_v.shape
    N_a = u_a.shape[1]
    r = w_down_v.shape[0]
    dtype = u_v.dtype
    acc_t, acc_tl = acc_dtypes(dtype)
    shapes = _saved_shapes(G, N_v, N_a, r, a2v, v2a, save=True)
    for name, t, shape, want in (
        ("dout_v", dout_v, (G, N_v, D), None), ("dout_a", dout_a, (G, N_a, D), None),
        *((name, t, shapes[name], acc_t) for name, t in zip(_SAVED, (pre_v, o_v, lse_v, pre_a, o_a, lse_a))),
    ):  # fmt: skip
        if tuple(t.shape) != shape:
            src = "" if want is None else f" (saved by av_adapter_forward with save=True, a2v={a2v}, v2a={v2a})"
            raise ValueError(f"expected {name} of shape {shape}{src}, got {tuple(t.shape)}")
        if want is not None and t.dtype != want:
            raise ValueError(f"expected saved {name} of dtype {want} (from av_adapter_forward), got {t.dtype}")
        if want is None and t.dtype not in _TL_DTYPES:
            raise ValueError(f"expected {name} of a floating dtype {tuple(_TL_DTYPES)}, got {t.dtype}")
    pre_v, o_v, lse_v, pre_a, o_a, lse_a = (t.contiguous() for t in (pre_v, o_v, lse_v, pre_a, o_a, lse_a))
    cdt = _TL_DTYPES[dtype]
    prec, att_prec = _dot_precisions(dtype)
    block_r = _block_r(r)
    dout_v, dout_a = dout_v.contiguous(), dout_a.contiguous()
    u_v, u_a = u_v.contiguous(), u_a.contiguous()
    w_down_v, w_up_v, w_down_a, w_up_a = (t.contiguous() for t in (w_down_v, w_up_v, w_down_a, w_up_a))
    alpha_c, beta_c = _gate(alpha, acc_t), _gate(beta, acc_t)

    # 1. dh' = dout W_u, h' for the dW_u GEMM, rowdot = rowsum(dh' * O).
    side = []
    for dout, w_u, pre, o, gate, n, on in ((dout_v, w_up_v, pre_v, o_v, alpha_c, N_v, a2v),
                                           (dout_a, w_up_a, pre_a, o_a, beta_c, N_a, v2a)):  # fmt: skip
        dhp = torch.empty((G, n, r), device=dout.device, dtype=acc_t)
        hp = torch.empty((G, n, r), device=dout.device, dtype=dtype)
        rowdot = torch.zeros((G, n) if on else (0,), device=dout.device, dtype=acc_t)  # off: unwritten placeholder
        _bwd_up_kernel[lambda meta, rows=G * n: (triton.cdiv(rows, meta["BLOCK_M"]),)](
            dout, w_u, pre, o, gate, dhp, hp, rowdot, G * n, D, r,
            HAS_ATTN=bool(on), BLOCK_R=block_r, BLOCK_D=BLOCK_D, CDT=cdt, ACC=acc_tl, PROJ_PREC=prec,
        )  # fmt: skip
        side.append((dhp, hp, rowdot))
    (dhp_v, hp_v, rd_v), (dhp_a, hp_a, rd_a) = side

    # 2. Attention backward (both directions from one pass over the shared scores), GELU backward, du.
    grads = []
    # X = this side, Y = the other one; q_on: "X attends to Y" is on, kv_on: "Y attends to X" is on.
    for (prex, prey, dhpx, dhpy, lsex, lsey, rdx, rdy, gx, gy, w_d, u, dout, n_x, n_y, q_on, kv_on) in (
        (pre_v, pre_a, dhp_v, dhp_a, lse_v, lse_a, rd_v, rd_a, alpha_c, beta_c, w_down_v, u_v, dout_v, N_v, N_a,
         a2v, v2a),
        (pre_a, pre_v, dhp_a, dhp_v, lse_a, lse_v, rd_a, rd_v, beta_c, alpha_c, w_down_a, u_a, dout_a, N_a, N_v,
         v2a, a2v),
    ):  # fmt: skip
        # dpre in the dW_d GEMM dtype: fp32 for fp32 master weights, else u's dtype (the same-dtype path).
        dpre = torch.empty((G, n_x, r), device=dout.device, dtype=torch.promote_types(w_d.dtype, dtype))
        du = torch.empty_like(u)
        _bwd_attn_down_kernel[lambda meta, n=n_x: (G, triton.cdiv(n, meta["BLOCK_M"]))](
            prex, prey, dhpx, dhpy, lsex, lsey, rdx, rdy, gx, gy, w_d, dout, dpre, du, n_x, n_y, D, r,
            Q_ON=bool(q_on), KV_ON=bool(kv_on), ANY_ATTN=bool(q_on or kv_on), BLOCK_R=block_r, BLOCK_D=BLOCK_D,
            CDT=cdt, ACC=acc_tl, PROJ_PREC=prec, ATT_PREC=att_prec,
        )  # fmt: skip
        grads.append((dpre, du))
    (dpre_v, du_v), (dpre_a, du_a) = grads

    # 3. Weight reductions: torch GEMMs (fp32 accumulation inside cuBLAS) and sums, each in the wider of u's dtype
    # and the parameter's dtype, returned in the parameter's dtype.
    def weight_grads(dout, u, hp, dpre, w_d, b_d, w_u, b_u):
        t_u, t_d = torch.promote_types(w_u.dtype, dtype), torch.promote_types(w_d.dtype, dtype)
        dout2, u2 = dout.reshape(-1, D), u.reshape(-1, D)
        dpre2 = dpre.reshape(-1, r)
        dw_up = dout2.to(t_u).t().mm(hp.reshape(-1, r).to(t_u)).to(w_u.dtype)  # (D, r)
        db_up = dout2.sum(0, dtype=acc_t).to(b_u.dtype)  # (D,)
        dw_down = dpre2.to(t_d).t().mm(u2.to(t_d)).to(w_d.dtype)  # (r, D)
        db_down = dpre2.sum(0, dtype=acc_t).to(b_d.dtype)  # (r,)
        return dw_down, db_down, dw_up, db_up

    dw_down_v, db_down_v, dw_up_v, db_up_v = weight_grads(dout_v, u_v, hp_v, dpre_v, w_down_v, b_down_v, w_up_v,
                                                          b_up_v)  # fmt: skip
    dw_down_a, db_down_a, dw_up_a, db_up_a = weight_grads(dout_a, u_a, hp_a, dpre_a, w_down_a, b_down_a, w_up_a,
                                                          b_up_a)  # fmt: skip
    dalpha = rd_v.sum().to(alpha.dtype).reshape(alpha.shape)  # zero when a2v is off (rowdot empty)
    dbeta = rd_a.sum().to(beta.dtype).reshape(beta.shape)
    return (du_v, du_a, dw_down_v, db_down_v, dw_up_v, db_up_v, dw_down_a, db_down_a, dw_up_a, db_up_a,
            dalpha, dbeta)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# autograd.Function (eager) and torch.library custom ops (torch.compile)
# ----------------------------------------------------------------------------------------------------------------


def _materialize(dout: torch.Tensor | None, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A zero upstream gradient (in the dtype of the output it belongs to) where autograd passes None."""
    return torch.zeros(like.shape, device=like.device, dtype=dtype) if dout is None else dout


class AVAdapterFunction(torch.autograd.Function):
    """Eager autograd wrapper around the launchers, which ``av_adapter`` runs in plain eager calls (the custom op below,
    which compiles, otherwise: see ``eager_autograd``)."""

    @staticmethod
    def forward(ctx, u_v, u_a, x_v, x_a, w_down_v, b_down_v, w_up_v, b_up_v, w_down_a, b_down_a, w_up_a, b_up_a,
                alpha, beta, a2v=True, v2a=True):  # fmt: skip
        save = any(ctx.needs_input_grad)  # False under no_grad / inference, or when no input requires grad
        res = av_adapter_forward(u_v, u_a, x_v, x_a, w_down_v, b_down_v, w_up_v, b_up_v, w_down_a, b_down_a,
                                 w_up_a, b_up_a, alpha, beta, a2v, v2a, save)  # fmt: skip
        ctx.save_for_backward(u_v, u_a, w_down_v, b_down_v, w_up_v, b_up_v, w_down_a, b_down_a, w_up_a, b_up_a,
                              alpha, beta, *res[2:])  # fmt: skip
        ctx.flags = (a2v, v2a)
        ctx.out_dtypes = (x_v.dtype, x_a.dtype)
        return res[0], res[1]

    @staticmethod
    def backward(ctx, dout_v, dout_a):
        a2v, v2a = ctx.flags
        u_v, u_a = ctx.saved_tensors[:2]
        dout_v = _materialize(dout_v, u_v, ctx.out_dtypes[0])
        dout_a = _materialize(dout_a, u_a, ctx.out_dtypes[1])
        g = av_adapter_backward(dout_v, dout_a, *ctx.saved_tensors, a2v, v2a)
        return (g[0], g[1], dout_v, dout_a, *g[2:10], g[10] if a2v else None, g[11] if v2a else None, None, None)


_Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                 torch.Tensor]  # fmt: skip
_Grads = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
               torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # fmt: skip


@torch.library.custom_op("stgcma_fast::av_adapter", mutates_args=())
def _av_adapter_op(
    u_v: torch.Tensor, u_a: torch.Tensor, x_v: torch.Tensor, x_a: torch.Tensor,
    w_down_v: torch.Tensor, b_down_v: torch.Tensor, w_up_v: torch.Tensor, b_up_v: torch.Tensor,
    w_down_a: torch.Tensor, b_down_a: torch.Tensor, w_up_a: torch.Tensor, b_up_a: torch.Tensor,
    alpha: torch.Tensor, beta: torch.Tensor, a2v: bool, v2a: bool, save: bool = True,
) -> _Outputs:  # fmt: skip
    """(out_v, out_a, pre_v, o_v, lse_v, pre_a, o_a, lse_a), see ``av_adapter_forward``."""
    return av_adapter_forward(u_v, u_a, x_v, x_a, w_down_v, b_down_v, w_up_v, b_up_v, w_down_a, b_down_a,
                              w_up_a, b_up_a, alpha, beta, a2v, v2a, save)  # fmt: skip


@_av_adapter_op.register_fake
def _(u_v, u_a, x_v, x_a, w_down_v, b_down_v, w_up_v, b_up_v, w_down_a, b_down_a, w_up_a, b_up_a, alpha, beta,
      a2v, v2a, save=True):  # fmt: skip
    _check_inputs(u_v, u_a, x_v, x_a, w_down_v, b_down_v, w_up_v, b_up_v, w_down_a, b_down_a, w_up_a, b_up_a,
                  alpha, beta)  # fmt: skip
    G, N_v, _ = u_v.shape
    N_a, r = u_a.shape[1], w_down_v.shape[0]
    acc_t, _ = acc_dtypes(u_v.dtype)
    shapes = _saved_shapes(G, N_v, N_a, r, a2v, v2a, save)
    saved = [u_v.new_empty(shapes[name], dtype=acc_t) for name in _SAVED]
    # Outputs are contiguous, in the dtype of x (u's dtype, or fp32 for an fp32 residual with 16-bit u).
    return (u_v.new_empty(u_v.shape, dtype=x_v.dtype), u_a.new_empty(u_a.shape, dtype=x_a.dtype), *saved)


@torch.library.custom_op("stgcma_fast::av_adapter_backward", mutates_args=())
def _av_adapter_backward_op(
    dout_v: torch.Tensor, dout_a: torch.Tensor, u_v: torch.Tensor, u_a: torch.Tensor,
    w_down_v: torch.Tensor, b_down_v: torch.Tensor, w_up_v: torch.Tensor, b_up_v: torch.Tensor,
    w_down_a: torch.Tensor, b_down_a: torch.Tensor, w_up_a: torch.Tensor, b_up_a: torch.Tensor,
    alpha: torch.Tensor, beta: torch.Tensor,
    pre_v: torch.Tensor, o_v: torch.Tensor, lse_v: torch.Tensor,
    pre_a: torch.Tensor, o_a: torch.Tensor, lse_a: torch.Tensor,
    a2v: bool, v2a: bool,
) -> _Grads:  # fmt: skip
    """(du_v, du_a, dw_down_v, db_down_v, dw_up_v, db_up_v, dw_down_a, db_down_a, dw_up_a, db_up_a, dalpha, dbeta)."""
    return av_adapter_backward(dout_v, dout_a, u_v, u_a, w_down_v, b_down_v, w_up_v, b_up_v, w_down_a, b_down_a,
                               w_up_a, b_up_a, alpha, beta, pre_v, o_v, lse_v, pre_a, o_a, lse_a, a2v, v2a)  # fmt: skip


@_av_adapter_backward_op.register_fake
def _(dout_v, dout_a, u_v, u_a, w_down_v, b_down_v, w_up_v, b_up_v, w_down_a, b_down_a, w_up_a, b_up_a, alpha, beta,
      pre_v, o_v, lse_v, pre_a, o_a, lse_a, a2v, v2a):  # fmt: skip
    # Every gradient is contiguous and in the dtype of its input (fp32 for fp32 master weights).
    like = lambda t: t.new_empty(t.shape)  # noqa: E731
    return (like(u_v), like(u_a), like(w_down_v), like(b_down_v), like(w_up_v), like(b_up_v),
            like(w_down_a), like(b_down_a), like(w_up_a), like(b_up_a), like(alpha), like(beta))  # fmt: skip


def _setup_context(ctx, inputs, output):
    u_v, u_a, x_v, x_a, *params, a2v, v2a, _save = inputs  # params: the 8 weights and biases, alpha, beta
    ctx.save_for_backward(u_v, u_a, *params, *output[2:])  # output[2:]: pre, O, LSE per modality (``_SAVED``)
    ctx.flags = (a2v, v2a)
    ctx.out_dtypes = (x_v.dtype, x_a.dtype)


def _backward(ctx, dout_v, dout_a, *_aux_grads):
    """Gradients for the 17 op inputs; the saved intermediates (outputs 2..7) are internal and get none."""
    a2v, v2a = ctx.flags
    u_v, u_a = ctx.saved_tensors[:2]
    dout_v = _materialize(dout_v, u_v, ctx.out_dtypes[0])
    dout_a = _materialize(dout_a, u_a, ctx.out_dtypes[1])
    g = _av_adapter_backward_op(dout_v, dout_a, *ctx.saved_tensors, a2v, v2a)
    return (g[0], g[1], dout_v, dout_a, *g[2:10], g[10] if a2v else None, g[11] if v2a else None, None, None, None)


_av_adapter_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.stgcma_fast.av_adapter)
def _(u_v, u_a, x_v, x_a, w_down_v, *args, out_shape=None, **kwargs) -> int:
    a2v, v2a = args[9:11]  # after b_down_v ... beta
    G, N_v, D = u_v
    return av_adapter_flops(G, N_v, u_a[1], D, w_down_v[0], int(a2v) + int(v2a))


@register_flop_formula(torch.ops.stgcma_fast.av_adapter_backward)
def _(dout_v, dout_a, u_v, u_a, w_down_v, *args, out_shape=None, **kwargs) -> int:
    a2v, v2a = args[15:17]  # after b_down_v ... lse_a
    G, N_v, D = dout_v
    return av_adapter_flops(G, N_v, dout_a[1], D, w_down_v[0], int(a2v) + int(v2a), backward=True)


# ----------------------------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------------------------


def av_adapter(
    u_v: torch.Tensor,  # (G, N_v, D) video adapter input (the frozen MHSA or FFN output)
    u_a: torch.Tensor,  # (G, N_a, D) audio adapter input
    x_v: torch.Tensor,  # (G, N_v, D) video residual stream
    x_a: torch.Tensor,  # (G, N_a, D) audio residual stream
    w_down_v: torch.Tensor,  # (r, D)
    b_down_v: torch.Tensor,  # (r,)
    w_up_v: torch.Tensor,  # (D, r)
    b_up_v: torch.Tensor,  # (D,)
    w_down_a: torch.Tensor,  # (r, D)
    b_down_a: torch.Tensor,  # (r,)
    w_up_a: torch.Tensor,  # (D, r)
    b_up_a: torch.Tensor,  # (D,)
    alpha: torch.Tensor,  # () gate of audio -> video attention
    beta: torch.Tensor,  # () gate of video -> audio attention
    a2v: bool = True,  # False: alpha is fixed at zero, the video branch does not read audio
    v2a: bool = True,  # False: beta is fixed at zero, the audio branch does not read video
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton AV-Adapter with residual epilogue; same contract as ``stgcma_fast.ops.torch_ops.av_adapter``.

    Returns (out_v (G, N_v, D), out_a (G, N_a, D)) in the dtypes of x_v / x_a. Differentiable w.r.t. every tensor
    input (each gradient in its input's dtype), traceable by ``torch.compile(fullgraph=True)`` (a
    ``torch.library.custom_op``). Accepts what ``torch.autocast`` hands it: 16-bit u with an fp32 residual x and fp32
    master weights (see the module docstring, "Dtypes"). Keeps pre, O and LSE for backward only when grad mode is on
    and some input requires grad; under ``torch.no_grad()`` / ``torch.inference_mode()`` nothing is saved.
    """
    tensors = (u_v, u_a, x_v, x_a, w_down_v, b_down_v, w_up_v, b_up_v, w_down_a, b_down_a, w_up_a, b_up_a, alpha, beta)
    if eager_autograd():
        return AVAdapterFunction.apply(*tensors, bool(a2v), bool(v2a))
    save = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    res = _av_adapter_op(*tensors, bool(a2v), bool(v2a), save)
    return res[0], res[1]
