"""Fused QuickGELU Triton kernel against the plain-torch contract ``stgcma_fast.ops.torch_ops.quick_gelu`` in
float64, forward and backward, with the same random upstream gradient.

Without a GPU the kernels run under TRITON_INTERPRET=1 (set by tests/conftest.py) on CPU tensors, in fp32, fp16 and
bf16 (no tl.dot here, so the interpreter's bf16 is right). The reference runs in fp64 on the values the kernel
sees (x and the upstream gradient rounded to the dtype). Comparison: ``|actual - expected| <= atol * scale + rtol *
|expected|``, ``scale = max(1, max|expected|)``, (atol, rtol) from ``quick_gelu.TOLERANCES``. Max scaled errors
observed: fp32 4e-8, fp16 2e-4, bf16 2e-3 (one rounding of the result).
"""

from __future__ import annotations

import pytest
import torch

from stgcma_fast.kernels import quick_gelu as kernel
from stgcma_fast.ops import torch_ops

from . import swin_shapes
from .compile_check import KernelSpec, compile_in_subprocess

CPU_DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
              pytest.param(torch.bfloat16, id="bf16")]


def compare(shape: tuple[int, ...], dtype: torch.dtype, device, std: float = 3.0, fn=kernel.quick_gelu) -> float:
    """Forward and backward of ``fn`` against the fp64 contract; returns the max scaled error."""
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * std).to(dtype)
    up = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    xk = x.clone().to(device).requires_grad_()
    out = fn(xk)
    out.backward(up.to(device))
    xr = x.double().requires_grad_()
    ref = torch_ops.quick_gelu(xr)
    ref.backward(up.double())
    assert out.dtype == dtype and xk.grad.dtype == dtype and out.shape == x.shape
    atol, rtol = kernel.TOLERANCES[dtype]
    worst = 0.0
    for name, a, e in (("out", out, ref), ("grad x", xk.grad, xr.grad)):
        a, e = a.detach().double().cpu(), e.detach()
        scale = max(1.0, float(e.abs().max()))
        diff = (a - e).abs()
        bad = ~(diff <= atol * scale + rtol * e.abs())
        assert not bool(bad.any()), (f"{name} {dtype}: {int(bad.sum())} of {bad.numel()} outside tolerance, max abs "
                                     f"err {float(diff.max()):.3e} (scale {scale:.3g})")
        worst = max(worst, float(diff.max()) / scale)
    return worst


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("shape", [(1,), (49, 3072), (2, 197, 384), (3, 5, 7, 11), (1025,)])
def test_forward_backward_matches_fp64_reference(shape, dtype, device):
    compare(shape, dtype, device)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("C", swin_shapes.widths(), ids=lambda c: f"C{c}")
def test_swin_stage_widths(C, dtype, device):
    """The FFN hidden widths 4C of every Swin stage (512 ... 6144), a few rows."""
    compare((3, 4 * C), dtype, device)


def test_float64_gradcheck(device):
    if not kernel._interpreted():
        pytest.skip("float64 runs only under TRITON_INTERPRET=1 (GPU builds refuse it)")
    x = torch.randn(3, 37, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(kernel.quick_gelu, (x,))


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # the interpreter's numpy exp -> inf
def test_large_inputs_stay_finite_and_saturate(device):
    """exp(-1.702 x) overflows for x < -52 in fp32: the activation must still be 0 there and x for large x."""
    x = torch.tensor([-1e4, -100.0, -60.0, 0.0, 60.0, 1e4], device=device, requires_grad=True)
    y = kernel.quick_gelu(x)
    y.backward(torch.ones_like(y))
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(y, torch.tensor([0.0, 0.0, 0.0, 0.0, 60.0, 1e4], device=device), rtol=0, atol=1e-30)
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 0.0, 0.0, 0.5, 1.0, 1.0], device=device), rtol=0,
                               atol=1e-6)


def test_strided_input_and_empty_input(device):
    x = torch.randn(8, 12, device=device)[:, ::2]  # not contiguous
    torch.testing.assert_close(kernel.quick_gelu(x), torch_ops.quick_gelu(x), rtol=1e-6, atol=1e-6)
    empty = torch.empty(0, 5, device=device, requires_grad=True)
    out = kernel.quick_gelu(empty)
    out.sum().backward()
    assert out.shape == (0, 5) and empty.grad.shape == (0, 5)


def test_keeps_only_its_input_for_backward(device):
    from stgcma_fast.memory import saved_activation_bytes

    x = torch.randn(64, 96, device=device, requires_grad=True)
    assert saved_activation_bytes(lambda: kernel.quick_gelu(x)) == x.numel() * 4


