"""Temporal self-attention across M <= 32 frames for every (batch, token, head), read straight from the qkv tensor.

Layout (Liger-Kernel style): private ``@triton.jit`` kernels, plain launchers (``temporal_attention_forward`` /
``temporal_attention_backward``), the ``torch.autograd.Function``, the ``torch.library.custom_op`` registration, the
public function with the signature of :func:`stgcma_fast.ops.torch_ops.temporal_attention`, then capabilities and
tolerances.

The input is the frozen qkv projection, (B, M, N, 3 * H * hd) viewed as (B, M, N, 3, H, hd); q, k, v of head h are
read with strides (any batch / frame / token stride, unit channel stride) and the output is written as
(B, M, N, H * hd), the layout the output projection reads: no permute copies either way.

Design for short sequences: a program owns one (batch, head) and a block of BLOCK_N tokens. Its ROWS = BLOCK_N *
BLOCK_M rows are the (token, frame) pairs, frame fastest, with M padded to the power of two BLOCK_M. One
(ROWS, hd) x (hd, ROWS) ``tl.dot`` computes the scores of all BLOCK_N problems at once; a block-diagonal mask (same
token, key frame < M) keeps each token's M x M block, so every dot has M, N, K >= 16 on the GPU whatever M is
(M = 10 -> 16 frames x BLOCK_N tokens). All M keys fit in the block, so the softmax is a single max-subtracted pass
(exp2 with log2(e) folded into the scale) and there is no online rescaling loop.

Forward saves the natural-log log-sum-exp of every query row, (B, H, N, M) fp32. Backward (flash-attention style,
one program per the same tile, no atomics) recomputes P from q, k and the LSE, takes delta = rowsum(dO * O), and
writes dq, dk, dv straight into a (B, M, N, 3 * H * hd) gradient laid out like qkv.

hd: any value in [1, 128]; it runs in a power-of-two block of at least 16 with masks (80 -> 128).
"""

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.utils.flop_counter import register_flop_formula

from stgcma_fast.flops import temporal_attention_flops
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
_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)

# ----------------------------------------------------------------------------------------------------------------------
# Launch configurations (the kernels' autotune candidates)
@dataclass(frozen=True)
class _Launch:
    """(token, frame) rows per program (ROWS, a power of two >= 16 and >= BLOCK_M) and launch options of one kernel."""

    rows: int
    num_warps: int
    num_stages: int = 1  # the kernels have no loop to pipeline


