"""Temporal-attention Triton kernel against ``stgcma_fast.ops.torch_ops.temporal_attention`` in float64.

Without a GPU the kernels run under TRITON_INTERPRET=1 (set by tests/conftest.py) on CPU tensors: fp32 and fp16
(the interpreter computes bf16 tl.dot wrong, so bf16 is tested on CUDA only). The output AND the gradient of qkv
(dq, dk, dv in qkv's layout) are compared, with the same random upstream gradient.

Comparison: ``|actual - expected| <= atol * scale + rtol * |expected|`` with ``scale = max(1, max|expected|)`` of each
tensor. (atol, rtol) come from ``temporal_attention.TOLERANCES``. Max scaled errors observed over this file:
fp32 5e-7 (1e-6 in the large-score case), fp16 5e-4, fp64 2.5e-15.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from stgcma_fast.kernels import temporal_attention as kernel
from stgcma_fast.ops import torch_ops
from stgcma_fast.testing import assert_close

from . import swin_shapes
from .compile_check import KernelSpec, compile_in_subprocess

CPU_DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]

# (B, M, N, H, hd): every value of M in {1, 10, 16}, N in {5, 49}, H in {2, 4}, hd in {16, 32} appears, and every
# pair of values of (M, N), (M, H), (M, hd); plus the limits M = 32 and a masked head dim (24 -> 32 block).
SHAPES = [
    (2, 10, 49, 4, 32),
    (1, 10, 5, 2, 16),
    (1, 10, 49, 2, 16),
    (1, 1, 5, 4, 32),
    (2, 1, 49, 2, 16),
    (1, 16, 5, 4, 16),
    (1, 16, 49, 2, 32),
    (1, 32, 3, 2, 24),
]


def scaled_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).abs().max()) / max(1.0, float(expected.abs().max()))


def check(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str) -> float:
    """Scale-aware closeness (see module docstring); returns the max scaled abs error."""
    assert actual is not None, f"{name}: missing gradient"
    atol, rtol = kernel.TOLERANCES[dtype]
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    scale = max(1.0, float(expected.abs().max()))
    assert_close(actual / scale, expected / scale, atol, rtol, name=f"{name} (divided by {scale:.3g})")
    return scaled_err(actual, expected)


def compare(qkv: torch.Tensor, H: int, scale: float, dtype: torch.dtype, fn=kernel.temporal_attention,
            grad_out: torch.Tensor | None = None, tol_dtype: torch.dtype | None = None) -> float:  # fmt: skip
    """Forward + backward of ``fn`` on ``qkv`` (any strides) vs the float64 reference on the same values."""
    B, M, N, C3 = qkv.shape
    if grad_out is None:
        gen = torch.Generator().manual_seed(1)
        grad_out = torch.randn(B, M, N, C3 // 3, generator=gen, dtype=torch.float64).to(dtype).to(qkv.device)
    leaf = qkv.detach().requires_grad_()
    out = fn(leaf, H, scale)
    (grad,) = torch.autograd.grad(out, leaf, grad_out)
    ref_leaf = qkv.detach().double().requires_grad_()
    ref = torch_ops.temporal_attention(ref_leaf, H, scale)
    (ref_grad,) = torch.autograd.grad(ref, ref_leaf, grad_out.double())
    assert out.dtype == qkv.dtype and out.shape == (B, M, N, C3 // 3) and grad.shape == qkv.shape
    tol_dtype = tol_dtype or dtype
    return max(check(out, ref, tol_dtype, "out"), check(grad, ref_grad, tol_dtype, "dqkv"))


def make_qkv(B, M, N, H, hd, dtype, device, std=1.0, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(B, M, N, 3 * H * hd, generator=gen, dtype=torch.float64) * std).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("B, M, N, H, hd", SHAPES)
def test_forward_backward_matches_fp64_reference(B, M, N, H, hd, dtype, device):
    compare(make_qkv(B, M, N, H, hd, dtype, device), H, hd**-0.5, dtype)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_large_scores_are_max_subtracted(dtype, device):
    """Scores ~ +-100 overflow exp() without the max subtraction; the result must stay finite and exact."""
    qkv = make_qkv(1, 10, 5, 2, 16, dtype, device, std=3.0)
    compare(qkv, 2, 1.0, dtype)


def test_strided_qkv_and_grad_out(device):
    """qkv and grad_out as strided views (token and frame strides padded, unit channel stride) are read in place."""
    B, M, N, H, hd = 2, 10, 5, 2, 16
    base = make_qkv(B, M + 1, N + 3, H + 1, hd, torch.float32, device)  # channels 3*(H+1)*hd > 3*H*hd
    qkv = base[:, 1:, 2:2 + N, : 3 * H * hd]
    assert qkv.stride(-1) == 1 and not qkv.is_contiguous()
    grad_base = torch.randn(B, M, N + 4, H * hd, dtype=torch.float32, device=device)
    compare(qkv, H, hd**-0.5, torch.float32, grad_out=grad_base[:, :, 4:])


def test_autograd_function_matches_custom_op(device):
    qkv = make_qkv(1, 10, 5, 2, 16, torch.float32, device)
    grad_out = torch.randn(1, 10, 5, 32, device=device)
    results = []
    custom_op = lambda *args: torch.ops.stgcma_fast.temporal_attention(*args)[0]  # noqa: E731 - what compile traces
    for fn in (custom_op, kernel.TemporalAttentionFunction.apply):
        leaf = qkv.clone().requires_grad_()
        out = fn(leaf, 2, 0.25)
        out.backward(grad_out)
        results.append((out.detach(), leaf.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_gradcheck_float64(device):
    """fp64 runs under the interpreter (tl.dot accepts float64), so the analytic backward can be gradchecked."""
    if not kernel._interpreted():
        pytest.skip("float64 is only supported under TRITON_INTERPRET=1 (GPU builds refuse it)")
    qkv = make_qkv(1, 3, 2, 2, 4, torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: kernel.temporal_attention(t, 2, 0.5), (qkv,), atol=1e-8, rtol=1e-6)


def test_torch_compile_fullgraph_no_graph_breaks(device):
    """The custom op (and its backward op) trace with fullgraph=True on CPU: one graph, same numbers as eager."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    B, M, N, H, hd = 1, 10, 5, 2, 16

    def temporal(x, w_qkv):  # the temporal step's attention: qkv projection, attention, a reduction
        qkv = torch.nn.functional.linear(x, w_qkv)
        return kernel.temporal_attention(qkv, H, hd**-0.5).square().mean()

    gen = torch.Generator().manual_seed(0)
    x64 = torch.randn(B, M, N, H * hd, generator=gen, dtype=torch.float64)
    w64 = torch.randn(3 * H * hd, H * hd, generator=gen, dtype=torch.float64) * (H * hd) ** -0.5
    x, w = x64.float().to(device).requires_grad_(), w64.float().to(device).requires_grad_()
    loss = torch.compile(temporal, fullgraph=True, backend=counter)(x, w)
    loss.backward()
    assert counter.frame_count == 1, f"expected one graph, got {counter.frame_count}"

    x64, w64 = x64.to(device).requires_grad_(), w64.to(device).requires_grad_()
    ref = torch_ops.temporal_attention(torch.nn.functional.linear(x64, w64), H, hd**-0.5).square().mean()
    ref.backward()
    check(loss, ref, torch.float32, "compiled loss")
    check(x.grad, x64.grad, torch.float32, "compiled dx")
    check(w.grad, w64.grad, torch.float32, "compiled dw_qkv")


