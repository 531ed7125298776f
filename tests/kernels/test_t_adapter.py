"""Fused T-Adapter Triton kernel against the plain-torch contract ``stgcma_fast.ops.torch_ops.t_adapter`` in float64.

Without a GPU the kernels run under TRITON_INTERPRET=1 (set by tests/conftest.py) on CPU tensors: fp32 and fp16
(the interpreter computes bf16 tl.dot wrong, so bf16 is tested on CUDA only). The output AND every gradient (x,
residual, w_down, b_down, w_up, b_up) are compared, with the same random upstream gradient.

Comparison: ``|actual - expected| <= atol * scale + rtol * |expected|`` with ``scale = max(1, max|expected|)`` of each
tensor (weight gradients are sums over R rows, so their absolute error grows with their magnitude). (atol, rtol) come
from ``t_adapter.TOLERANCES``. Max scaled errors observed over this file: fp32 6e-7, fp16 7e-4, fp64 1e-15.

Mixed precision (the torch.autocast mix: 16-bit x, fp32 or 16-bit residual, fp32 master weights, fp32 row_scale) is
compared with the fp64 reference on the values autocast computes with (x, weights, biases and row_scale rounded to
x's dtype), with the tolerance row of x's dtype; max scaled error observed (fp16) 6.2e-4.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import triton.language as tl

from stgcma_fast.kernels import t_adapter as kernel
from stgcma_fast.ops import torch_ops
from stgcma_fast.testing import assert_close

from . import swin_shapes
from .compile_check import KernelSpec, compile_in_subprocess

NAMES = ("x", "residual", "w_down", "b_down", "w_up", "b_up")
CPU_DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]


def make_inputs(R: int, D: int, r: int, row_scale: str | None, seed: int = 0) -> dict[str, torch.Tensor]:
    """float64 inputs with a random NONZERO up-projection (the zero init would hide most bugs).

    ``row_scale``: None, "mask" (drop-path keep mask / keep probability, with zeros) or "zeros".
    """
    g = torch.Generator().manual_seed(seed)

    def rn(*shape, std=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * std

    t = {"x": rn(R, D), "residual": rn(R, D), "w_down": rn(r, D, std=D**-0.5), "b_down": rn(r, std=0.5),
         "w_up": rn(D, r, std=r**-0.5), "b_up": rn(D, std=0.5)}  # fmt: skip
    if row_scale == "mask":
        keep = torch.rand(R, generator=g, dtype=torch.float64) < 0.7
        keep[0] = False  # at least one dropped row
        t["row_scale"] = keep.double() / 0.7
    elif row_scale == "zeros":
        t["row_scale"] = torch.zeros(R, dtype=torch.float64)
    else:
        t["row_scale"] = None
    return t


def run(fn, inputs: dict, grad_out: torch.Tensor, dtype: torch.dtype, device,
        dtypes: dict[str, torch.dtype] | None = None) -> tuple[torch.Tensor, list]:
    """Forward + backward of ``fn`` on leaf copies of ``inputs`` cast to ``dtype`` (or to ``dtypes[name]``).

    Returns (out, grads)."""
    dtypes = dtypes or {}
    leaves = [inputs[k].to(device=device, dtype=dtypes.get(k, dtype)).requires_grad_() for k in NAMES]
    row_scale = inputs["row_scale"]
    row_scale = None if row_scale is None else row_scale.to(device=device, dtype=dtypes.get("row_scale", dtype))
    out = fn(*leaves, row_scale)
    out.backward(grad_out.to(device=device, dtype=out.dtype))
    return out.detach(), [t.grad for t in leaves]


def scaled_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).abs().max()) / max(1.0, float(expected.abs().max()))


def check(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str) -> float:
    """Scale-aware closeness (see module docstring); returns the max scaled abs error."""
    assert actual is not None, f"{name}: missing gradient"
    atol, rtol = kernel.TOLERANCES[dtype]
    scale = max(1.0, float(expected.detach().abs().max()))
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert_close(actual / scale, expected / scale, atol, rtol, name=f"{name} (divided by {scale:.3g})")
    return scaled_err(actual, expected)


def compare(R, D, r, row_scale, dtype, device, fn=kernel.t_adapter, tol_dtype=None) -> float:
    inputs = make_inputs(R, D, r, row_scale)
    grad_out = torch.randn(R, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # Reference: same (rounded) inputs, evaluated in float64.
    rounded = {k: (None if v is None else v.to(dtype).double()) for k, v in inputs.items()}
    ref_out, ref_grads = run(torch_ops.t_adapter, rounded, grad_out.to(dtype).double(), torch.float64, "cpu")
    out, grads = run(fn, inputs, grad_out, dtype, device)
    assert out.dtype == dtype and out.shape == (R, D)
    tol_dtype = tol_dtype or dtype
    errs = [check(out, ref_out, tol_dtype, "out")]
    errs += [check(a, e, tol_dtype, f"d{n}") for a, e, n in zip(grads, ref_grads, NAMES)]
    return max(errs)


F32 = torch.float32
# The autocast mix: fp32 master weights and biases, the fp32 residual stream (or a 16-bit one), an fp32 row_scale.
MIXES = {
    "res32-w32": dict(residual=F32, w_down=F32, b_down=F32, w_up=F32, b_up=F32, row_scale=F32),
    "res16-w32": dict(w_down=F32, b_down=F32, w_up=F32, b_up=F32, row_scale=F32),
    "res32-some32": dict(residual=F32, w_down=F32, b_up=F32, row_scale=F32),  # the rest in x's dtype
}


def compare_mixed(R, D, r, row_scale, dtype, mix: str, device, fn=kernel.t_adapter) -> float:
    """x in the 16-bit ``dtype``, the other inputs as in ``MIXES[mix]`` (x's dtype where not named).

    Reference: fp64 on what autocast computes with: x as given, weights, biases and row_scale rounded to x's dtype
    (autocast's F.linear and the contract's ``row_scale.to(out.dtype)``), the residual at its own precision.
    """
    dtypes = MIXES[mix]
    inputs = make_inputs(R, D, r, row_scale)
    out_dtype = torch.promote_types(dtype, dtypes.get("residual", dtype))
    grad_out = torch.randn(R, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out_dtype)
    stored = {k: (None if v is None else v.to(dtypes.get(k, dtype))) for k, v in inputs.items()}
    used = {k: (None if v is None else (v if k == "residual" else v.to(dtype)).double()) for k, v in stored.items()}
    ref_out, ref_grads = run(torch_ops.t_adapter, used, grad_out.double(), torch.float64, "cpu")
    out, grads = run(fn, inputs, grad_out, dtype, device, dtypes=dtypes)
    assert out.dtype == out_dtype and out.shape == (R, D), (out.dtype, out_dtype)
    for name, g in zip(NAMES, grads):
        want = dtypes.get(name, dtype)
        assert g.dtype == want, f"d{name}: expected dtype {want} (the dtype of {name}), got {g.dtype}"
    errs = [check(out, ref_out, dtype, "out")]
    errs += [check(a, e, dtype, f"d{n}") for a, e, n in zip(grads, ref_grads, NAMES)]
    return max(errs)


# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("row_scale", [None, "mask"])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("r", [24, 48, 96])
@pytest.mark.parametrize("R", [1, 49, 197 * 2])
def test_forward_backward_matches_fp64_reference(R, r, D, row_scale, dtype, device):
    compare(R, D, r, row_scale, dtype, device)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("R, D, r", [(197 * 2, 80, 24), (257, 200, 128), (129, 16, 1)])
def test_awkward_widths(R, D, r, dtype, device):
    """D not a multiple of the D chunk (80, 200), the widest bottleneck (128), r = 1 and D = 16 (one masked chunk)."""
    compare(R, D, r, "mask", dtype, device)


@pytest.mark.parametrize("C, r", swin_shapes.adapter_widths(), ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_swin_stage_widths(dtype, C, r, device):
    """Every Swin preset's per-stage (C, r) (r = 16 ... 128, mostly not powers of two), with drop-path rows: the
    temporal pass's rows are the (clip, token) sequences' frames (49 here)."""
    compare(49, C, r, "mask", dtype, device)


@pytest.mark.parametrize("row_scale", [None, "mask"])
@pytest.mark.parametrize("mix", ["res32-w32", "res16-w32"])
def test_mixed_precision_matches_fp64_reference(mix, row_scale, device):
    """fp16 x with fp32 master weights and an fp32 (or fp16) residual: out in promote(x, residual), grads in each
    input's dtype; R = 197 rows (a partial row block), D = 80 (a partial D chunk), r = 24 (a masked bottleneck)."""
    compare_mixed(197, 80, 24, row_scale, torch.float16, mix, device)


def test_mixed_precision_per_parameter_dtypes(device):
    """Each weight / bias may independently be x's dtype or fp32; its gradient comes back in its own dtype."""
    compare_mixed(49, 64, 48, "mask", torch.float16, "res32-some32", device)


def test_mixed_precision_under_autocast(device):
    """Under torch.autocast the custom op receives the mix unchanged (16-bit x from a linear, fp32 residual and
    weights), returns what the torch contract returns under the same autocast (dtype), and its numbers agree."""
    if device.type == "cpu" and not kernel._interpreted():
        pytest.skip("needs TRITON_INTERPRET=1 on CPU")
    inputs = make_inputs(49, 64, 24, "mask")
    proj = inputs["x"].float().to(device)
    eye = torch.eye(64, device=device)
    results = []
    for fn in (kernel.t_adapter, torch_ops.t_adapter):
        leaves = [inputs[k].float().to(device).requires_grad_() for k in NAMES[1:]]
        with torch.autocast(device.type, dtype=torch.float16):
            x = torch.nn.functional.linear(proj, eye)  # 16-bit, like the frozen projection's output
            assert x.dtype == torch.float16
            out = fn(x, *leaves, inputs["row_scale"].float().to(device))
        out.backward(torch.ones_like(out))
        results.append((out, [t.grad for t in leaves]))
    (out_k, grads_k), (out_t, grads_t) = results
    assert out_k.dtype == out_t.dtype == torch.float32
    check(out_k, out_t, torch.float16, "out under autocast")
    for name, a, e in zip(NAMES[1:], grads_k, grads_t):
        assert a.dtype == e.dtype == torch.float32, (name, a.dtype, e.dtype)
        check(a, e, torch.float16, f"d{name} under autocast")


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_zero_row_scale_returns_residual(dtype, device):
    """All rows dropped: out == residual exactly, and no gradient reaches the adapter."""
    inputs = make_inputs(49, 64, 24, "zeros")
    grad_out = torch.randn(49, 64, dtype=torch.float64)
    out, grads = run(kernel.t_adapter, inputs, grad_out, dtype, device)
    assert torch.equal(out.cpu(), inputs["residual"].to(dtype))
    assert torch.equal(grads[1].cpu(), grad_out.to(dtype))
    for name, g in zip(NAMES, grads):
        if name != "residual":
            assert not bool(g.abs().gt(0).any()), f"d{name} should be exactly zero, max {float(g.abs().max())}"


def test_autograd_function_matches_custom_op(device):
    """The eager torch.autograd.Function and the custom-op path run the same launchers: identical results."""
    inputs = make_inputs(49, 64, 48, "mask")
    grad_out = torch.randn(49, 64, dtype=torch.float64)
    custom_op = lambda *args: torch.ops.stgcma_fast.t_adapter(*args)[0]  # noqa: E731 - what compile traces
    out_op, grads_op = run(custom_op, inputs, grad_out, torch.float32, device)
    out_fn, grads_fn = run(kernel.TAdapterFunction.apply, inputs, grad_out, torch.float32, device)
    assert torch.equal(out_op, out_fn)
    for name, a, b in zip(NAMES, grads_op, grads_fn):
        assert torch.equal(a, b), f"d{name} differs between the custom op and the autograd.Function"


def test_strided_rows(device):
    """x and residual as row-strided views (unit column stride) are read in place and give the same result."""
    R, D, r = 49, 64, 24
    inputs = make_inputs(R, D, r, "mask")
    big = torch.randn(R, D + 32, dtype=torch.float32, device=device)
    x = big[:, 16:16 + D]
    big[:, 16:16 + D] = inputs["x"].float().to(device)
    assert x.stride() == (D + 32, 1)
    args = [x] + [inputs[k].float().to(device) for k in NAMES[1:]] + [inputs["row_scale"].float().to(device)]
    expected = torch_ops.t_adapter(*[a.double() for a in args])
    check(kernel.t_adapter(*args), expected, torch.float32, "out (strided x)")


def test_gradcheck_float64(device):
    """fp64 runs under the interpreter (tl.dot and erf accept float64), so the analytic backward can be gradchecked."""
    if not kernel._interpreted():
        pytest.skip("float64 is only supported under TRITON_INTERPRET=1 (GPU builds refuse it)")
    inputs = make_inputs(2, 8, 3, "mask")
    inputs["row_scale"][1] = 1.25  # one dropped row, one kept
    leaves = [inputs[k].to(device).requires_grad_() for k in NAMES]
    row_scale = inputs["row_scale"].to(device)
    assert torch.autograd.gradcheck(lambda *a: kernel.t_adapter(*a, row_scale), leaves, atol=1e-8, rtol=1e-6)


def test_torch_compile_fullgraph_no_graph_breaks(device):
    """The custom op (and its backward op) trace with fullgraph=True on CPU: one graph, same numbers as eager."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")

    def block(x, residual, w_down, b_down, w_up, b_up, row_scale):
        return kernel.t_adapter(x * 2.0, residual, w_down, b_down, w_up, b_up, row_scale).relu().sum(-1)

    compiled = torch.compile(block, fullgraph=True, backend=counter)
    inputs = make_inputs(49, 64, 24, "mask")
    grad_out = torch.randn(49, dtype=torch.float64)
    leaves = [inputs[k].float().to(device).requires_grad_() for k in NAMES]
    row_scale = inputs["row_scale"].float().to(device)
    out = compiled(*leaves, row_scale)
    out.backward(grad_out.float().to(device))
    assert counter.frame_count == 1, f"expected one graph, got {counter.frame_count}"

    ref_leaves = [inputs[k].to(device).requires_grad_() for k in NAMES]
    ref = torch_ops.t_adapter(ref_leaves[0] * 2.0, *ref_leaves[1:], row_scale.double()).relu().sum(-1)
    ref.backward(grad_out.to(device))
    check(out, ref, torch.float32, "compiled out")
    for name, a, e in zip(NAMES, leaves, ref_leaves):
        check(a.grad, e.grad, torch.float32, f"compiled d{name}")


@pytest.mark.parametrize("x_dtype, res_dtype, w_dtype", [(torch.float16, F32, F32), (torch.float16, torch.float16, F32),
                                                     (F32, F32, F32)], ids=["res32-w32", "res16-w32", "fp32"])
def test_fake_dtypes_match_real(x_dtype, res_dtype, w_dtype, device):
    """register_fake of both custom ops gives the dtypes and shapes the kernels return, autocast mix included."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    R, D, r = 49, 64, 24
    shapes_dtypes = [((R, D), x_dtype), ((R, D), res_dtype), ((r, D), w_dtype), ((r,), w_dtype), ((D, r), w_dtype),
                     ((D,), w_dtype), ((R,), F32)]  # fmt: skip
    real_args = [torch.randn(shape).to(device=device, dtype=dt) for shape, dt in shapes_dtypes]
    results = []
    for mode in (None, FakeTensorMode()):
        args = real_args if mode is None else [mode.from_tensor(a) for a in real_args]
        with mode or contextlib.nullcontext():
            out, pre = torch.ops.stgcma_fast.t_adapter(*args)
            bwd = torch.ops.stgcma_fast.t_adapter_backward(out, pre, args[2], args[4], args[6], x_dtype)
        results.append([(t.dtype, tuple(t.shape)) for t in (out, pre, *bwd)])
    assert results[0] == results[1], f"real {results[0]} != fake {results[1]}"
    assert results[0][0][0] == torch.promote_types(x_dtype, res_dtype)


def test_torch_compile_fullgraph_mixed_precision(device):
    """The autocast mix (fp16 x, fp32 residual and weights) traces as one graph too, with the eager numbers."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(kernel.t_adapter, fullgraph=True, backend=counter)
    compare_mixed(49, 64, 24, "mask", torch.float16, "res32-w32", device, fn=compiled)
    assert counter.frame_count == 1, f"expected one graph, got {counter.frame_count}"


# ----------------------------------------------------------------------------------------------------------------------
def _candidate_sets():
    """Per dot class and padded bottleneck (r = 12, 24, 48, 96 run in 16- to 128-wide blocks), the launch sets that
    together hold every GPU candidate at D = 768 (``t_adapter.gpu_launch_sets``)."""
    for dot_class, dtype in (("fp32", torch.float32), ("16-bit", torch.bfloat16)):
        for r in (12, 24, 48, 96):
            for i, launches in enumerate(kernel.gpu_launch_sets(dtype, r=r, D=768)):
                yield pytest.param(dot_class, r, launches, id=f"{dot_class}-r{r}-cand{i}")


@pytest.mark.parametrize("dot_class, r, launches", list(_candidate_sets()))
def test_every_gpu_launch_candidate(dot_class, r, launches, device):
    """Every launch the GPU autotuner may pick computes the same, in fp32 (block shapes change indexing and masking,
    not arithmetic; the 16-bit candidates run in fp32 here too). 197 rows = 2..13 row blocks, the last partial; D = 144
    = whole 32 / 64 / 128-wide chunks and a masked one; r masked in its block."""
    with kernel.force_launch(**launches):
        assert all(kernel.launch_candidates(step, r, "ieee", 144) == (c,) for step, c in launches.items())
        compare(197, 144, r, "mask", torch.float32, device)
        for step, c in launches.items():  # what the autotuners actually ran
            ran = list(kernel._KERNELS[step].cache.values())
            assert ran and all(cfg.all_kwargs() == kernel._config(c).all_kwargs() for cfg in ran), (step, ran)


def test_launch_candidates(monkeypatch):
    """The interpreter runs one launch, the GPU the candidates of the dot class and padded r whose D chunk fits D (the
    first only with autotuning off); force_launch overrides both, clears the tuning caches and restores them."""
    if kernel._interpreted():
        assert kernel.launch_candidates("bwd", 96, "ieee", 768) == (kernel._INTERPRETER_LAUNCH,)
    monkeypatch.setattr(kernel, "_interpreted", lambda: False)  # as if compiled for a GPU
    monkeypatch.delenv("STGCMA_FAST_AUTOTUNE", raising=False)
    table = kernel._GPU_LAUNCH
    assert kernel.launch_candidates("bwd", 96, "tf32", 768) == table["16-bit"][128]["bwd"]
    assert kernel.launch_candidates("fwd", 24, "ieee", 1024) == table["fp32"][32]["fwd"]
    assert kernel.launch_candidates("fwd", 9, "tf32", 768) == table["16-bit"][32]["fwd"]
    narrow = kernel.launch_candidates("fwd", 48, "tf32", 16)  # D = 16: no chunk wider than 32
    assert narrow and all(c.block_d <= 32 for c in narrow), narrow
    for dot_class, tables in table.items():  # every list: distinct launches, powers of two, tl.dot sizes
        for block_r, steps in tables.items():
            for step, launches in steps.items():
                assert len(set(launches)) == len(launches) >= 2, (dot_class, block_r, step)
                for c in launches:
                    dims = (c.block_rows, c.block_d, c.num_warps)
                    assert all(v & (v - 1) == 0 for v in dims) and c.block_rows >= 16 and c.block_d >= 16, c
                    assert c.block_rows >= kernel._MIN_BLOCK_R, c
    monkeypatch.setenv("STGCMA_FAST_AUTOTUNE", "0")
    assert kernel.launch_candidates("bwd", 96, "tf32", 768) == table["16-bit"][128]["bwd"][:1]
    forced = kernel._Launch(16, 32, 4, 1)
    kernel._KERNELS["fwd"].cache[("stale",)] = kernel._config(forced)
    with kernel.force_launch(bwd=forced):
        assert not kernel._KERNELS["fwd"].cache, "force_launch must clear the autotuners' caches"
        assert kernel.launch_candidates("bwd", 48, "tf32", 768) == (forced,)
        assert kernel.launch_candidates("fwd", 48, "tf32", 768) == table["16-bit"][64]["fwd"][:1]
        assert kernel._min_block_rows() <= 16  # the bias partial sums fit the forced row block
    assert kernel.launch_candidates("bwd", 48, "tf32", 768) == table["16-bit"][64]["bwd"][:1]
    with pytest.raises(ValueError, match="expected steps among"):
        with kernel.force_launch(forward=forced):
            pass
    with pytest.raises(ValueError, match="expected step in"):
        kernel.launch_candidates("forward", 48, "tf32", 768)
    prune = kernel._KERNELS["bwd"].early_config_prune  # what the autotuner asks: the candidates as triton.Configs
    got = prune([], {"D": 768}, BLOCK_r=128, DOT_PRECISION="tf32")
    assert [c.all_kwargs() for c in got] == [kernel._config(c).all_kwargs() for c in table["16-bit"][128]["bwd"][:1]]


# ----------------------------------------------------------------------------------------------------------------------
def _args(R=4, D=32, r=8, dtype=torch.float32, device="cpu", **override):
    args = {"x": torch.zeros(R, D), "residual": torch.zeros(R, D), "w_down": torch.zeros(r, D),
            "b_down": torch.zeros(r), "w_up": torch.zeros(D, r), "b_up": torch.zeros(D), "row_scale": None}  # fmt: skip
    args = {k: (None if v is None else v.to(device=device, dtype=dtype)) for k, v in args.items()}
    args.update(override)
    return args


@pytest.mark.parametrize(
    "override, reason",
    [
        ({"w_up": torch.zeros(32, 9)}, "expected w_up of shape (32, 8), got (32, 9)"),
        ({"residual": torch.zeros(5, 32)}, "expected residual of shape (4, 32), got (5, 32)"),
        ({"row_scale": torch.zeros(3)}, "expected row_scale of shape (4,), got (3,)"),
        ({"x": torch.zeros(2, 4, 32)}, "expected x of shape (R, D), got (2, 4, 32)"),
        ({"b_up": torch.zeros(32, dtype=torch.float16)}, "expected b_up of dtype torch.float32"),
        ({"w_down": torch.zeros(200, 32), "b_down": torch.zeros(200), "w_up": torch.zeros(32, 200)},
         "bottleneck r=200 outside [1, 128]"),
    ],
)
def test_supports_refuses_and_launcher_raises(override, reason):
    args = _args(**override)
    got = kernel.supports(**args)
    assert got is not None and reason in got, f"expected a reason containing {reason!r}, got {got!r}"
    with pytest.raises(ValueError, match=r"expected|bottleneck"):
        kernel.t_adapter_forward(**args)


H16, BF16, F64 = torch.float16, torch.bfloat16, torch.float64


@pytest.mark.parametrize(
    "x_dtype, override, reason",
    [
        (F32, {"residual": torch.zeros(4, 32, dtype=H16)},
         "expected residual of dtype torch.float32 (the dtype of x), got torch.float16"),
        (H16, {"residual": torch.zeros(4, 32, dtype=BF16)},
         "expected residual of dtype torch.float16 (the dtype of x) or torch.float32, got torch.bfloat16"),
        (H16, {"w_down": torch.zeros(8, 32, dtype=F64)},
         "expected w_down of dtype torch.float16 (the dtype of x) or torch.float32, got torch.float64"),
        (H16, {"b_up": torch.zeros(32, dtype=BF16)}, "expected b_up of dtype torch.float16 (the dtype of x) or"),
        (F32, {"x": torch.zeros(4, 32, dtype=torch.int32)}, "expected x of a floating dtype"),
    ],
)
def test_supports_refuses_other_dtype_mixes(x_dtype, override, reason):
    """Only x's dtype or fp32 for the residual, weights and biases; anything else names expected vs received."""
    args = _args(dtype=x_dtype, **override)
    got = kernel.supports(**args)
    assert got is not None and reason in got, f"expected a reason containing {reason!r}, got {got!r}"
    with pytest.raises(ValueError, match="expected"):
        kernel.t_adapter_forward(**args)


def test_supports_accepts_the_autocast_mix(device):
    """16-bit x (fp64 x under the interpreter) with fp32 residual / weights / biases, all or some of them."""
    fp32 = {k: v for k, v in _args(device=device).items() if v is not None}
    for x_dtype in ([H16, F64] if kernel._interpreted() else [H16, BF16]):
        assert kernel.supports(**{**fp32, "x": fp32["x"].to(x_dtype)}) is None, x_dtype
        some = {**_args(dtype=x_dtype, device=device), "residual": fp32["residual"], "w_up": fp32["w_up"]}
        assert kernel.supports(**some) is None, x_dtype


def test_supports_dtype_and_device_policy(monkeypatch):
    if kernel._interpreted():
        assert kernel.supports(**_args()) is None
        assert "bfloat16 unsupported" in kernel.supports(**_args(dtype=torch.bfloat16))
        monkeypatch.setattr(kernel, "_interpreted", lambda: False)  # as if compiled for a GPU
    assert kernel.supports(**_args()) == "device cpu needs TRITON_INTERPRET=1"
    if torch.cuda.is_available():
        assert kernel.supports(**_args(device="cuda")) is None
        assert kernel.supports(**_args(device="cuda", dtype=torch.bfloat16)) is None
        assert "float64 unsupported" in kernel.supports(**_args(device="cuda", dtype=torch.float64))


def test_backward_launcher_raises_on_mismatch():
    with pytest.raises(ValueError, match=r"expected pre of shape \(4, 8\), got \(4, 7\)"):
        kernel.t_adapter_backward(torch.zeros(4, 32), torch.zeros(4, 7), torch.zeros(8, 32), torch.zeros(32, 8))


# ----------------------------------------------------------------------------------------------------------------------
_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# Per test case (one process each): the (x, residual / out, weights) dtypes. Each compute dtype alone and the autocast
# training mix: bf16 x from the frozen projection, the fp32 residual stream and fp32 master weights.
SM90_CASES = {"fp32": (F32, F32, F32), "bf16": (BF16, BF16, BF16), "bf16-train": (BF16, F32, F32),
              "swin-bf16-train": (BF16, F32, F32)}  # at SWIN_SM90_SHAPES
# The integer arguments at the model shape of each padded r (the JIT specialises multiples of 16): the video rows of a
# training batch of 8 clips x 10 frames, contiguous (the row strides are D).
SM90_SHAPES = {128: dict(R=80 * 197, D=768, r=96), 64: dict(R=80 * 257, D=1024, r=64),
               32: dict(R=80 * 197, D=768, r=24)}  # fmt: skip
# Swin's temporal pass, 8 clips x 10 frames, the rows are (frame, token): Swin-L stage 4 (C = 1536, r = 96, 49
# tokens), Swin-B Base stage 3 (C = 512, r = 64, 196), Swin-L Tiny stage 1 (C = 192, r = 24, 3,136), Swin-B Tiny
# stage 1 (C = 128, r = 16).
SWIN_SM90_SHAPES = {128: dict(R=80 * 49, D=1536, r=96), 64: dict(R=80 * 196, D=512, r=64),
                    32: dict(R=80 * 3136, D=192, r=24), 16: dict(R=80 * 3136, D=128, r=16)}  # fmt: skip


def _sm90_specs(case: str) -> list[KernelSpec]:
    """Both kernels as the launchers specialise them (HAS_SCALE: drop path on) for every autotune candidate
    (``t_adapter._GPU_LAUNCH``) of the padded bottlenecks of ``SM90_SHAPES`` (``SWIN_SM90_SHAPES`` for the Swin case;
    the widest first, so that the workers finish together), in the dtypes of ``SM90_CASES[case]``."""
    x_t, res_t, w_t = SM90_CASES[case]
    dt, rt, wt = (_TRITON_TYPES[t] for t in (x_t, res_t, w_t))
    gt = _TRITON_TYPES[torch.promote_types(x_t, w_t)]  # dh and gs: the wider of (x, weights)
    prec = "ieee" if x_t == F32 else "tf32"  # ieee_dot_precision(x's dtype)
    fwd = {"X": f"*{dt}", "RES": f"*{rt}", "WD": f"*{wt}", "BD": f"*{wt}", "WU": f"*{wt}", "BU": f"*{wt}",
           "S": "*fp32", "OUT": f"*{rt}", "PRE": "*fp32", "R": "i32", "D": "i32", "r": "i32", "stride_x": "i32",
           "stride_res": "i32"}  # fmt: skip
    bwd = {"DY": f"*{rt}", "PRE": "*fp32", "WD": f"*{wt}", "WU": f"*{wt}", "S": "*fp32", "DX": f"*{dt}",
           "DH": f"*{gt}", "GS": f"*{gt}", "DBD_PART": "*fp32", "DBU_PART": "*fp32", "R": "i32", "D": "i32",
           "r": "i32", "stride_dy": "i32"}  # fmt: skip
    specs = []
    shapes = SWIN_SM90_SHAPES if case.startswith("swin") else SM90_SHAPES
    for block_r in shapes:
        for step, jit, sig in [("fwd", kernel._t_adapter_fwd_kernel, fwd), ("bwd", kernel._t_adapter_bwd_kernel, bwd)]:
            for c in kernel._GPU_LAUNCH[kernel._dot_class(prec)][block_r][step]:
                consts = {"HAS_SCALE": True, "ACC": tl.float32, "DOT_PRECISION": prec, "BLOCK_r": block_r,
                          **kernel._config(c).kwargs}  # fmt: skip
                label = f"{dt} x, {rt} res, {wt} w, BLOCK_r={block_r}, BLOCK_R={c.block_rows}, BLOCK_D={c.block_d}"
                dims = shapes[block_r]
                strides = ("stride_x", "stride_res") if step == "fwd" else ("stride_dy",)
                values = dims | dict.fromkeys(strides, dims["D"])
                specs.append(KernelSpec(jit, sig, consts, c.num_warps, c.num_stages, label=label, values=values))
    return specs


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SM90_CASES))
def test_kernels_compile_for_sm90_without_a_gpu(case):
    """Both T-Adapter kernels compile to sm_90 cubins for every autotune candidate, which the interpreter cannot check
    (see compile_check); `python -m tests.kernels.compile_check tests.kernels.test_t_adapter:_sm90_specs '["CASE"]'`
    prints their shared memory, registers and spill bytes."""
    compile_in_subprocess(_sm90_specs, case)


# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("R, D, r", [(2 * 197 * 10, 768, 96), (257 * 3, 1024, 32), (49, 1536, 24), (1, 64, 48)])
def test_gpu_parity(R, D, r, dtype):
    compare(R, D, r, "mask", dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("mix", list(MIXES))
@pytest.mark.parametrize("R, D, r", [(2 * 197 * 10, 768, 96), (49, 1536, 24)])
def test_gpu_mixed_precision_parity(R, D, r, mix, dtype):
    compare_mixed(R, D, r, "mask", dtype, mix, "cuda")


@pytest.mark.gpu
@pytest.mark.train_mix
@pytest.mark.parametrize("R, D, r", [(2 * 197 * 10, 768, 96), (2 * 197 * 10, 768, 24)], ids=["B16-base", "B16-tiny"])
def test_gpu_training_mix_parity(R, D, r):
    """bf16 x from the frozen projection, fp32 residual stream and master weights at the ViT-B/16 widths: what
    FastSTGCMA runs under bf16 autocast."""
    compare_mixed(R, D, r, "mask", torch.bfloat16, "res32-w32", "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dot_class, r, launches", [
    pytest.param(*p.values, id=p.id, marks=[pytest.mark.train_mix] if p.values[0] == "16-bit" else [])
    for p in _candidate_sets() if "-r12-" not in p.id])  # fmt: skip
def test_gpu_every_launch_candidate(dot_class, r, launches):
    """Every autotune candidate compiled for the real GPU at B/16 and L/14 widths (the parity tests above only see the
    candidate the autotuner picked): the 16-bit ones in the bf16 training mix (bf16 x, fp32 residual and master
    weights), the fp32 ones in fp32."""
    R, D = 2 * 197 * 10 + 1, (768 if r in (24, 96) else 1024)
    with kernel.force_launch(**launches):
        if dot_class == "fp32":
            compare(R, D, r, "mask", torch.float32, "cuda")
        else:
            compare_mixed(R, D, r, "mask", torch.bfloat16, "res32-w32", "cuda")


@pytest.mark.gpu
def test_gpu_inductor_compile():
    torch._dynamo.reset()
    compiled = torch.compile(kernel.t_adapter, fullgraph=True, backend="inductor")
    compare(394, 768, 96, "mask", torch.bfloat16, "cuda", fn=compiled, tol_dtype=torch.bfloat16)


# ----------------------------------------------------------------------------------------------------------------------
def test_backward_autotuning_leaves_no_stale_bias_partial_sums(monkeypatch, device):
    """On a GPU the autotuner times every backward candidate on the same buffers before it keeps one. A candidate with
    BLOCK_R = 32 writes cdiv(R, 32) rows of bias-gradient partial sums, the kept BLOCK_R = 64 only cdiv(R, 64): the
    rows in between must not reach db_down / db_up. Simulated in the interpreter: two candidates, a timer that runs
    each once and ranks the second (larger) block fastest, on an empty tuning cache."""
    if device.type == "cpu" and not kernel._interpreted():
        pytest.skip("needs TRITON_INTERPRET=1 on CPU")
    import triton

    bwd = kernel._t_adapter_bwd_kernel
    candidates = [triton.Config({"BLOCK_R": 32, "BLOCK_D": 64}, num_warps=4, num_stages=1),
                  triton.Config({"BLOCK_R": 64, "BLOCK_D": 64}, num_warps=4, num_stages=1)]  # fmt: skip
    timings = iter([2.0, 1.0])

    def one_run_timer(kernel_call, quantiles=None):
        kernel_call()  # what the GPU timer does many times: run the candidate on the real buffers
        t = next(timings)
        return [t, t, t]

    monkeypatch.setattr(bwd, "cache", {})
    monkeypatch.setattr(bwd, "early_config_prune", lambda configs, named_args, **kwargs: candidates)
    monkeypatch.setitem(bwd.__dict__, "do_bench", one_run_timer)
    compare(100, 64, 24, "mask", torch.float32, device)  # cdiv(100, 32) = 4 partial rows, cdiv(100, 64) = 2
    assert bwd.cache and list(bwd.cache.values())[0].kwargs["BLOCK_R"] == 64, "the timer should keep BLOCK_R = 64"