_STEPS = ("fwd", "bwd")
_L = _Launch
# Launch candidates per dot class ("fp32": IEEE fp32 dots, which run on CUDA cores; "16-bit": fp16 / bf16), padded
# head dim BLOCK_HD and kernel step. On the GPU the autotuner times them once per key (M, N, BLOCK_M, BLOCK_HD and
# qkv's dtype) and keeps the fastest; the first is the default when autotuning is off (STGCMA_FAST_AUTOTUNE=0). A block
# holds whole tokens, so launches with ROWS < BLOCK_M are pruned (every list has one of 32 rows or more, for M =
# 17..32). The lists come from sm_90 ptxas resource reports of BLOCK_M = 16 (M = 10 frames; `python -m
# tests.kernels.compile_check tests.kernels.test_temporal_attention:_sm90_specs '["bf16"]'` prints registers and
# spill bytes per variant): launches that spill no registers. A program holds (ROWS, ROWS) fp32 scores and
# probabilities (the backward also dP and dS) next to (ROWS, BLOCK_HD) tiles of q, k, v (and o, dO, dq, dk, dv), so
# its registers grow with ROWS^2 and ROWS x BLOCK_HD; 8 warps halve each thread's share. The former default (the
# first config of the former single list that its pruning rules kept: 64 rows / 4 warps for 16-bit, 32 / 4 for fp32,
# 16 / 4 for fp32 at BLOCK_HD = 128) is a list's first where it spilled nothing, else its last (the autotuner may still
# pick it). Spill bytes per thread of each list, in order, as the JIT builds the variants (16-byte aligned pointers,
# multiples of 16 specialised, ViT-B/16's N = 197 tokens, triton 3.8's ptxas), and in brackets as the unspecialised
# builds first reported them (BLOCK_HD = 16 and 32: none anywhere):
#                        fwd                           bwd
#   16-bit, BLOCK_HD 64  0, 0, 0, 0                    0, 0, 0, 0 (192 for the former default)
#   16-bit, BLOCK_HD 128 0, 0, 0, 0, 0 (104)           0, 0, 0, 0, 0 (240, 864)
#   fp32, BLOCK_HD 64    0, 0, 0, 0 (16)               0, 0, 0, 0 (896)
#   fp32, BLOCK_HD 128   0 (the others not re-measured: 16)   0 (704)
# In the unspecialised builds fp32 at BLOCK_HD = 128 (hd 65..128) spilled unless a program held a single token
# (ROWS = 16): 32 rows spilled 16 / 408 bytes in the forward and 704 / 1016 in the backward at 8 / 4 warps.
# Every candidate is parity-tested in the interpreter (tests/kernels/test_temporal_attention.py::
# test_every_gpu_launch_candidate) and compiled for sm_90 there.
_GPU_LAUNCH: dict[str, dict[int, dict[str, tuple[_Launch, ...]]]] = {
    "16-bit": {
        16: {"fwd": (_L(64, 4), _L(128, 8), _L(32, 4), _L(64, 8)),
             "bwd": (_L(64, 4), _L(128, 8), _L(32, 4), _L(64, 8))},
        32: {"fwd": (_L(64, 4), _L(128, 8), _L(32, 4), _L(64, 8)),
             "bwd": (_L(64, 4), _L(128, 8), _L(32, 4), _L(64, 8))},
        64: {"fwd": (_L(64, 4), _L(128, 8), _L(32, 4), _L(64, 8)),
             "bwd": (_L(64, 8), _L(32, 4), _L(16, 4), _L(64, 4))},
        128: {"fwd": (_L(64, 8), _L(128, 8), _L(32, 4), _L(16, 4), _L(64, 4)),
              "bwd": (_L(32, 4), _L(32, 8), _L(16, 4), _L(64, 8), _L(64, 4))},
    },
    "fp32": {
        16: {"fwd": (_L(32, 4), _L(64, 8), _L(64, 4), _L(16, 4)),
             "bwd": (_L(32, 4), _L(64, 8), _L(64, 4), _L(16, 4))},
        32: {"fwd": (_L(32, 4), _L(64, 8), _L(64, 4), _L(16, 4)),
             "bwd": (_L(32, 4), _L(64, 8), _L(32, 8), _L(16, 4))},
        64: {"fwd": (_L(32, 4), _L(32, 8), _L(16, 4), _L(64, 8)),
             "bwd": (_L(32, 8), _L(16, 4), _L(16, 2), _L(32, 4))},
        128: {"fwd": (_L(16, 4), _L(16, 8), _L(32, 8)),
              "bwd": (_L(16, 4), _L(16, 8), _L(32, 8))},
    },
}  # fmt: skip
# Under TRITON_INTERPRET=1 (no GPU benchmarker) one block of up to 512 rows, no bigger than the problem needs.
_INTERPRETER_ROWS = 512
_OVERRIDES = LaunchOverrides(_STEPS)  # launches forced per step (tests: force_launch)

# Dispatch policy (stgcma_fast.ops.dispatch): on CPU this kernel runs only in the interpreter, which tests use by
# forcing the backend; on CUDA it is picked automatically once its GPU parity tests have passed there.
AUTO_DEVICES = ("cuda",)
GPU_VALIDATED = False  # set True after `pytest -m gpu tests/kernels/test_temporal_attention.py` passes on a GPU


def _config(launch: _Launch) -> triton.Config:
    return triton.Config({"ROWS": launch.rows}, num_warps=launch.num_warps, num_stages=launch.num_stages)


def _dot_class(dot_precision: str) -> str:
    return "fp32" if dot_precision == "ieee" else "16-bit"


def launch_candidates(step: str, M: int, N: int, hd: int, dot_precision: str) -> tuple[_Launch, ...]:
    """What the kernel of ``step`` ("fwd", "bwd") may run for M frames, N tokens, head dim ``hd`` and the kernels'
    ``DOT_PRECISION`` ("ieee" for fp32 qkv): the forced launch, the interpreter's one launch, or the GPU candidates
    whose blocks hold all BLOCK_M frames of a token (the first only when autotuning is off)."""
    _OVERRIDES.check_step(step)
    block_m = _blocks(M, hd)["BLOCK_M"]
    forced = _OVERRIDES.get(step)
    if forced is not None and forced.rows < block_m:  # a block must hold every frame of its tokens
        raise ValueError(f"forced {step} launch of {forced.rows} rows: fewer than the {block_m}-frame block")
    interpreter = _Launch(min(_INTERPRETER_ROWS, max(16, block_m * triton.next_power_of_2(N))), 4)
    return _OVERRIDES.candidates(step, _interpreted(), interpreter, lambda: _gpu_candidates(step, M, hd, dot_precision))