# ----------------------------------------------------------------------------------------------------------------------
def _candidate_sets():
    """Per dot class and padded head dim (hd = 12, 24, 48, 80 run masked in 16- to 128-wide blocks), the launch sets
    that together hold every GPU candidate at M = 10 frames (``temporal_attention.gpu_launch_sets``)."""
    for dot_class, dtype in (("fp32", torch.float32), ("16-bit", torch.bfloat16)):
        for hd in (12, 24, 48, 80):
            for i, launches in enumerate(kernel.gpu_launch_sets(dtype, M=10, hd=hd)):
                yield pytest.param(dot_class, hd, launches, id=f"{dot_class}-hd{hd}-cand{i}")


@pytest.mark.parametrize("dot_class, hd, launches", list(_candidate_sets()))
def test_every_gpu_launch_candidate(dot_class, hd, launches, device):
    """Every launch the GPU autotuner may pick computes the same, in fp32 (ROWS changes how many tokens share a
    block, its masks and the grid, not arithmetic; the 16-bit candidates run in fp32 here too). M = 10 frames in a
    16-frame block, N = 13 tokens (a partial last block for ROWS > 16), a masked head dim."""
    B, M, N, H = 1, 10, 13, 2
    with kernel.force_launch(**launches):
        assert all(kernel.launch_candidates(step, M, N, hd, "ieee") == (c,) for step, c in launches.items())
        compare(make_qkv(B, M, N, H, hd, torch.float32, device), H, hd**-0.5, torch.float32)
        for step, c in launches.items():  # what the autotuners actually ran
            ran = list(kernel._KERNELS[step].cache.values())
            assert ran and all(cfg.all_kwargs() == kernel._config(c).all_kwargs() for cfg in ran), (step, ran)


