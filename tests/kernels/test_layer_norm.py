"""Fused frozen-LayerNorm Triton kernel against the plain-torch contract ``stgcma_fast.ops.torch_ops.layer_norm`` in
float64: the output (in the requested dtype) and the input gradient, with the same random upstream gradient.

Without a GPU the kernels run under TRITON_INTERPRET=1 (set by tests/conftest.py) on CPU tensors, in fp32, fp16 and
bf16 (no tl.dot here; the interpreter truncates to bf16 where a GPU rounds to nearest, within the bf16 tolerance).
The reference runs in fp64 on the values the kernel sees. Comparison: ``|actual - expected| <= atol * scale + rtol *
|expected|``, ``scale = max(1, max|expected|)``, (atol, rtol) from ``layer_norm.TOLERANCES`` in the row of the
tensor's dtype. Cases include the autocast mix: fp32 x and master weights with a bf16 / fp16 output.
"""

from __future__ import annotations

import pytest
import torch

from stgcma_fast.kernels import layer_norm as kernel
from stgcma_fast.ops import torch_ops

from . import swin_shapes
from .compile_check import KernelSpec, compile_in_subprocess

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
# (x dtype, weight / bias dtype, output dtype): each dtype alone, and autocast's fp32 residual with a 16-bit output
CPU_CASES = [pytest.param(F32, F32, F32, id="fp32"), pytest.param(F16, F16, F16, id="fp16"),
             pytest.param(BF16, BF16, BF16, id="bf16"), pytest.param(F32, F32, BF16, id="fp32-to-bf16"),
             pytest.param(F32, F32, F16, id="fp32-to-fp16"), pytest.param(BF16, F32, BF16, id="bf16-w32")]


def compare(shape, x_dtype, w_dtype, out_dtype, device, affine=(True, True), eps=1e-5, fn=kernel.layer_norm,
            mean=0.5, std=2.0) -> float:  # fmt: skip
    """Forward and backward of ``fn`` against the fp64 contract; returns the max scaled error."""
    g = torch.Generator().manual_seed(sum(shape))
    D = shape[-1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * std + mean).to(x_dtype)
    w = (1 + 0.5 * torch.randn(D, generator=g, dtype=torch.float64)).to(w_dtype) if affine[0] else None
    b = (0.5 * torch.randn(D, generator=g, dtype=torch.float64)).to(w_dtype) if affine[1] else None
    up = torch.randn(shape, generator=g, dtype=torch.float64).to(out_dtype)
    xk = x.clone().to(device).requires_grad_()
    out = fn(xk, None if w is None else w.to(device), None if b is None else b.to(device), eps, out_dtype)
    out.backward(up.to(device))
    xr = x.detach().double().requires_grad_()
    ref = torch_ops.layer_norm(xr, None if w is None else w.double(), None if b is None else b.double(), eps)
    ref.backward(up.double())
    assert out.dtype == out_dtype and xk.grad.dtype == x_dtype and out.shape == x.shape
    worst = 0.0
    for name, a, e, dtype in (("out", out, ref, out_dtype), ("grad x", xk.grad, xr.grad, x_dtype)):
        atol, rtol = kernel.TOLERANCES[dtype]
        a, e = a.detach().double().cpu(), e.detach()
        scale = max(1.0, float(e.abs().max()))
        diff = (a - e).abs()
        bad = ~(diff <= atol * scale + rtol * e.abs())
        assert not bool(bad.any()), (f"{name} ({x_dtype} -> {out_dtype}): {int(bad.sum())} of {bad.numel()} outside "
                                     f"tolerance, max abs err {float(diff.max()):.3e} (scale {scale:.3g})")
        worst = max(worst, float(diff.max()) / scale)
    return worst


@pytest.mark.parametrize("x_dtype, w_dtype, out_dtype", CPU_CASES)
@pytest.mark.parametrize("shape", [(1, 64), (49, 768), (2, 197, 96), (3, 5, 1024), (7, 1536), (4, 33)])
def test_forward_backward_matches_fp64_reference(shape, x_dtype, w_dtype, out_dtype, device):
    compare(shape, x_dtype, w_dtype, out_dtype, device)


@pytest.mark.parametrize("x_dtype, w_dtype, out_dtype", CPU_CASES)
@pytest.mark.parametrize("C", swin_shapes.widths() + [4 * 384, 4 * 768], ids=lambda c: f"C{c}")
def test_swin_stage_widths(C, x_dtype, w_dtype, out_dtype, device):
    """Every Swin stage width (the blocks' norms and the final norm) and the patch-merging norms over 4C."""
    compare((2, 7, C), x_dtype, w_dtype, out_dtype, device)