def _gpu_candidates(step: str, M: int, hd: int, dot_precision: str) -> tuple[_Launch, ...]:
    """The GPU candidates of ``step`` whose blocks hold all BLOCK_M frames of a token."""
    blocks = _blocks(M, hd)
    block_m = blocks["BLOCK_M"]
    launches = _GPU_LAUNCH[_dot_class(dot_precision)][blocks["BLOCK_HD"]][step]
    return tuple(c for c in launches if c.rows >= block_m) or (_Launch(max(16, block_m), 8),)


def gpu_launch_sets(dtype: torch.dtype, *, M: int, hd: int, **dims: int) -> list[dict[str, _Launch]]:
    """The launch sets (step -> launch, for ``force_launch``) that together hold every GPU candidate for qkv of
    ``dtype``, M frames and head dim ``hd`` (:func:`stgcma_fast.kernels._common.launch_sets`); other ``dims`` (B, N,
    H) do not matter."""
    prec = ieee_dot_precision(dtype)
    return launch_sets({step: _gpu_candidates(step, M, hd, prec) for step in _STEPS})


def force_launch(**launches: _Launch):
    """Run the given steps (``fwd=``, ``bwd=``) with these launches inside the block, bypassing the autotuner (tests
    use it to check every GPU candidate); a context manager."""
    return _OVERRIDES.force(**launches)


def _autotune(step: str) -> dict:
    # The backward's bias-gradient partial sums are summed whole by the launcher: each timed run starts from zeros.
    reset = {"reset_to_zero": ["DBIAS_PART"]} if step == "bwd" else {}
    return autotune_kwargs(
        (launch for classes in _GPU_LAUNCH.values() for steps in classes.values() for launch in steps[step]), _config,
        ["M", "N", "BLOCK_M", "BLOCK_HD", "HAS_BIAS"],
        lambda args, meta: launch_candidates(step, args["M"], args["N"], args["hd"], meta["DOT_PRECISION"]), **reset)


# ----------------------------------------------------------------------------------------------------------------------
# Kernels
@triton.jit
def _tile(n_block, M, N, BLOCK_M: tl.constexpr, ROWS: tl.constexpr):
    """Token index, frame index and validity of the ROWS (token, frame) rows of token block n_block."""
    offs = tl.arange(0, ROWS)
    tok = offs // BLOCK_M  # token within the block
    frame = (offs % BLOCK_M).to(tl.int64)
    n = n_block * (ROWS // BLOCK_M) + tok  # ROWS // BLOCK_M tokens per block
    return tok, frame, n, (n < N) & (frame < M)


@triton.jit
def _bias_tile(BIAS, h, frame, keep, M):
    """bias[h, frame of the query row, frame of the key column] on the kept entries, 0 elsewhere: (ROWS, ROWS)."""
    return tl.load(BIAS + h * M * M + frame[:, None] * M + frame[None, :], mask=keep, other=0.0)


@triton.autotune(**_autotune("fwd"))
@triton.jit
def _temporal_attention_fwd_kernel(
    QKV,  # (B, M, N, 3 * H * hd), strides (stride_b, stride_m, stride_n, 1); q | k | v of head h at h*hd, (H+h)*hd, ..
    OUT,  # (B, M, N, H * hd) contiguous output, dtype of QKV
    LSE,  # (B, H, N, M) contiguous ACC dtype: natural-log log-sum-exp of each query row's scaled scores
    BIAS,  # (H, M, M) contiguous additive score bias (frame i vs frame j), read only if HAS_BIAS
    M,
    N,
    H,
    hd,
    stride_b,
    stride_m,
    stride_n,
    qk_scale,  # softmax scale * log2(e)
    ACC: tl.constexpr,  # tl.float32 (tl.float64 for fp64 inputs under the interpreter)
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 operands (no TF32), the default "tf32" (unused) for 16-bit ones
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_HD: tl.constexpr,
    ROWS: tl.constexpr,
):
    n_block = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    tok, frame, n, row_ok = _tile(n_block, M, N, BLOCK_M, ROWS)
    d = tl.arange(0, BLOCK_HD)
    mask = row_ok[:, None] & (d < hd)[None, :]

    q_ptr = QKV + (b * stride_b + frame * stride_m + n * stride_n)[:, None] + (h * hd + d)[None, :]
    q = tl.load(q_ptr, mask=mask, other=0.0)
    k = tl.load(q_ptr + H * hd, mask=mask, other=0.0)
    v = tl.load(q_ptr + 2 * H * hd, mask=mask, other=0.0)

    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION).to(ACC)  # (ROWS, ROWS), block-diagonal part is used
    keep = (tok[:, None] == tok[None, :]) & (frame < M)[None, :]  # every row keeps >= 1 key (M >= 1): no NaN
    s = s * qk_scale
    if HAS_BIAS:
        s += _bias_tile(BIAS, h, frame, keep & (frame < M)[:, None], M).to(ACC) * _LOG2E
    s = tl.where(keep, s, float("-inf"))
    s_max = tl.max(s, axis=1)
    p = tl.exp2(s - s_max[:, None])
    denom = tl.sum(p, axis=1)
    o = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION).to(ACC) / denom[:, None]

    out_ptr = OUT + ((b * M + frame) * N + n)[:, None] * (H * hd) + (h * hd + d)[None, :]
    tl.store(out_ptr, o.to(OUT.dtype.element_ty), mask=mask)
    tl.store(LSE + ((b * H + h) * N + n) * M + frame, (s_max + tl.log2(denom)) * _LN2, mask=row_ok)