def test_launch_candidates(monkeypatch):
    """The interpreter runs one launch, the GPU the candidates of the dot class and padded head dim that hold all
    frames of a token (the first only with autotuning off); force_launch overrides both, clears the tuning caches and
    restores them."""
    if kernel._interpreted():
        assert kernel.launch_candidates("fwd", 10, 5, 64, "ieee") == (kernel._Launch(128, 4),)  # 16 frames x 8 tokens
        assert kernel.launch_candidates("bwd", 10, 197, 64, "ieee") == (kernel._Launch(512, 4),)
    monkeypatch.setattr(kernel, "_interpreted", lambda: False)  # as if compiled for a GPU
    monkeypatch.delenv("STGCMA_FAST_AUTOTUNE", raising=False)
    table = kernel._GPU_LAUNCH
    assert kernel.launch_candidates("bwd", 10, 197, 64, "tf32") == table["16-bit"][64]["bwd"]
    assert kernel.launch_candidates("fwd", 10, 257, 48, "ieee") == table["fp32"][64]["fwd"]
    for dot_class, tables in table.items():  # every list: distinct launches, powers of two, tl.dot sizes
        for block_hd, steps in tables.items():
            for step, launches in steps.items():
                assert len(set(launches)) == len(launches) >= 2, (dot_class, block_hd, step)
                assert all(c.rows >= 16 and c.rows & (c.rows - 1) == 0 for c in launches), launches
            for M in (1, 10, 17, 32):  # a block holds all frames of a token: ROWS >= BLOCK_M
                for dot_prec in ("ieee", "tf32"):
                    got = kernel.launch_candidates("bwd", M, 197, block_hd, dot_prec)
                    assert got and all(c.rows >= triton.next_power_of_2(M) for c in got), (M, block_hd, got)
    monkeypatch.setenv("STGCMA_FAST_AUTOTUNE", "0")
    assert kernel.launch_candidates("bwd", 10, 197, 64, "tf32") == table["16-bit"][64]["bwd"][:1]
    forced = kernel._Launch(16, 2)
    kernel._KERNELS["fwd"].cache[("stale",)] = kernel._config(forced)
    with kernel.force_launch(bwd=forced):
        assert not kernel._KERNELS["fwd"].cache, "force_launch must clear the autotuners' caches"
        assert kernel.launch_candidates("bwd", 10, 197, 64, "tf32") == (forced,)
        assert kernel.launch_candidates("fwd", 10, 197, 64, "tf32") == table["16-bit"][64]["fwd"][:1]
        with pytest.raises(ValueError, match="16 rows: fewer than the 32-frame block"):
            kernel.launch_candidates("bwd", 17, 197, 64, "tf32")
    assert kernel.launch_candidates("bwd", 10, 197, 64, "tf32") == table["16-bit"][64]["bwd"][:1]
    with pytest.raises(ValueError, match="expected steps among"):
        with kernel.force_launch(backward=forced):
            pass
    with pytest.raises(ValueError, match="expected step in"):
        kernel.launch_candidates("backward", 10, 197, 64, "tf32")
    prune = kernel._KERNELS["fwd"].early_config_prune  # what the autotuner asks: the candidates as triton.Configs
    got = prune([], {"M": 10, "N": 197, "hd": 64}, BLOCK_M=16, BLOCK_HD=64, DOT_PRECISION="ieee")
    assert [c.all_kwargs() for c in got] == [kernel._config(c).all_kwargs() for c in table["fp32"][64]["fwd"][:1]]


# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, num_heads, reason",
    [
        ((1, 64, 5, 96), 2, "M=64 > 32"),
        ((1, 10, 5, 95), 2, "divisible by 3 * num_heads = 6, got 95"),
        ((10, 5, 96), 2, "expected qkv of shape (B, M, N, 3 * H * hd), got (10, 5, 96)"),
        ((1, 10, 5, 3 * 2 * 256), 2, "head dim 256 > 128"),
        ((1, 10, 5, 96), 0, "expected num_heads >= 1, got 0"),
    ],
)
def test_supports_refuses_and_launcher_raises(shape, num_heads, reason):
    qkv = torch.zeros(shape)
    got = kernel.supports(qkv, num_heads, 0.1)
    assert got is not None and reason in got, f"expected a reason containing {reason!r}, got {got!r}"
    with pytest.raises(ValueError, match="temporal_attention Triton kernel"):
        kernel.temporal_attention_forward(qkv, num_heads, 0.1)


def test_supports_dtype_and_device_policy(monkeypatch):
    qkv = torch.zeros(1, 10, 5, 96)
    assert "finite scale" in kernel.supports(qkv, 2, float("nan"))
    if kernel._interpreted():
        assert kernel.supports(qkv, 2, 0.1) is None
        assert "bfloat16 unsupported" in kernel.supports(qkv.bfloat16(), 2, 0.1)
        monkeypatch.setattr(kernel, "_interpreted", lambda: False)  # as if compiled for a GPU
    assert kernel.supports(qkv, 2, 0.1) == "device cpu needs TRITON_INTERPRET=1"
    if torch.cuda.is_available():
        assert kernel.supports(qkv.cuda(), 2, 0.1) is None
        assert kernel.supports(qkv.bfloat16().cuda(), 2, 0.1) is None
        assert "float64 unsupported" in kernel.supports(qkv.double().cuda(), 2, 0.1)


def test_backward_launcher_raises_on_mismatch():
    qkv = torch.zeros(1, 10, 5, 96)
    out, lse = torch.zeros(1, 10, 5, 32), torch.zeros(1, 2, 5, 10)
    with pytest.raises(ValueError, match=r"expected lse of shape \(1, 2, 5, 10\), got \(1, 2, 10, 5\)"):
        kernel.temporal_attention_backward(out, qkv, out, lse.transpose(2, 3), 2, 0.1)
    with pytest.raises(ValueError, match=r"expected grad_out of shape \(1, 10, 5, 32\)"):
        kernel.temporal_attention_backward(out[:, :, :4], qkv, out, lse, 2, 0.1)