@pytest.mark.parametrize("affine", [(False, False), (True, False), (False, True)], ids=["none", "weight", "bias"])
def test_without_weight_or_bias(affine, device):
    compare((9, 200), F32, F32, F32, device, affine=affine)


def test_large_offsets_and_tiny_variance_stay_accurate(device):
    """A mean far from zero (the statistics subtract it before squaring) and rows with almost no variance."""
    compare((16, 768), F32, F32, F32, device, mean=1e3, std=1.0)
    compare((16, 128), F32, F32, F32, device, mean=0.0, std=1e-3, eps=1e-6)


def test_float64_gradcheck(device):
    if not kernel._interpreted():
        pytest.skip("float64 runs only under TRITON_INTERPRET=1 (GPU builds refuse it)")
    x = torch.randn(4, 19, dtype=torch.float64, device=device, requires_grad=True)
    w, b = torch.randn(19, dtype=torch.float64, device=device), torch.randn(19, dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(lambda t: kernel.layer_norm(t, w, b, 1e-5), (x,))


def test_strided_rows_and_empty_input(device):
    x = torch.randn(6, 2 * 48, device=device)[:, ::2]  # columns not contiguous: copied
    torch.testing.assert_close(kernel.layer_norm(x, None, None, 1e-5), torch_ops.layer_norm(x, None, None, 1e-5))
    y = torch.randn(5, 8, 48, device=device).transpose(0, 1)  # rows strided, columns contiguous
    torch.testing.assert_close(kernel.layer_norm(y, None, None, 1e-5), torch_ops.layer_norm(y, None, None, 1e-5))
    empty = torch.empty(0, 16, device=device, requires_grad=True)
    kernel.layer_norm(empty, None, None, 1e-5).sum().backward()
    assert empty.grad.shape == (0, 16)


def test_keeps_only_its_input_for_backward(device):
    from stgcma_fast.memory import saved_activation_bytes

    x = torch.randn(64, 96, device=device, requires_grad=True)
    w, b = torch.ones(96, device=device), torch.zeros(96, device=device)
    saved = saved_activation_bytes(lambda: kernel.layer_norm(x, w, b, 1e-5, torch.bfloat16), exclude=[w])
    assert saved == x.numel() * 4


def test_autograd_function_matches_custom_op(device):
    """Eager calls run LayerNormFunction (see eager_autograd); the custom op, which torch.compile traces, runs the
    same launchers: identical results."""
    x = torch.randn(7, 96, device=device, requires_grad=True)
    w, b = torch.randn(96, device=device), torch.randn(96, device=device)
    g = torch.randn(7, 96, device=device).to(BF16)
    outs = [fn(x, w, b, 1e-5, BF16) for fn in (kernel.layer_norm, torch.ops.stgcma_fast.layer_norm)]
    assert type(outs[0].grad_fn).__name__ == "LayerNormFunctionBackward"
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(*(torch.autograd.grad(y, x, g)[0] for y in outs))


def test_torch_compile_fullgraph_no_graph_breaks(device):
    torch._dynamo.reset()
    compiled = torch.compile(kernel.layer_norm, fullgraph=True, backend="aot_eager")
    compare((33, 64), F32, F32, BF16, device, fn=compiled)


@pytest.mark.parametrize("override, reason", [
    (dict(x=torch.zeros(4, 8, dtype=torch.int32)), "expected x of a floating dtype"),
    (dict(weight=torch.ones(7)), r"expected weight of shape \(8,\), got \(7,\)"),
    (dict(bias=torch.zeros(8, dtype=torch.float16)), "expected bias of dtype torch.float32 .x's. or torch.float32"),
    (dict(weight=torch.ones(8, requires_grad=True)), "weight requires grad: this kernel computes no weight"),
    (dict(eps=0.0), "expected eps > 0, got 0.0"),
    (dict(x=torch.zeros(2, 5000)), "D=5000 channels above 4096"),
])
def test_supports_refuses_and_launcher_raises(override, reason):
    args = dict(x=torch.zeros(4, 8), weight=torch.ones(8), bias=torch.zeros(8), eps=1e-5)
    if "x" in override and "weight" not in override:
        args.update(weight=None, bias=None)
    args.update(override)
    got = kernel.supports(**args)
    assert got is not None and __import__("re").search(reason, got), got
    with pytest.raises(ValueError, match=reason):
        kernel.layer_norm(**args)


def test_supports_dtype_and_device_policy(monkeypatch):
    monkeypatch.setattr(kernel, "_interpreted", lambda: False)
    assert kernel.supports(torch.zeros(3, 4), None, None, 1e-5) == "device cpu needs TRITON_INTERPRET=1"
    monkeypatch.setattr(kernel, "_interpreted", lambda: True)
    assert kernel.supports(torch.zeros(3, 4, dtype=torch.bfloat16), None, None, 1e-5) is None


def test_backward_launcher_checks_the_gradient_shape():
    with pytest.raises(ValueError, match=r"expected grad of shape \(4, 3\) \(the input's\), got \(3, 4\)"):
        kernel.layer_norm_backward(torch.zeros(3, 4), torch.zeros(4, 3), None, 1e-5)


def test_gpu_launch_sets_hold_the_one_launch(device):
    assert kernel.gpu_launch_sets(BF16, C=768) == [{"fwd": kernel._Launch(4), "bwd": kernel._Launch(4)}]
    assert kernel.gpu_launch_sets(BF16, C=1536)[0]["fwd"].num_warps == 8
    with kernel.force_launch(**kernel.gpu_launch_sets(F32, C=768)[0]):
        compare((5, 768), F32, F32, F32, device)


# ----------------------------------------------------------------------------------------------------------------------
_TRITON_TYPES = {F32: "fp32", F16: "fp16", BF16: "bf16"}


def _sm90_specs() -> list[KernelSpec]:
    """Both kernels at the GPU launch for the model widths, in each dtype and in the autocast mix (fp32 x and
    weights, bf16 output / gradient)."""
    import triton
    import triton.language as tl

    specs = []
    for x_t, w_t, o_t in [(F32, F32, F32), (BF16, BF16, BF16), (F16, F16, F16), (F32, F32, BF16)]:
        x, w, o = (_TRITON_TYPES[t] for t in (x_t, w_t, o_t))
        for D in (768, 1024, 1536, 128, 192, 256, 384, 512, 3072):  # ViT, then Swin (stage widths, 4C merging)
            launch = kernel._gpu_launch(D)
            consts = {"ACC": tl.float32, "BLOCK_D": triton.next_power_of_2(D), "HAS_W": True}
            fwd = {"X": f"*{x}", "W": f"*{w}", "B": f"*{w}", "Y": f"*{o}", "stride_x": "i32", "D": "i32",
                   "eps": "fp32"}  # fmt: skip
            bwd = {"X": f"*{x}", "W": f"*{w}", "DY": f"*{o}", "DX": f"*{x}", "stride_x": "i32", "D": "i32",
                   "eps": "fp32"}  # fmt: skip
            values = {"stride_x": D, "D": D, "eps": 1e-5}  # contiguous rows (the JIT specialises D % 16 == 0)
            specs.append(KernelSpec(kernel._layer_norm_fwd_kernel, fwd, {**consts, "HAS_B": True}, launch.num_warps,
                                    3, label=f"fwd {x} -> {o}, D={D}", values=values))
            specs.append(KernelSpec(kernel._layer_norm_bwd_kernel, bwd, consts, launch.num_warps, 3,
                                    label=f"bwd {x} <- {o}, D={D}", values=values))
    return specs


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    """Both kernels compile to sm_90 cubins (see compile_check)."""
    compile_in_subprocess(_sm90_specs)


@pytest.mark.gpu
@pytest.mark.parametrize("x_dtype, w_dtype, out_dtype", [(F32, F32, F32), (BF16, BF16, BF16), (F16, F16, F16),
                                                         (F32, F32, BF16), (F32, F32, F16)], ids=str)
@pytest.mark.parametrize("shape", [(2 * 197 * 10, 768), (257 * 3, 1024), (49, 1536), (1, 33)])
def test_gpu_parity(shape, x_dtype, w_dtype, out_dtype):
    compare(shape, x_dtype, w_dtype, out_dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.train_mix
def test_gpu_training_mix_parity():
    """fp32 residual stream and frozen fp32 affine in, bf16 out, at the ViT-B/16 width: the block LayerNorms under bf16
    autocast."""
    compare((2 * 197 * 10, 768), F32, F32, BF16, "cuda")


@pytest.mark.gpu
def test_gpu_inductor_compile():
    torch._dynamo.reset()
    compiled = torch.compile(kernel.layer_norm, fullgraph=True, backend="inductor")
    compare((394, 768), F32, F32, BF16, "cuda", fn=compiled)