@triton.autotune(**_autotune("bwd"))
@triton.jit
def _temporal_attention_bwd_kernel(
    QKV,  # (B, M, N, 3 * H * hd), strides (stride_b, stride_m, stride_n, 1)
    OUT,  # (B, M, N, H * hd) contiguous forward output
    DOUT,  # (B, M, N, H * hd), strides (stride_ob, stride_om, stride_on, 1): upstream gradient
    LSE,  # (B, H, N, M) contiguous ACC dtype, saved by the forward
    DQKV,  # (B, M, N, 3 * H * hd) contiguous output: dq | dk | dv laid out like qkv
    BIAS,  # (H, M, M) contiguous additive score bias, read only if HAS_BIAS
    DBIAS_PART,  # (B, token blocks, H, BLOCK_M, BLOCK_M) zeroed ACC dtype: this program's sum of dS over its tokens
    M,
    N,
    H,
    hd,
    stride_b,
    stride_m,
    stride_n,
    stride_ob,
    stride_om,
    stride_on,
    sm_scale,
    qk_scale,  # sm_scale * log2(e)
    ACC: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_HD: tl.constexpr,
    ROWS: tl.constexpr,
):
    n_block = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    tok, frame, n, row_ok = _tile(n_block, M, N, BLOCK_M, ROWS)
    d = tl.arange(0, BLOCK_HD)
    mask = row_ok[:, None] & (d < hd)[None, :]

    q_ptr = QKV + (b * stride_b + frame * stride_m + n * stride_n)[:, None] + (h * hd + d)[None, :]
    q = tl.load(q_ptr, mask=mask, other=0.0)
    k = tl.load(q_ptr + H * hd, mask=mask, other=0.0)
    v = tl.load(q_ptr + 2 * H * hd, mask=mask, other=0.0)
    o_off = ((b * M + frame) * N + n)[:, None] * (H * hd) + (h * hd + d)[None, :]
    o = tl.load(OUT + o_off, mask=mask, other=0.0)
    do = tl.load(DOUT + (b * stride_ob + frame * stride_om + n * stride_on)[:, None] + (h * hd + d)[None, :],
                 mask=mask, other=0.0)
    lse = tl.load(LSE + ((b * H + h) * N + n) * M + frame, mask=row_ok, other=0.0)

    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION).to(ACC)
    keep = (tok[:, None] == tok[None, :]) & (frame < M)[None, :] & row_ok[:, None]
    s = s * qk_scale
    if HAS_BIAS:
        s += _bias_tile(BIAS, h, frame, keep, M).to(ACC) * _LOG2E
    p = tl.exp2(tl.where(keep, s - (lse * _LOG2E)[:, None], float("-inf")))  # (ROWS, ROWS) softmax
    dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION).to(ACC)
    delta = tl.sum(o.to(ACC) * do.to(ACC), axis=1)
    ds_acc = p * (dp - delta[:, None])  # dL/dscores (without sm_scale) = dL/dbias; 0 off the kept blocks
    if HAS_BIAS:  # sum the block diagonal's (BLOCK_M, BLOCK_M) blocks over this program's tokens
        TOKENS: tl.constexpr = ROWS // BLOCK_M
        part = tl.sum(tl.reshape(ds_acc, (ROWS, TOKENS, BLOCK_M)), axis=1)  # (ROWS, BLOCK_M): over key tokens
        part = tl.sum(tl.reshape(part, (TOKENS, BLOCK_M, BLOCK_M)), axis=0)  # (BLOCK_M, BLOCK_M): over query tokens
        fi = tl.arange(0, BLOCK_M)
        base = ((b * tl.num_programs(0) + n_block) * H + h) * BLOCK_M * BLOCK_M
        tl.store(DBIAS_PART + base + fi[:, None] * BLOCK_M + fi[None, :], part)
    ds = ds_acc.to(q.dtype)
    dq = tl.dot(ds, k, input_precision=DOT_PRECISION).to(ACC) * sm_scale
    dk = tl.dot(tl.trans(ds), q, input_precision=DOT_PRECISION).to(ACC) * sm_scale

    dq_ptr = DQKV + ((b * M + frame) * N + n)[:, None] * (3 * H * hd) + (h * hd + d)[None, :]
    tl.store(dq_ptr, dq.to(DQKV.dtype.element_ty), mask=mask)
    tl.store(dq_ptr + H * hd, dk.to(DQKV.dtype.element_ty), mask=mask)
    tl.store(dq_ptr + 2 * H * hd, dv.to(DQKV.dtype.element_ty), mask=mask)