def test_eager_calls_run_the_function_and_dispatch_modes_see_the_custom_op(device):
    """Plain eager calls take the cheaper torch.autograd.Function; under a dispatch mode (here the roofline counter)
    the custom op runs, one op with its fake implementation; both give the same numbers."""
    from stgcma_fast.roofline import TrafficCounter

    x = torch.randn(5, 8, device=device, requires_grad=True)
    eager = kernel.quick_gelu(x)
    assert type(eager.grad_fn).__name__ == "QuickGELUFunctionBackward"
    with TrafficCounter() as counter:
        counted = kernel.quick_gelu(x)
    assert [op.name for op in counter.traffic.ops] == ["stgcma_fast.quick_gelu"]
    assert torch.equal(eager, counted)
    g = torch.randn(5, 8, device=device)
    assert torch.equal(*(torch.autograd.grad(y, x, g)[0] for y in (eager, counted)))


def test_torch_compile_fullgraph_no_graph_breaks(device):
    torch._dynamo.reset()
    compiled = torch.compile(kernel.quick_gelu, fullgraph=True, backend="aot_eager")
    compare((33, 64), torch.float32, device, fn=compiled)


@pytest.mark.parametrize("bad, reason", [
    (torch.arange(4), "expected a floating-point x, got torch.int64"),
])
def test_supports_refuses_and_launcher_raises(bad, reason):
    assert kernel.supports(bad) == reason
    with pytest.raises(ValueError, match=reason):
        kernel.quick_gelu(bad)


def test_supports_dtype_and_device_policy(monkeypatch):
    monkeypatch.setattr(kernel, "_interpreted", lambda: False)
    assert kernel.supports(torch.zeros(3)) == "device cpu needs TRITON_INTERPRET=1"
    monkeypatch.setattr(kernel, "_interpreted", lambda: True)
    assert kernel.supports(torch.zeros(3, dtype=torch.bfloat16)) is None
    assert kernel.supports(torch.zeros(3, device="meta")).startswith("device meta unsupported")


def test_backward_launcher_checks_the_gradient_shape():
    with pytest.raises(ValueError, match=r"expected grad of shape \(4, 3\) \(the input's\), got \(3, 4\)"):
        kernel.quick_gelu_backward(torch.zeros(3, 4), torch.zeros(4, 3))


def test_gpu_launch_sets_hold_the_one_launch(device):
    sets = kernel.gpu_launch_sets(torch.bfloat16, rows=10)
    assert sets == [{"fwd": kernel._GPU_LAUNCH, "bwd": kernel._GPU_LAUNCH}]
    with kernel.force_launch(**sets[0]):  # the GPU launch in the interpreter: same numbers
        compare((5, 1500), torch.float32, device)


# ----------------------------------------------------------------------------------------------------------------------
_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _sm90_specs() -> list[KernelSpec]:
    """Both kernels at the GPU launch, for every GPU dtype."""
    import triton.language as tl

    specs = []
    for t in _TRITON_TYPES.values():
        launch = kernel._GPU_LAUNCH
        consts = {"ACC": tl.float32, "BLOCK": launch.block}
        n = {"n": 80 * 197 * 3072}  # the ViT-B/16 FFN hidden of 8 clips x 10 frames (a multiple of 16)
        specs.append(KernelSpec(kernel._quick_gelu_fwd_kernel, {"X": f"*{t}", "Y": f"*{t}", "n": "i32"}, consts,
                                launch.num_warps, 3, label=f"fwd {t}", values=n))
        specs.append(KernelSpec(kernel._quick_gelu_bwd_kernel, {"X": f"*{t}", "G": f"*{t}", "DX": f"*{t}", "n": "i32"},
                                consts, launch.num_warps, 3, label=f"bwd {t}", values=n))
    return specs


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    """Both kernels compile to sm_90 cubins (see compile_check)."""
    compile_in_subprocess(_sm90_specs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", [(2 * 197 * 10, 3072), (257 * 3, 4096), (1, 1), (3, 1025)])
def test_gpu_parity(shape, dtype):
    compare(shape, dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.train_mix
def test_gpu_training_mix_parity():
    """bf16 at the ViT-B/16 FFN width (fc1's output under bf16 autocast)."""
    compare((2 * 197 * 10, 3072), torch.bfloat16, "cuda")


@pytest.mark.gpu
def test_gpu_inductor_compile():
    torch._dynamo.reset()
    compiled = torch.compile(kernel.quick_gelu, fullgraph=True, backend="inductor")
    compare((394, 3072), torch.bfloat16, "cuda", fn=compiled)