# ----------------------------------------------------------------------------------------------------------------------
# Per test case (one process each): qkv's dtype, and (BLOCK_M, BLOCK_HD) -> whether every autotune candidate is compiled
# (the model shapes: M = 10 frames, hd = 64 in ViT-B/16 and ViT-L/14) or only the default (the first one kept).
# Swin: M = 10 frames of head dim 32 with the temporal relative-position bias (an fp32 table under autocast).
SM90_CASES = {
    "fp32": ("fp32", {(16, 64): True, (16, 128): False}, False),
    "bf16": ("bf16", {(16, 64): True, (16, 128): True, (1, 16): False}, False),
    "swin-bf16-bias": ("bf16", {(16, 32): True}, True),
    "swin-fp32-bias": ("fp32", {(16, 32): True}, True),
}


# The shape each (BLOCK_M, BLOCK_HD) is compiled at (the JIT specialises multiples of 16): the ViT-B/16 temporal
# attention of 8 clips x 10 frames for (16, 64), test_gpu_parity's shapes for the others.
SM90_SHAPES = {(16, 64): dict(B=8, M=10, N=197, H=12, hd=64), (16, 128): dict(B=1, M=32, N=50, H=2, hd=128),
               (1, 16): dict(B=3, M=1, N=7, H=2, hd=16),
               (16, 32): dict(B=2, M=10, N=3136, H=4, hd=32)}  # Swin-B stage 1  # fmt: skip


def _sm90_values(sig: dict[str, str], B: int, M: int, N: int, H: int, hd: int) -> dict[str, int | float]:
    """The scalar arguments the launchers pass for contiguous qkv (B, M, N, 3 H hd) and out / grad (B, M, N, H hd)."""
    D = H * hd
    values = {"M": M, "N": N, "H": H, "hd": hd, "stride_b": M * N * 3 * D, "stride_m": N * 3 * D, "stride_n": 3 * D,
              "stride_ob": M * N * D, "stride_om": N * D, "stride_on": D, "sm_scale": hd**-0.5,
              "qk_scale": hd**-0.5 * 1.4426950408889634}  # fmt: skip
    return {k: v for k, v in values.items() if k in sig}


def _sm90_specs(case: str) -> list[KernelSpec]:
    """Both kernels as the launchers specialise them for the launch candidates of ``SM90_CASES[case]``
    (``temporal_attention._GPU_LAUNCH``, pruned as for N = 197 tokens)."""
    dt, blocks, has_bias = SM90_CASES[case]
    prec = "ieee" if dt == "fp32" else "tf32"  # ieee_dot_precision(qkv's dtype)
    # strides fit in 32 bits at these shapes: the JIT passes them as i32 (it would pick i64 for larger values)
    fwd = {"QKV": f"*{dt}", "OUT": f"*{dt}", "LSE": "*fp32", "BIAS": "*fp32", "M": "i32", "N": "i32", "H": "i32",
           "hd": "i32", "stride_b": "i32", "stride_m": "i32", "stride_n": "i32", "qk_scale": "fp32"}  # fmt: skip
    bwd = {"QKV": f"*{dt}", "OUT": f"*{dt}", "DOUT": f"*{dt}", "LSE": "*fp32", "DQKV": f"*{dt}", "BIAS": "*fp32",
           "DBIAS_PART": "*fp32", "M": "i32",
           "N": "i32", "H": "i32", "hd": "i32", "stride_b": "i32", "stride_m": "i32", "stride_n": "i32",
           "stride_ob": "i32", "stride_om": "i32", "stride_on": "i32", "sm_scale": "fp32",
           "qk_scale": "fp32"}  # fmt: skip
    specs = []
    for (block_m, block_hd), every in blocks.items():
        for step, jit, sig in [("fwd", kernel._temporal_attention_fwd_kernel, fwd),
                               ("bwd", kernel._temporal_attention_bwd_kernel, bwd)]:  # fmt: skip
            launches = kernel.launch_candidates(step, block_m, 197, block_hd, prec)
            for c in launches if every else launches[:1]:
                consts = {"ACC": tl.float32, "DOT_PRECISION": prec, "HAS_BIAS": has_bias, "BLOCK_M": block_m,
                          "BLOCK_HD": block_hd, **kernel._config(c).kwargs}  # fmt: skip
                label = f"{dt}, BLOCK_M={block_m}, BLOCK_HD={block_hd}, ROWS={c.rows}, bias={has_bias}"
                specs.append(KernelSpec(jit, sig, consts, c.num_warps, c.num_stages, label=label,
                                        values=_sm90_values(sig, **SM90_SHAPES[(block_m, block_hd)])))
    return specs


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SM90_CASES))
def test_kernels_compile_for_sm90_without_a_gpu(case):
    """Both temporal-attention kernels compile to sm_90 cubins for every autotune candidate at the model shapes, which
    the interpreter cannot check (see compile_check); `python -m tests.kernels.compile_check
    tests.kernels.test_temporal_attention:_sm90_specs '["CASE"]'` prints their shared memory, registers and spills."""
    compile_in_subprocess(_sm90_specs, case)


# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize(
    "B, M, N, H, hd",
    [(4, 10, 197, 12, 64), (2, 10, 257, 16, 64), (2, 16, 49, 4, 32), (1, 32, 50, 2, 128), (2, 10, 49, 2, 80),
     (3, 1, 7, 2, 16)],  # fmt: skip
)
def test_gpu_parity(B, M, N, H, hd, dtype):
    compare(make_qkv(B, M, N, H, hd, dtype, "cuda"), H, hd**-0.5, dtype)


@pytest.mark.gpu
@pytest.mark.train_mix
def test_gpu_training_mix_parity():
    """bf16 q, k, v from the frozen qkv projection under bf16 autocast, at the ViT-B/16 temporal shape."""
    compare(make_qkv(4, 10, 197, 12, 64, torch.bfloat16, "cuda"), 12, 64**-0.5, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("dot_class, hd, launches", [
    pytest.param(*p.values, id=p.id, marks=[pytest.mark.train_mix] if p.values[0] == "16-bit" else [])
    for p in _candidate_sets()])  # fmt: skip
def test_gpu_every_launch_candidate(dot_class, hd, launches):
    """Every autotune candidate compiled for the real GPU (the parity tests above only see the candidate the autotuner
    picked): the 16-bit ones in bf16, the fp32 ones in fp32, at the B/16 temporal shape (M = 10, N = 197, H = 12)."""
    dtype = torch.float32 if dot_class == "fp32" else torch.bfloat16
    with kernel.force_launch(**launches):
        compare(make_qkv(2, 10, 197, 12, hd, dtype, "cuda"), 12, hd**-0.5, dtype)


@pytest.mark.gpu
def test_gpu_inductor_compile():
    torch._dynamo.reset()
    compiled = torch.compile(kernel.temporal_attention, fullgraph=True, backend="inductor")
    compare(make_qkv(2, 10, 197, 12, 64, torch.bfloat16, "cuda"), 12, 0.125, torch.bfloat16, fn=compiled)


# ----------------------------------------------------------------------------------------------------------------------
# Swin: the temporal relative-position bias (H, M, M), gathered from a (2M - 1, H) table, added to the scores.
def explicit_biased(qkv: torch.Tensor, H: int, scale: float, bias: torch.Tensor) -> torch.Tensor:
    """Plain fp64 math: softmax_j(scale * q_i . k_j + bias[h, i, j]) v_j per (batch, token, head)."""
    B, M, N, C3 = qkv.shape
    hd = C3 // (3 * H)
    q, k, v = qkv.view(B, M, N, 3, H, hd).unbind(3)
    s = torch.einsum("binhd,bjnhd->bnhij", q, k) * scale + bias
    return torch.einsum("bnhij,bjnhd->binhd", s.softmax(-1), v).reshape(B, M, N, H * hd)


def compare_biased(qkv: torch.Tensor, bias: torch.Tensor, H: int, dtype: torch.dtype, fn=kernel.temporal_attention,
                   seed: int = 1) -> float:  # fmt: skip
    """Output, dqkv and dbias of ``fn`` vs :func:`explicit_biased` in fp64 on the same values."""
    B, M, N, C3 = qkv.shape
    scale = (C3 // (3 * H)) ** -0.5
    gen = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(B, M, N, C3 // 3, generator=gen, dtype=torch.float64).to(dtype)
    leaves = qkv.detach().requires_grad_(), bias.detach().requires_grad_()
    out = fn(leaves[0], H, scale, leaves[1])
    grads = torch.autograd.grad(out, leaves, grad_out)
    refs = qkv.detach().double().requires_grad_(), bias.detach().double().requires_grad_()
    ref = explicit_biased(refs[0], H, scale, refs[1])
    ref_grads = torch.autograd.grad(ref, refs, grad_out.double())
    assert out.dtype == qkv.dtype and grads[1].dtype == bias.dtype and grads[1].shape == bias.shape
    return max(check(out, ref, dtype, "out"), check(grads[0], ref_grads[0], dtype, "dqkv"),
               check(grads[1], ref_grads[1], dtype, "dbias"))  # fmt: skip


def make_bias(H: int, M: int, dtype: torch.dtype, seed: int = 2) -> torch.Tensor:
    """(H, M, M) bias[h, i, j] = table[i - j + M - 1, h] from a random (2M - 1, H) table (std 1: large enough to
    change the softmax visibly; the model's table starts at std 0.02)."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(2 * M - 1, H, generator=gen, dtype=torch.float64)
    idx = torch.arange(M)[:, None] - torch.arange(M)[None, :] + M - 1
    return table[idx].permute(2, 0, 1).contiguous().to(dtype)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("H", swin_shapes.heads())
def test_bias_forward_backward_at_swin_shapes(H, dtype, device):
    """Every Swin stage's heads (B: 4 / 8 / 16 / 32, L: 6 / 12 / 24 / 48) of head dim 32, M = 10 frames, a few
    tokens; the bias an fp32 master table."""
    compare_biased(make_qkv(1, 10, 3, H, 32, dtype, device), make_bias(H, 10, torch.float32).to(device), H, dtype)


@pytest.mark.parametrize("B, M, N, H, hd", [(2, 10, 5, 6, 32), (1, 3, 7, 2, 24), (1, 16, 2, 2, 16), (2, 1, 3, 2, 16)])
def test_bias_odd_shapes_and_bias_in_the_input_dtype(B, M, N, H, hd, device):
    """Frames below / at a power of two, Swin-L's 6 heads, a masked head dim, the bias in qkv's dtype (fp16)."""
    compare_biased(make_qkv(B, M, N, H, hd, torch.float32, device), make_bias(H, M, torch.float32).to(device), H,
                   torch.float32)  # fmt: skip
    compare_biased(make_qkv(B, M, N, H, hd, torch.float16, device), make_bias(H, M, torch.float16).to(device), H,
                   torch.float16)  # fmt: skip


def test_bias_gradcheck_float64(device):
    qkv = make_qkv(1, 5, 3, 2, 16, torch.float64, device, std=0.5).requires_grad_()
    bias = make_bias(2, 5, torch.float64).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda q, b: kernel.temporal_attention(q, 2, 0.25, b), (qkv, bias))


def test_bias_custom_op_matches_autograd_function(device):
    """The torch.library op (what torch.compile and dispatch modes see) gives the autograd Function's numbers."""
    from torch.utils.flop_counter import FlopCounterMode

    qkv, bias = make_qkv(1, 10, 5, 4, 32, torch.float32, device), make_bias(4, 10, torch.float32).to(device)
    with FlopCounterMode(display=False) as counter:  # a dispatch mode: the public function takes the custom op
        compare_biased(qkv, bias, 4, torch.float32)
    flops = counter.get_flop_counts()["Global"]
    assert flops[torch.ops.stgcma_fast.temporal_attention_bias] > 0
    assert flops[torch.ops.stgcma_fast.temporal_attention_bias_backward] > 0


def test_bias_every_gpu_launch_candidate_at_swin_shapes(device):
    """Each GPU launch set of the Swin temporal step (M = 10, hd = 32) in the interpreter: the bias-gradient partial
    sums are sized for the launch with the most programs and summed over all of them."""
    qkv, bias = make_qkv(1, 10, 9, 4, 32, torch.float16, device), make_bias(4, 10, torch.float32).to(device)
    for launches in kernel.gpu_launch_sets(torch.float16, M=10, hd=32):
        with kernel.force_launch(**launches):
            compare_biased(qkv, bias, 4, torch.float16)


@pytest.mark.parametrize("bias, reason", [
    (torch.zeros(4, 10, 9), r"expected bias of shape \(H, M, M\) = \(4, 10, 10\), got \(4, 10, 9\)"),
    (torch.zeros(4, 10, 10, dtype=torch.float64), r"expected bias of dtype torch.float32, got torch.float64"),
])  # fmt: skip
def test_bias_that_does_not_fit_is_refused(bias, reason):
    qkv = make_qkv(1, 10, 2, 4, 32, torch.float32, "cpu")
    assert kernel.supports(qkv, 4, 0.1, bias) is not None
    with pytest.raises(ValueError, match=reason):
        kernel.temporal_attention_forward(qkv, 4, 0.1, bias)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("H, N", [(4, 3136), (8, 784), (16, 196), (32, 49), (48, 49)])
def test_gpu_bias_parity_at_swin_shapes(H, N, dtype):
    """Swin-B / Swin-L stages: 2 clips of 10 frames, head dim 32, the fp32 bias table of the training mix."""
    compare_biased(make_qkv(2, 10, N, H, 32, dtype, "cuda"), make_bias(H, 10, torch.float32).cuda(), H, dtype)


def test_selftest_checks_the_bias_path(device):
    """``stgcma-fast selftest`` runs the Swin shape with the bias (its GPU list has one): the check passes in the
    interpreter, and a kernel that ignores the bias fails it."""
    from stgcma_fast.ops import selftest

    shape = dict(B=1, M=10, N=3, H=4, hd=32, bias=1)
    assert any(s.get("bias") for s in selftest._GPU_SHAPES["temporal_attention"])
    assert selftest.check_op("temporal_attention", torch.float32, device, shape).passed
    ignores_bias = lambda qkv, num_heads, scale, bias: kernel.temporal_attention(qkv, num_heads, scale)  # noqa: E731
    check = selftest.check_op("temporal_attention", torch.float32, device, shape, fn=ignores_bias)
    assert not check.passed, check


def test_bias_torch_compile_fullgraph(device):
    """The bias variant traces as its custom op without graph breaks; gradients equal the eager ones."""
    torch._dynamo.reset()
    qkv, bias = make_qkv(1, 10, 3, 4, 32, torch.float32, device), make_bias(4, 10, torch.float32).to(device)

    def loss(q, b):
        return kernel.temporal_attention(q, 4, 0.2, b).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    leaves = qkv.clone().requires_grad_(), bias.clone().requires_grad_()
    got = torch.autograd.grad(compiled(*leaves), leaves)
    eager = qkv.clone().requires_grad_(), bias.clone().requires_grad_()
    want = torch.autograd.grad(loss(*eager), eager)
    for name, a, e in zip(("dqkv", "dbias"), got, want):
        assert_close(a, e, 1e-6, 1e-6, name=name)