_KERNELS = {"fwd": _temporal_attention_fwd_kernel, "bwd": _temporal_attention_bwd_kernel}
_OVERRIDES.kernels.update(_KERNELS)


# ----------------------------------------------------------------------------------------------------------------------
# Launchers
def _interpreted() -> bool:
    """True when this module's kernels were defined under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    return interpreted(_temporal_attention_fwd_kernel)


def _blocks(M: int, hd: int) -> dict[str, int]:
    return {"BLOCK_M": triton.next_power_of_2(M), "BLOCK_HD": max(16, triton.next_power_of_2(hd))}


def _grid(B: int, N: int, H: int, block_m: int):
    return lambda meta: (triton.cdiv(N, meta["ROWS"] // block_m), H, B)


def temporal_attention_forward(
    qkv: torch.Tensor,  # (B, M, N, 3 * H * hd)
    num_heads: int,
    scale: float,
    bias: torch.Tensor | None = None,  # (H, M, M) additive score bias, or None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the attention output (B, M, N, H * hd) in qkv's dtype and the row log-sum-exp (B, H, N, M) fp32."""
    reason = supports(qkv, num_heads, scale, bias)
    if reason is not None:
        raise ValueError(f"temporal_attention Triton kernel: {reason}")
    B, M, N, C3 = qkv.shape
    H, hd = num_heads, C3 // (3 * num_heads)
    acc_torch, acc_tl = acc_dtypes(qkv.dtype)
    out = torch.empty((B, M, N, H * hd), dtype=qkv.dtype, device=qkv.device)
    lse = torch.empty((B, H, N, M), dtype=acc_torch, device=qkv.device)
    if out.numel() == 0:
        return out, lse
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    blocks = _blocks(M, hd)
    bias_arg = lse if bias is None else bias.contiguous()  # a dummy pointer when there is no bias (never read)
    _temporal_attention_fwd_kernel[_grid(B, N, H, blocks["BLOCK_M"])](
        qkv, out, lse, bias_arg, M, N, H, hd, qkv.stride(0), qkv.stride(1), qkv.stride(2),
        float(scale) * _LOG2E.value, ACC=acc_tl, DOT_PRECISION=ieee_dot_precision(qkv.dtype),
        HAS_BIAS=bias is not None, **blocks,
    )
    return out, lse


def temporal_attention_backward(
    grad_out: torch.Tensor,  # (B, M, N, H * hd)
    qkv: torch.Tensor,  # (B, M, N, 3 * H * hd)
    out: torch.Tensor,  # (B, M, N, H * hd) forward output
    lse: torch.Tensor,  # (B, H, N, M) saved by temporal_attention_forward
    num_heads: int,
    scale: float,
    bias: torch.Tensor | None = None,  # (H, M, M) the forward's additive score bias, or None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the loss with respect to qkv, (B, M, N, 3 * H * hd) in qkv's dtype; with a ``bias``, the pair
    (dqkv, dbias): dbias (H, M, M) in bias's dtype is the sum over (batch, token) of dL/dscores, accumulated in fp32
    (fp64 for fp64) from one partial sum per program."""
    B, M, N, C3 = qkv.shape
    H = num_heads
    hd = C3 // (3 * H)
    for name, t, shape in [("grad_out", grad_out, (B, M, N, H * hd)), ("out", out, (B, M, N, H * hd)),
                           ("lse", lse, (B, H, N, M))]:
        if tuple(t.shape) != shape:
            raise ValueError(f"temporal_attention backward: expected {name} of shape {shape}, got {tuple(t.shape)}")
        if t.device != qkv.device:
            raise ValueError(f"temporal_attention backward: expected {name} on {qkv.device}, got {t.device}")
    acc_torch, acc_tl = acc_dtypes(qkv.dtype)
    if lse.dtype != acc_torch:
        raise ValueError(f"temporal_attention backward: expected lse of dtype {acc_torch}, got {lse.dtype}")
    if bias is not None and (tuple(bias.shape) != (H, M, M) or bias.device != qkv.device):
        raise ValueError(f"temporal_attention backward: expected bias of shape {(H, M, M)} on {qkv.device}, got "
                         f"{tuple(bias.shape)} on {bias.device}")
    dqkv = torch.empty((B, M, N, C3), dtype=qkv.dtype, device=qkv.device)
    if dqkv.numel() == 0:
        return dqkv if bias is None else (dqkv, torch.zeros_like(bias))
    qkv = qkv if qkv.stride(-1) == 1 else qkv.contiguous()
    grad_out = grad_out.to(qkv.dtype)
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    out, lse = out.contiguous(), lse.contiguous()
    blocks = _blocks(M, hd)
    block_m = blocks["BLOCK_M"]
    if bias is None:  # dummy pointers, never read or written; DBIAS_PART its own: the autotuner zeroes it
        bias_arg, dbias_part = lse, torch.zeros(1, dtype=acc_torch, device=qkv.device)
    else:
        bias_arg = bias.contiguous()
        # One (BLOCK_M, BLOCK_M) partial sum per program, for the launch with the most programs (the fewest rows)
        # the autotuner may run; zeroed, so the rows a launch with fewer programs leaves add nothing.
        fewest_tokens = min(c.rows for c in launch_candidates("bwd", M, N, hd, ieee_dot_precision(qkv.dtype)))
        blocks_n = triton.cdiv(N, max(1, fewest_tokens // block_m))
        dbias_part = torch.zeros((B * blocks_n, H, block_m, block_m), dtype=acc_torch, device=qkv.device)
    _temporal_attention_bwd_kernel[_grid(B, N, H, block_m)](
        qkv, out, grad_out, lse, dqkv, bias_arg, dbias_part, M, N, H, hd,
        qkv.stride(0), qkv.stride(1), qkv.stride(2), grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        float(scale), float(scale) * _LOG2E.value, ACC=acc_tl, DOT_PRECISION=ieee_dot_precision(qkv.dtype),
        HAS_BIAS=bias is not None, **blocks,
    )
    if bias is None:
        return dqkv
    return dqkv, dbias_part.sum(0)[:, :M, :M].to(bias.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Autograd
class TemporalAttentionFunction(torch.autograd.Function):
    """Eager autograd wrapper around the launchers (the custom op below is the torch.compile-friendly path)."""

    @staticmethod
    def forward(ctx, qkv, num_heads, scale, bias=None):
        out, lse = temporal_attention_forward(qkv, num_heads, scale, bias)
        ctx.save_for_backward(qkv, out, lse, bias)
        ctx.num_heads, ctx.scale = num_heads, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qkv, out, lse, bias = ctx.saved_tensors
        if bias is None:
            return temporal_attention_backward(grad_out, qkv, out, lse, ctx.num_heads, ctx.scale), None, None, None
        dqkv, dbias = temporal_attention_backward(grad_out, qkv, out, lse, ctx.num_heads, ctx.scale, bias)
        return dqkv, None, None, (dbias if ctx.needs_input_grad[3] else None)


# ----------------------------------------------------------------------------------------------------------------------
# torch.library registration: custom_op (not triton_op) so that torch.compile(fullgraph=True) traces it on CPU too.
@torch.library.custom_op("stgcma_fast::temporal_attention", mutates_args=())
def _temporal_attention_op(qkv: torch.Tensor, num_heads: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return temporal_attention_forward(qkv, num_heads, scale)


@_temporal_attention_op.register_fake
def _(qkv, num_heads, scale):
    problem = _shape_problem(qkv, num_heads)
    if problem is not None:
        raise ValueError(f"temporal_attention Triton kernel: {problem}")
    B, M, N, C3 = qkv.shape
    return qkv.new_empty((B, M, N, C3 // 3)), qkv.new_empty((B, num_heads, N, M), dtype=acc_dtypes(qkv.dtype)[0])


@torch.library.custom_op("stgcma_fast::temporal_attention_backward", mutates_args=())
def _temporal_attention_backward_op(
    grad_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, num_heads: int, scale: float
) -> torch.Tensor:
    return temporal_attention_backward(grad_out, qkv, out, lse, num_heads, scale)


@_temporal_attention_backward_op.register_fake
def _(grad_out, qkv, out, lse, num_heads, scale):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    qkv, num_heads, scale = inputs
    ctx.save_for_backward(qkv, *output)
    ctx.num_heads, ctx.scale = num_heads, scale


def _backward(ctx, grad_out, _grad_lse):
    qkv, out, lse = ctx.saved_tensors
    dqkv = torch.ops.stgcma_fast.temporal_attention_backward(grad_out, qkv, out, lse, ctx.num_heads, ctx.scale)
    return dqkv, None, None


_temporal_attention_op.register_autograd(_backward, setup_context=_setup_context)


# The bias variant: its own pair of ops, so that the no-bias ops (and their schemas) stay as they were.
@torch.library.custom_op("stgcma_fast::temporal_attention_bias", mutates_args=())
def _temporal_attention_bias_op(qkv: torch.Tensor, bias: torch.Tensor, num_heads: int,
                                scale: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    return temporal_attention_forward(qkv, num_heads, scale, bias)


@_temporal_attention_bias_op.register_fake
def _(qkv, bias, num_heads, scale):
    problem = _shape_problem(qkv, num_heads, bias)
    if problem is not None:
        raise ValueError(f"temporal_attention Triton kernel: {problem}")
    B, M, N, C3 = qkv.shape
    return qkv.new_empty((B, M, N, C3 // 3)), qkv.new_empty((B, num_heads, N, M), dtype=acc_dtypes(qkv.dtype)[0])


@torch.library.custom_op("stgcma_fast::temporal_attention_bias_backward", mutates_args=())
def _temporal_attention_bias_backward_op(
    grad_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, bias: torch.Tensor,
    num_heads: int, scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return temporal_attention_backward(grad_out, qkv, out, lse, num_heads, scale, bias)


@_temporal_attention_bias_backward_op.register_fake
def _(grad_out, qkv, out, lse, bias, num_heads, scale):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format), torch.empty_like(bias)


def _setup_context_bias(ctx, inputs, output):
    qkv, bias, num_heads, scale = inputs
    ctx.save_for_backward(qkv, *output, bias)
    ctx.num_heads, ctx.scale = num_heads, scale


def _backward_bias(ctx, grad_out, _grad_lse):
    qkv, out, lse, bias = ctx.saved_tensors
    dqkv, dbias = torch.ops.stgcma_fast.temporal_attention_bias_backward(grad_out, qkv, out, lse, bias,
                                                                         ctx.num_heads, ctx.scale)  # fmt: skip
    return dqkv, dbias, None, None


_temporal_attention_bias_op.register_autograd(_backward_bias, setup_context=_setup_context_bias)


@register_flop_formula(torch.ops.stgcma_fast.temporal_attention_bias)
def _(qkv, *args, out_shape=None, **kwargs) -> int:
    B, M, N, C3 = qkv
    return temporal_attention_flops(B, M, N, C3 // 3)


@register_flop_formula(torch.ops.stgcma_fast.temporal_attention_bias_backward)
def _(grad_out, qkv, *args, out_shape=None, **kwargs) -> int:
    B, M, N, C3 = qkv
    return temporal_attention_flops(B, M, N, C3 // 3, backward=True)


@register_flop_formula(torch.ops.stgcma_fast.temporal_attention)
def _(qkv, *args, out_shape=None, **kwargs) -> int:
    B, M, N, C3 = qkv
    return temporal_attention_flops(B, M, N, C3 // 3)


@register_flop_formula(torch.ops.stgcma_fast.temporal_attention_backward)
def _(grad_out, qkv, *args, out_shape=None, **kwargs) -> int:
    B, M, N, C3 = qkv
    return temporal_attention_flops(B, M, N, C3 // 3, backward=True)


def temporal_attention(
    qkv: torch.Tensor,  # (B, M, N, 3 * H * hd) output of the frozen qkv projection, viewable as (B, M, N, 3, H, hd)
    num_heads: int,
    scale: float,
    bias: torch.Tensor | None = None,  # (H, M, M) additive score bias (frame i vs frame j), or None
) -> torch.Tensor:
    """Self-attention across the M frames, independently for every (batch, token, head).

    Same contract as :func:`stgcma_fast.ops.torch_ops.temporal_attention`. Returns (B, M, N, H * hd).
    """
    if eager_autograd():
        if bias is None:
            return TemporalAttentionFunction.apply(qkv, num_heads, float(scale))
        return TemporalAttentionFunction.apply(qkv, num_heads, float(scale), bias)
    if bias is None:
        return torch.ops.stgcma_fast.temporal_attention(qkv, num_heads, float(scale))[0]
    return torch.ops.stgcma_fast.temporal_attention_bias(qkv, bias, num_heads, float(scale))[0]


# ----------------------------------------------------------------------------------------------------------------------
# Capabilities
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INTERPRETER_DTYPES = (torch.float32, torch.float16, torch.float64)  # bf16 tl.dot is wrong there; fp64 for gradcheck
MAX_FRAMES = 32
MAX_HEAD_DIM = 128

# (atol, rtol) against a float64 reference, applied after dividing both tensors by max(1, max |reference|).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (2e-6, 2e-5),
    torch.float16: (2e-3, 4e-3),
    torch.bfloat16: (1.6e-2, 3.2e-2),
}


def tolerance(dtype: torch.dtype, device: torch.device | str) -> tuple[float, float]:
    """(atol, rtol) for results computed in ``dtype`` on ``device``: ``TOLERANCES[dtype]`` on every device (fp32
    dots run as "ieee" everywhere, ``ieee_dot_precision``)."""
    return TOLERANCES[dtype]


def _shape_problem(qkv: torch.Tensor, num_heads: int, bias: torch.Tensor | None = None) -> str | None:
    if qkv.dim() != 4:
        return f"expected qkv of shape (B, M, N, 3 * H * hd), got {tuple(qkv.shape)}"
    if num_heads < 1:
        return f"expected num_heads >= 1, got {num_heads}"
    B, M, N, C3 = qkv.shape
    if C3 == 0 or C3 % (3 * num_heads) != 0:
        return f"expected qkv's last dim divisible by 3 * num_heads = {3 * num_heads}, got {C3}"
    hd = C3 // (3 * num_heads)
    if M > MAX_FRAMES:
        return f"M={M} > {MAX_FRAMES} frames (the kernel keeps all frames of a sequence in one block)"
    if hd > MAX_HEAD_DIM:
        return f"head dim {hd} > {MAX_HEAD_DIM}"
    if bias is not None:
        if tuple(bias.shape) != (num_heads, M, M):
            return f"expected bias of shape (H, M, M) = {(num_heads, M, M)}, got {tuple(bias.shape)}"
        if bias.device != qkv.device:
            return f"expected bias on {qkv.device} (the device of qkv), got {bias.device}"
        allowed = (qkv.dtype,) if qkv.dtype == torch.float64 else (qkv.dtype, torch.float32)
        if bias.dtype not in allowed:
            return f"expected bias of dtype {' or '.join(str(d) for d in dict.fromkeys(allowed))}, got {bias.dtype}"
    return None


def supports(qkv: torch.Tensor, num_heads: int, scale: float, bias: torch.Tensor | None = None) -> str | None:
    """None if the Triton kernel accepts these inputs, else a human-readable reason (same arguments as the op)."""
    problem = _shape_problem(qkv, num_heads, bias)
    if problem is not None:
        return problem
    if not math.isfinite(float(scale)):
        return f"expected a finite scale, got {scale}"
    return device_dtype_refusal(qkv.device, qkv.dtype, _interpreted(), DTYPES, INTERPRETER_DTYPES)
