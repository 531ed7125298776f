"""Triton AV-Adapter against the plain-torch contract ``stgcma_fast.ops.torch_ops.av_adapter`` in float64.

Without a GPU the kernels run under TRITON_INTERPRET=1 (set by tests/conftest.py) on CPU tensors: fp32 and fp16
(the interpreter computes bf16 tl.dot wrong, so bf16 is tested on CUDA only). Outputs AND every gradient (u_v,
u_a, x_v, x_a, the eight weights and biases, alpha, beta) are compared, with the same random upstream gradient.

Comparison: ``|actual - expected| <= atol * scale + rtol * |expected|`` with ``scale = max(1, max|expected|)`` of
each tensor: weight gradients are sums over G * N rows, so their absolute error grows with their magnitude.
(atol, rtol) come from ``av_adapter.tolerance`` (the row of the dtype and of the precision the fp32 dots run at:
IEEE in the interpreter, tf32x3 on the GPU). Max scaled abs errors observed under the interpreter: fp32 1.1e-5,
fp16 7.1e-4 (about one fp16 ulp); the ill-conditioned large-score case ~1e-3 in both, the same as torch's own fp32
evaluation of the contract; fp64 ~1e-14.

Mixed precision (what torch.autocast hands the op: 16-bit u, fp32 residual x, fp32 master weights) is compared the
same way, against fp64 on the values the math is defined on (weights and biases rounded to u's dtype, as autocast
rounds them for F.linear), with the tolerance row of u's dtype: max scaled errors 3.9e-4..7.5e-4 with fp16 u.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch
import triton.language as tl

from stgcma_fast.kernels import av_adapter as ava
from stgcma_fast.ops import torch_ops
from stgcma_fast.testing import assert_close

from . import swin_shapes
from .compile_check import KernelSpec, compile_in_subprocess

NAMES = ("u_v", "u_a", "x_v", "x_a", "w_down_v", "b_down_v", "w_up_v", "b_up_v",
         "w_down_a", "b_down_a", "w_up_a", "b_up_a", "alpha", "beta")  # fmt: skip
WEIGHTS = NAMES[4:12]  # the eight weights and biases: rounded to u's dtype inside the kernel (as autocast does)


def make_inputs(G: int, N_v: int, N_a: int, D: int, r: int, dtype: torch.dtype, device, h_scale: float = 1.0,
                seed: int = 0, x_dtype: torch.dtype | None = None,
                w_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Random inputs with NONZERO up-projections and gates (zero ones would hide most bugs).

    ``h_scale`` scales the down-projections: pre-activations ~ N(0, h_scale^2), so h ~ h_scale and the attention
    scores h_v h_a^T ~ r * h_scale^2. u is in ``dtype``; mixed precision as under autocast: x in ``x_dtype`` and the
    weights, biases and gates (master parameters) in ``w_dtype`` (both default to ``dtype``).
    """
    g = torch.Generator().manual_seed(seed)

    def rn(*shape, std=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * std

    def gate():  # |gate| in [0.5, 1.5), random sign
        sign = 1.0 if float(torch.rand((), generator=g)) > 0.5 else -1.0
        return (torch.rand((), generator=g, dtype=torch.float64) + 0.5) * sign

    t = {"u_v": rn(G, N_v, D), "u_a": rn(G, N_a, D), "x_v": rn(G, N_v, D), "x_a": rn(G, N_a, D)}
    for m in ("v", "a"):
        t[f"w_down_{m}"] = rn(r, D, std=h_scale / D**0.5)
        t[f"b_down_{m}"] = rn(r, std=0.1 * h_scale)
        t[f"w_up_{m}"] = rn(D, r, std=r**-0.5)
        t[f"b_up_{m}"] = rn(D, std=0.1)
    t["alpha"], t["beta"] = gate(), gate()
    dtypes = dict.fromkeys(NAMES[4:], w_dtype or dtype) | dict.fromkeys(("x_v", "x_a"), x_dtype or dtype)
    return {k: t[k].to(device=device, dtype=dtypes.get(k, dtype)) for k in NAMES}


def autocast_rounded(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The values the math is defined on: weights and biases rounded to u's dtype, as autocast rounds the weight and
    bias of a 16-bit F.linear (a no-op when they already have it); u, x and the gates as they are."""
    cdt = inputs["u_v"].dtype
    return {k: v.to(cdt) if k in WEIGHTS else v for k, v in inputs.items()}


def run(fn, inputs: dict[str, torch.Tensor], grads: tuple[torch.Tensor, torch.Tensor], a2v: bool, v2a: bool,
        dtype: torch.dtype | None = None):  # fmt: skip
    """Forward + backward of ``fn`` on leaf copies of ``inputs`` (cast to ``dtype``). Returns (outputs, grads)."""
    leaves = {k: v.detach().to(dtype or v.dtype).requires_grad_() for k, v in inputs.items()}
    outs = fn(*(leaves[k] for k in NAMES), a2v=a2v, v2a=v2a)
    torch.autograd.backward(outs, [g.to(o.dtype) for o, g in zip(outs, grads)])
    return [o.detach() for o in outs], {k: v.grad for k, v in leaves.items()}


def check(actual: torch.Tensor | None, expected: torch.Tensor | None, dtype: torch.dtype, name: str,
          atol: float | None = None) -> float:  # fmt: skip
    """Scale-aware closeness (see module docstring). Returns the max scaled abs error."""
    if expected is None:  # a disabled gate: the reference never reads it
        assert actual is None or not bool(actual.abs().gt(0).any()), f"{name}: expected no gradient, got {actual}"
        return 0.0
    assert actual is not None, f"{name}: missing gradient"
    assert torch.isfinite(actual).all(), f"{name} has NaN/Inf"
    table_atol, rtol = ava.tolerance(dtype, actual.device)
    scale = max(1.0, float(expected.abs().max()))
    assert_close(actual / scale, expected / scale, atol or table_atol, rtol, name=f"{name} (divided by {scale:.3g})")
    return scaled_err(actual, expected)


def scaled_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected).abs().max()) / max(1.0, float(expected.abs().max()))


def compare(case, dtype, device, a2v=True, v2a=True, h_scale=1.0, fn=ava.av_adapter, baseline=False,
            x_dtype=None, w_dtype=None) -> float:  # fmt: skip
    """Kernel vs the fp64 reference on the same inputs, outputs and all gradients, and their dtypes.

    ``dtype`` is u's (the compute dtype, whose tolerance row applies); ``x_dtype`` / ``w_dtype`` give mixed
    precision (see ``make_inputs``). The reference reads fp64 copies of the values the kernel computes on:
    weights and biases rounded to ``dtype`` (``autocast_rounded``), u, x, gates and upstream gradients unchanged.
    Outputs must come in x's dtype, each gradient in its input's dtype (fp32 for fp32 master weights).
    ``baseline=True`` (ill-conditioned inputs): the tolerance of each tensor is widened to 5x the error that the
    torch contract itself makes when evaluated in ``dtype``, if that is larger than the table's atol.
    """
    G, N_v, N_a, D, r = case
    inputs = make_inputs(G, N_v, N_a, D, r, dtype, device, h_scale=h_scale, x_dtype=x_dtype, w_dtype=w_dtype)
    reason = ava.supports(*(inputs[k] for k in NAMES), a2v=a2v, v2a=v2a)
    if reason is not None:
        pytest.skip(reason)
    out_dtype = x_dtype or dtype
    grads = (torch.randn(G, N_v, D, device=device).to(out_dtype), torch.randn(G, N_a, D, device=device).to(out_dtype))
    outs, dgrads = run(fn, inputs, grads, a2v, v2a)
    ref_outs, ref_grads = run(torch_ops.av_adapter, autocast_rounded(inputs), grads, a2v, v2a, dtype=torch.float64)
    assert [o.dtype for o in outs] == [inputs["x_v"].dtype, inputs["x_a"].dtype], "outputs must have x's dtype"
    for k in NAMES:
        assert dgrads[k] is None or dgrads[k].dtype == inputs[k].dtype, f"grad {k}: {dgrads[k].dtype}, not its input's"
    actual = dict(zip(("out_v", "out_a"), outs)) | {f"grad {k}": dgrads[k] for k in NAMES}
    expected = dict(zip(("out_v", "out_a"), ref_outs)) | {f"grad {k}": ref_grads[k] for k in NAMES}
    allowed = dict.fromkeys(actual, None)
    if baseline:
        base_outs, base_grads = run(torch_ops.av_adapter, inputs, grads, a2v, v2a)
        base = dict(zip(("out_v", "out_a"), base_outs)) | {f"grad {k}": base_grads[k] for k in NAMES}
        for k, b in base.items():
            if b is not None and expected[k] is not None and torch.isfinite(b).all():
                allowed[k] = max(ava.tolerance(dtype, device)[0], 5 * scaled_err(b, expected[k]))
    worst = max(check(actual[k], expected[k], dtype, k, allowed[k]) for k in actual)
    if os.environ.get("AVA_REPORT"):
        mix = f" x {x_dtype} w {w_dtype}" if x_dtype or w_dtype else ""
        print(f"\nAVA_REPORT {dtype}{mix} {case} a2v={a2v} v2a={v2a} h_scale={h_scale}: max scaled err {worst:.3e}")
    return worst


# Blocks (av_adapter._INTERPRETER_LAUNCH): 64 query rows forward, 32 or 64 in the attention backward, 32 keys per
# step, D in chunks of 64. Token counts are never multiples of them: 197 tokens = 4..7 row or key blocks, 49 = 2, 5
# and 17 = 1.
TOKENS = [(50, 49), (197, 49), (17, 5), (49, 197)]  # (N_v, N_a); the last has audio longer than video
DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("G,D", [(1, 64), (3, 128)], ids=["G1-D64", "G3-D128"])  # G x D in pairs: CPU time
@pytest.mark.parametrize("r", [24, 48, 96], ids=lambda r: f"r{r}")
@pytest.mark.parametrize("tokens", TOKENS, ids=lambda t: f"Nv{t[0]}-Na{t[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_fp64_reference(dtype, tokens, r, G, D, device):
    compare((G, *tokens, D, r), dtype, device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_d_not_multiple_of_block(dtype, device):
    compare((2, 33, 20, 80, 40), dtype, device)  # D = 80: the second 64-wide D chunk is masked; r = 40 in 64


@pytest.mark.parametrize("C, r", swin_shapes.adapter_widths(), ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_swin_stage_widths_per_window(dtype, C, r, device):
    """Every Swin preset's per-stage (C, r) (r = 16 ... 128, mostly not powers of two), on 7 x 7 windows: the
    spatial AV-Adapter pairs 49 video with 49 audio tokens per window (G = 2 windows here)."""
    compare((2, 49, 49, C, r), dtype, device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [(1, 196, 196, 512, 32), (1, 147, 98, 128, 16), (1, 33, 70, 1536, 96)],
                         ids=lambda c: "N{}x{}-C{}-r{}".format(*c[1:]))  # fmt: skip
def test_swin_global_adapter_over_the_stage_map(dtype, case, device):
    """The global AV-Adapter over a whole stage map (stage 3: 14 x 14 = 196 tokens; odd counts too: the stage-1
    map of 3,136 tokens is a GPU case)."""
    compare(case, dtype, device)


def _candidate_sets():
    """Per padded bottleneck (r = 24, 48, 96 in 32- to 128-wide blocks), the launch sets that together hold every GPU
    candidate (``av_adapter.gpu_launch_sets``)."""
    for r in (24, 48, 96):
        for i, launches in enumerate(ava.gpu_launch_sets(r=r)):
            yield pytest.param(r, launches, id=f"r{r}-cand{i}")


@pytest.mark.parametrize("r,launches", list(_candidate_sets()))
def test_every_gpu_launch_candidate(r, launches, device):
    """Every launch the GPU autotuner may pick computes the same (fp32: block shapes change indexing and masking,
    not arithmetic). 50 video rows = 1..4 row blocks, 33 audio keys = 1..3 key blocks, D = 96 = a full and a masked
    64-wide chunk."""
    with ava.force_launch(**launches):
        assert all(ava.launch_candidates(step, r) == (launch,) for step, launch in launches.items())
        compare((2, 50, 33, 96, r), torch.float32, device)
        for step, launch in launches.items():  # what the autotuners actually ran
            ran = list(ava._KERNELS[step].cache.values())
            assert ran and all(c.all_kwargs() == ava._config(launch, step).all_kwargs() for c in ran), (step, ran)


def test_launch_candidates(monkeypatch):
    """The interpreter runs one launch per step, the GPU its candidates (the first only with autotuning off), and
    force_launch overrides both and restores them."""
    monkeypatch.setattr(ava, "_interpreted", lambda: True)
    assert ava.launch_candidates("attn_bwd", 96) == (ava._INTERPRETER_LAUNCH[128]["attn_bwd"],)
    monkeypatch.setattr(ava, "_interpreted", lambda: False)
    assert ava.launch_candidates("attn_bwd", 96) == ava._GPU_LAUNCH[128]["attn_bwd"]
    assert len(ava.launch_candidates("attn_fwd", 24)) > 1
    monkeypatch.setenv("STGCMA_FAST_AUTOTUNE", "0")
    assert ava.launch_candidates("attn_bwd", 96) == ava._GPU_LAUNCH[128]["attn_bwd"][:1]
    forced = ava._Launch(16, 16, 4, 1)
    with ava.force_launch(attn_bwd=forced):
        assert ava.launch_candidates("attn_bwd", 48) == (forced,)
        assert ava.launch_candidates("down", 48) == ava._GPU_LAUNCH[64]["down"][:1]
    assert ava.launch_candidates("attn_bwd", 48) == ava._GPU_LAUNCH[64]["attn_bwd"][:1]
    with pytest.raises(ValueError, match="expected steps among"):
        with ava.force_launch(attention=forced):
            pass
    with pytest.raises(ValueError, match="expected step in"):
        ava.launch_candidates("attention", 48)


@pytest.mark.parametrize("a2v,v2a", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_direction_flags(a2v, v2a, dtype, device):
    # 70 video rows = 2 or 3 row blocks; 32-key blocks: 2 for the 33 audio keys, 3 for the 70 video keys.
    compare((2, 70, 33, 64, 96), dtype, device, a2v=a2v, v2a=v2a)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_scores(dtype, device):
    """max |h| ~ 1e2, max |score| ~ 1e4: the online max-subtracted softmax stays finite and as exact as inputs allow.

    Softmax near-ties make these inputs ill-conditioned: a different fp32 summation order of the pre-activations
    moves near-tied scores (~1e4) by ~1e-3 and the softmax gradient with them. torch itself in fp32 is ~1e-3 (scaled)
    off the fp64 result in the gradients of u and W_d, the kernel 1e-3..3e-3 depending on its block sizes, so the
    tolerance is the table's or 5x torch's own error in this dtype.
    """
    case = (2, 197, 49, 64, 48)
    inputs = make_inputs(*case, torch.float64, "cpu", h_scale=20.0)
    h_v = torch.nn.functional.gelu(torch.nn.functional.linear(inputs["u_v"], inputs["w_down_v"], inputs["b_down_v"]))
    h_a = torch.nn.functional.gelu(torch.nn.functional.linear(inputs["u_a"], inputs["w_down_a"], inputs["b_down_a"]))
    assert float(h_v.abs().max()) > 50 and float((h_v @ h_a.transpose(1, 2)).abs().max()) > 1e4  # really large
    compare(case, dtype, device, h_scale=20.0, baseline=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bug", ["alpha+1%", "b_up_v+eps", "w_down_a-row0"])
def test_tolerances_catch_small_bugs(dtype, bug, device):
    """The tolerance table is tight enough to fail on small, plausible mistakes (eps: a few output ulps in fp16; in
    fp32 twenty times the row's atol, i.e. about 2.5 times the tolerance at |out| ~ 8)."""
    atol = ava.tolerance(dtype, device)[0]

    def buggy(*args, a2v, v2a):
        args = list(args)
        if bug == "alpha+1%":
            args[12] = args[12] * 1.01
        elif bug == "b_up_v+eps":  # |out| ~ 8: fp16 ulp there is 4e-3
            args[7] = args[7] + (0.02 if dtype == torch.float16 else 20 * atol)
        else:  # one bottleneck channel of the audio down-projection dropped
            args[8] = torch.cat([torch.zeros_like(args[8][:1]), args[8][1:]])
        return ava.av_adapter(*args, a2v=a2v, v2a=v2a)

    with pytest.raises(AssertionError):
        compare((2, 50, 49, 64, 48), dtype, device, fn=buggy)


def test_tolerance_follows_the_dot_precision():
    """The fp32 row is that of the precision the fp32 dots run at, IEEE in the interpreter (CPU tensors) and tf32x3 on
    a GPU: K u_d / 2 with K = 1536 (the longest reduction tested) and u_d = u (IEEE) or 13 u (tf32x3), u = 2^-24; the
    16-bit rows do not depend on it (their own rounding dominates)."""
    u = 2.0**-24
    assert ava.dot_precision(torch.float32, "cpu") == "ieee" == ava.dot_precision(torch.float64, "cuda")
    if torch.version.hip is None:
        assert ava.dot_precision(torch.float32, "cuda") == "tf32x3" == ava._dot_precisions(torch.float32)[1]
        assert ava.tolerance(torch.float32, "cuda") == ava.TOLERANCES[(torch.float32, "tf32x3")]
    assert ava.tolerance(torch.float32, "cpu") == ava.TOLERANCES[(torch.float32, "ieee")]
    assert ava.TOLERANCES[(torch.float32, "ieee")][0] == pytest.approx(1536 * u / 2, rel=0.1)
    assert ava.TOLERANCES[(torch.float32, "tf32x3")][0] == pytest.approx(1536 * 13 * u / 2, rel=0.05)
    for dtype in (torch.float16, torch.bfloat16):
        assert ava.TOLERANCES[(dtype, "ieee")] == ava.TOLERANCES[(dtype, "tf32x3")]
        assert ava.TOLERANCES[(dtype, "ieee")][0] > 3 * ava.TOLERANCES[(torch.float32, "tf32x3")][0]


def test_custom_op_matches_reference(device):
    """Eager calls run AVAdapterFunction (see eager_autograd); the custom op, which torch.compile traces, runs the same
    launchers."""
    fn = lambda *args, a2v, v2a: ava._av_adapter_op(*args, a2v, v2a, True)[:2]  # noqa: E731
    compare((2, 50, 49, 64, 48), torch.float32, device, fn=fn)


# ---------------------------------------------------------------------------------------------------------------
# Mixed precision, as under torch.autocast: 16-bit u (outputs of frozen linears), fp32 residual x, fp32 master
# weights. fp16 on CPU (the interpreter cannot run bf16 dots), bf16 on the GPU below.
# ---------------------------------------------------------------------------------------------------------------

F16, F32 = torch.float16, torch.float32
MIXED = [(F32, F32), (F16, F32), (F32, F16)]  # (x dtype, weight dtype) with fp16 u


@pytest.mark.parametrize("case,flags", [((2, 50, 33, 64, 48), (True, True)), ((1, 17, 5, 80, 24), (True, False))],
                         ids=["G2-Nv50-Na33-D64-r48", "G1-Nv17-Na5-D80-r24-a2v"])  # fmt: skip
@pytest.mark.parametrize("x_dtype,w_dtype", MIXED, ids=lambda d: str(d).removeprefix("torch."))
def test_mixed_precision_matches_fp64_reference(x_dtype, w_dtype, case, flags, device):
    """fp16 u with an fp32 residual and / or fp32 master weights, against fp64 on the fp16-rounded weights (the
    values autocast computes on); outputs in x's dtype, gradients in each input's own dtype; fp16 tolerance row."""
    compare(case, F16, device, *flags, x_dtype=x_dtype, w_dtype=w_dtype)


def test_master_weights_are_rounded_like_autocast(device):
    """fp32 master weights give bit for bit the outputs and input gradients of the same weights pre-rounded to fp16
    (the kernel rounds them on load, as autocast's F.linear does); only the weight gradients differ: fp32 vs the
    fp16-rounded result of an fp16 GEMM."""
    master = make_inputs(2, 50, 33, 64, 48, F16, device, x_dtype=F32, w_dtype=F32)
    grads = (torch.randn(2, 50, 64, device=device), torch.randn(2, 33, 64, device=device))
    outs, dgrads = run(ava.av_adapter, master, grads, True, True)
    outs16, dgrads16 = run(ava.av_adapter, autocast_rounded(master), grads, True, True)
    for name, a, e in zip(("out_v", "out_a"), outs, outs16):
        assert_close(a, e, 0.0, 0.0, name=name)
    for k in NAMES:
        if k in WEIGHTS:
            assert (dgrads[k].dtype, dgrads16[k].dtype) == (F32, F16), k
            check(dgrads[k], dgrads16[k].double(), F16, f"grad {k}")
        else:
            assert_close(dgrads[k], dgrads16[k], 0.0, 0.0, name=f"grad {k}")


def test_under_autocast_matches_torch_dtypes(device):
    """The op called inside ``torch.autocast`` (as FastSTGCMA calls it) on what autocast hands it: u from a frozen
    F.linear (fp16), fp32 residual, fp32 adapter parameters. Outputs and every gradient (down to the frozen linear's
    input) have the dtypes the torch path gives under the same autocast; the values are fp64-exact to the fp16
    row, and within 1e-2 (scaled) of the torch autocast path, which itself computes h and the attention in fp16."""
    if device.type == "cpu" and not torch.amp.is_autocast_available("cpu"):
        pytest.skip("no CPU autocast")
    G, N_v, N_a, D, r = 2, 50, 33, 64, 48
    params = {k: v for k, v in make_inputs(G, N_v, N_a, D, r, F32, device).items() if k not in ("u_v", "u_a")}
    g = torch.Generator().manual_seed(1)
    src = {m: torch.randn(G, n, D, generator=g).to(device) for m, n in (("v", N_v), ("a", N_a))}
    frozen = torch.randn(D, D, generator=g).to(device) / D**0.5
    grads = (torch.randn(G, N_v, D, generator=g).to(device), torch.randn(G, N_a, D, generator=g).to(device))

    def model_step(fn):
        leaves = {k: v.clone().requires_grad_() for k, v in (params | {f"src_{m}": t for m, t in src.items()}).items()}
        with torch.autocast(device.type, dtype=F16):
            u_v, u_a = (torch.nn.functional.linear(leaves[f"src_{m}"], frozen) for m in ("v", "a"))
            assert u_v.dtype == F16
            outs = fn(u_v, u_a, *(leaves[k] for k in NAMES[2:]))
        torch.autograd.backward(outs, list(grads))
        return outs, u_v, u_a, {k: v.grad for k, v in leaves.items()}

    outs, u_v, u_a, dgrads = model_step(ava.av_adapter)
    t_outs, _, _, t_grads = model_step(torch_ops.av_adapter)
    assert [o.dtype for o in outs] == [o.dtype for o in t_outs] == [F32, F32]
    assert {k: v.dtype for k, v in dgrads.items()} == {k: v.dtype for k, v in t_grads.items()}
    exact = dict(zip(NAMES, (u_v.detach(), u_a.detach()))) | {k: params[k] for k in NAMES[2:]}
    ref_outs, _ = run(torch_ops.av_adapter, autocast_rounded(exact), grads, True, True, dtype=torch.float64)
    for name, a, t, e in zip(("out_v", "out_a"), outs, t_outs, ref_outs):
        check(a.detach(), e, F16, name)
        check(a.detach(), t.detach().double(), F16, f"{name} vs torch autocast", atol=1e-2)
    for k, v in dgrads.items():
        check(v, t_grads[k].double(), F16, f"grad {k} vs torch autocast", atol=1e-2)


def test_fake_dtypes_mixed():
    """register_fake of both ops gives the real dtypes and shapes for mixed inputs (what torch.compile traces)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    real = make_inputs(2, 17, 5, 64, 24, F16, "cpu", x_dtype=F32, w_dtype=F32)
    real["x_a"] = real["x_a"].half()  # one residual fp32, the other fp16
    with FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) for k, v in real.items()}
        res = torch.ops.stgcma_fast.av_adapter(*(fake[k] for k in NAMES), True, True)
        assert [res[0].dtype, res[1].dtype] == [F32, F16]
        assert all(t.dtype == F32 for t in res[2:])
        grads = torch.ops.stgcma_fast.av_adapter_backward(
            res[0], res[1], fake["u_v"], fake["u_a"], *(fake[k] for k in NAMES[4:]), *res[2:], True, True
        )
        inputs = ("u_v", "u_a", *WEIGHTS, "alpha", "beta")
        assert [(t.dtype, tuple(t.shape)) for t in grads] == [(real[k].dtype, tuple(real[k].shape)) for k in inputs]


def test_gradcheck_float64():
    """Numerical vs analytic gradients of every input in float64 (interpreter only: fp64 is not a GPU target).

    fast_mode: the full Jacobian (~800 inputs) takes ~2 minutes under the interpreter; it passed when run once.
    """
    inputs = make_inputs(2, 5, 3, 16, 8, torch.float64, "cpu", h_scale=1.0)
    reason = ava.supports(*(inputs[k] for k in NAMES))
    if reason is not None:
        pytest.skip(reason)
    for a2v, v2a in ((True, True), (True, False), (False, True), (False, False)):
        leaves = [inputs[k].clone().requires_grad_() for k in NAMES]
        fn = lambda *t, a2v=a2v, v2a=v2a: ava.av_adapter(*t, a2v=a2v, v2a=v2a)  # noqa: E731
        assert torch.autograd.gradcheck(fn, leaves, fast_mode=True), (a2v, v2a)


@pytest.mark.parametrize("a2v,v2a,mixed", [(True, True, False), (False, True, False), (True, True, True)],
                         ids=["both", "v2a", "both-mixed"])  # fmt: skip
def test_torch_compile_fullgraph(a2v, v2a, mixed):
    """The custom op traces with zero graph breaks (fullgraph=True) and gives the eager result, forward and backward;
    ``mixed``: fp16 u, fp32 residual and master weights (the fakes must give the real dtypes)."""
    dtypes = dict(dtype=F16, x_dtype=F32, w_dtype=F32) if mixed else dict(dtype=F32)
    inputs = make_inputs(2, 17, 5, 64, 24, device="cuda" if torch.cuda.is_available() else "cpu", **dtypes)
    if (reason := ava.supports(*(inputs[k] for k in NAMES))) is not None:
        pytest.skip(reason)

    def fn(*args, a2v=a2v, v2a=v2a):
        out_v, out_a = ava.av_adapter(*args, a2v=a2v, v2a=v2a)
        return out_v * 2.0, out_a.relu()

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*(inputs[k] for k in NAMES))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    grads = (torch.randn_like(inputs["u_v"]), torch.randn_like(inputs["u_a"]))
    outs, dgrads = run(compiled, inputs, grads, a2v, v2a)
    ref_outs, ref_grads = run(fn, inputs, grads, a2v, v2a)
    for name, a, e in zip(("out_v", "out_a"), outs, ref_outs):
        assert a.dtype == e.dtype, name
        assert_close(a, e, 0.0, 0.0, name=name)
    for k in NAMES:
        assert dgrads[k] is None or dgrads[k].dtype == inputs[k].dtype, f"grad {k}"
        if ref_grads[k] is None:
            assert dgrads[k] is None or not dgrads[k].any(), f"grad {k}: expected none"
        else:
            assert_close(dgrads[k], ref_grads[k], 1e-6, 1e-6, name=f"grad {k}")
    torch._dynamo.reset()


def _bad(dtype=torch.float32, **over):
    inputs = make_inputs(1, 17, 5, 64, 24, dtype, "cpu")
    inputs.update(over)
    return [inputs[k] for k in NAMES]


BF16 = torch.bfloat16


@pytest.mark.parametrize(
    "dtype,over,reason",
    [
        (F32, dict(x_v=torch.zeros(1, 16, 64)), "x_v of shape (1, 17, 64)"),
        (F32, dict(u_a=torch.zeros(1, 5, 32)), "u_a of shape (1, 5, 64)"),
        (F32, dict(w_up_a=torch.zeros(64, 24, dtype=F16)),
         "expected w_up_a of dtype torch.float32 (the dtype of u_v), got torch.float16"),
        (F32, dict(x_v=torch.zeros(1, 17, 64, dtype=F16)),
         "expected x_v of dtype torch.float32 (the dtype of u_v), got torch.float16"),
        (F16, dict(w_up_a=torch.zeros(64, 24, dtype=BF16)), "expected w_up_a of dtype torch.float16 (the dtype of "
         "u_v) or torch.float32 (master weights, mixed precision), got torch.bfloat16"),
        (F16, dict(x_a=torch.zeros(1, 5, 64, dtype=torch.float64)), "expected x_a of dtype torch.float16 (the dtype "
         "of u_v) or torch.float32 (residual, mixed precision), got torch.float64"),
        (F16, dict(u_a=torch.zeros(1, 5, 64)), "expected u_a of dtype torch.float16 (the dtype of u_v), got "
         "torch.float32"),
        (F32, dict(u_v=torch.zeros(1, 17, 64, dtype=torch.int32)), "expected u_v of a floating dtype"),
        (F32, dict(alpha=torch.zeros(2)), "alpha to be a scalar"),
    ],
    ids=["x_v-shape", "u_a-D", "w_up_a-dtype", "x_v-dtype", "w_up_a-bf16-with-fp16", "x_a-fp64-with-fp16",
         "u_a-dtype", "u_v-int", "alpha-shape"],
)  # fmt: skip
def test_launcher_raises_and_supports_refuses(dtype, over, reason):
    args = _bad(dtype, **over)
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        ava.av_adapter_forward(*args)
    assert reason in (ava.supports(*args) or "")


def test_supports_reasons(monkeypatch):
    ok = make_inputs(1, 17, 5, 64, 24, torch.float32, "cpu")
    monkeypatch.setattr(ava, "_interpreted", lambda: True)
    assert ava.supports(*ok.values()) is None
    big = make_inputs(1, 3, 2, 64, 300, torch.float32, "cpu")
    assert ava.supports(*big.values()) == f"r=300 > {ava.MAX_BOTTLENECK}"
    bf16 = {k: v.to(torch.bfloat16) for k, v in ok.items()}
    wrong_dots = "dtype bfloat16 unsupported (the Triton interpreter computes bf16 tl.dot wrong)"
    assert wrong_dots in ava.supports(*bf16.values())
    mixed = make_inputs(1, 17, 5, 64, 24, F16, "cpu", x_dtype=F32, w_dtype=F32)
    assert ava.supports(*mixed.values()) is None
    mixed_bf16 = make_inputs(1, 17, 5, 64, 24, BF16, "cpu", x_dtype=F32, w_dtype=F32)
    assert wrong_dots in ava.supports(*mixed_bf16.values())
    meta = {k: v.to("meta") for k, v in ok.items()}
    assert "device meta unsupported" in ava.supports(*meta.values())
    monkeypatch.setattr(ava, "_interpreted", lambda: False)
    assert ava.supports(*ok.values()) == "device cpu needs TRITON_INTERPRET=1"


def test_kernel_modules_share_one_capability_layout():
    """The five kernel modules declare the same policy names (the dispatcher and the self-test read them), decide
    the interpreter from their own kernels and refuse devices and dtypes with the one shared helper."""
    import importlib

    for name in ("av_adapter", "t_adapter", "temporal_attention", "quick_gelu", "layer_norm"):
        mod = importlib.import_module(f"stgcma_fast.kernels.{name}")
        assert mod.AUTO_DEVICES == ("cuda",) and mod.GPU_VALIDATED in (True, False), name
        assert set(mod.INTERPRETER_DTYPES) >= {torch.float32, torch.float16, torch.float64}, name
        assert set(mod.DTYPES) == {torch.float32, torch.float16, torch.bfloat16}, name
        assert mod._interpreted() is True, name  # tests/conftest.py sets TRITON_INTERPRET=1 before the import
        assert callable(mod.supports) and callable(mod.tolerance) and callable(mod.gpu_launch_sets), name
        assert callable(mod.force_launch), name
        assert "device_dtype_refusal" in vars(mod), name


# ---------------------------------------------------------------------------------------------------------------
# sm_90 builds without a GPU (see compile_check): every kernel as the launchers specialise it.
# ---------------------------------------------------------------------------------------------------------------

_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
TRAINING = (True, True, True)  # (a2v, v2a, save): both directions, the forward saves for backward
# Per test case (one process each, < 20 s on 2 cores with a cold Triton cache): the (u, x, weights and biases) dtypes,
# each compute dtype alone and 16-bit u in the autocast mix (fp32 x, weights and biases: every pointer at its fp32
# dtype at once; the per-parameter mixes read the same loads, one pointer at a time), and the (a2v, v2a, save) modes.
SM90_CASES = {
    "fp32": ([(F32, F32, F32)], [TRAINING]),
    "fp16": ([(F16, F16, F16), (F16, F32, F32)], [TRAINING]),
    "bf16": ([(BF16, BF16, BF16), (BF16, F32, F32)], [TRAINING]),
    # The fusions "a2v", "v2a", "none" (config.FUSIONS) and inference (save=False), in the bf16 autocast mix: the
    # variants that only they run.
    "bf16-other-modes": ([(BF16, F32, F32)], [m for m in itertools.product((True, False), repeat=3) if m != TRAINING]),
    # Swin in the bf16 autocast mix at its own widths and token counts (SWIN_SM90_SHAPES): every candidate.
    "swin-bf16": ([(BF16, F32, F32)], [TRAINING]),
}


# The cases whose every autotune candidate is compiled (the others compile each step's first, its default).
ALL_CANDIDATES = ("fp32", "bf16", "swin-bf16")
# The model shape each padded bottleneck is compiled at (what the JIT specialises: sizes that are multiples of 16),
# a training batch of 8 clips x 10 frames (G = 80): B/16 Base (r = 96), L/14 Base (r = 64), B/16 Tiny (r = 24).
SM90_SHAPES = {128: dict(G=80, N_v=197, N_a=49, D=768, r=96), 64: dict(G=80, N_v=257, N_a=64, D=1024, r=64),
               32: dict(G=80, N_v=197, N_a=49, D=768, r=24)}  # fmt: skip
# Swin, 8 clips x 10 frames: the Swin-B Base stage-1 global adapter (3,136 tokens, C = 128, r = 32), Base stage 2
# per 7 x 7 window (64 windows of 49 tokens a frame at 28 x 28, C = 256, r = 64), Base stage 4 (C = 1024, r = 128).
SWIN_SM90_SHAPES = {128: dict(G=80, N_v=49, N_a=49, D=1024, r=128), 64: dict(G=80 * 16, N_v=49, N_a=49, D=256, r=64),
                    32: dict(G=80, N_v=3136, N_a=3136, D=128, r=32)}  # fmt: skip


def _sm90_values(step: str, G: int, N_v: int, N_a: int, D: int, r: int) -> dict[str, int]:
    """The integer arguments the launchers pass to ``step``'s kernel for the video rows (X = video, Y = audio)."""
    rows = {"down": {"n_rows": G * N_v}, "attn_fwd": {"n_q": N_v, "n_kv": N_a}, "up_bwd": {"n_rows": G * N_v},
            "attn_bwd": {"n_x": N_v, "n_y": N_a}}  # fmt: skip
    return rows[step] | {"D": D, "R": r}


def _launch_flags(modes: list[tuple[bool, bool, bool]]) -> dict[str, list[dict[str, bool]]]:
    """The flag constexprs of each ``_GPU_LAUNCH`` step, as the launchers derive them from (a2v, v2a, save)."""
    flags: dict[str, list[dict[str, bool]]] = {"down": [], "attn_fwd": [], "up_bwd": [], "attn_bwd": []}
    for a2v, v2a, save in modes:
        flags["down"].append({"SAVE": save})
        for on in (a2v, v2a):  # video, then audio
            flags["attn_fwd"].append({"HAS_ATTN": on, "SAVE": save})
            if save:  # backward runs only after a forward that saved for it
                flags["up_bwd"].append({"HAS_ATTN": on})
        for q_on, kv_on in ((a2v, v2a), (v2a, a2v)) if save else ():  # X = video, then X = audio
            flags["attn_bwd"].append({"Q_ON": q_on, "KV_ON": kv_on, "ANY_ATTN": q_on or kv_on})
    return {step: [f for i, f in enumerate(fs) if f not in fs[:i]] for step, fs in flags.items()}


def _sm90_specs(case: str) -> list[KernelSpec]:
    """The four kernels with the constexprs and launch options that ``av_adapter_forward`` / ``_backward`` pass, at
    the integer values of ``SM90_SHAPES`` (so specialised as the JIT specialises them), for every ``_GPU_LAUNCH``
    candidate (BLOCK_R = 128, 64, 32: the biggest first, so that the workers finish
    together; only each step's first outside ``ALL_CANDIDATES``) and the dtypes and modes of ``SM90_CASES[case]``."""
    dtypes, modes = SM90_CASES[case]
    shapes = SWIN_SM90_SHAPES if case.startswith("swin") else SM90_SHAPES
    flags = _launch_flags(modes)
    if TRAINING not in modes:  # leave out what the training cases compile
        training = _launch_flags([TRAINING])
        flags = {step: [f for f in fs if f not in training[step]] for step, fs in flags.items()}
    kernels = {"down": ava._down_gelu_kernel, "attn_fwd": ava._attn_up_kernel, "up_bwd": ava._bwd_up_kernel,
               "attn_bwd": ava._bwd_attn_down_kernel}  # fmt: skip
    specs = []
    for cdt, xdt, wdt in dtypes:
        u, x, w = (f"*{_TRITON_TYPES[t]}" for t in (cdt, xdt, wdt))
        f = "*fp32"  # the ACC dtype (fp32 for every GPU dtype): pre, h, O, LSE, dh', rowdot, gates
        dpre = f"*{_TRITON_TYPES[torch.promote_types(wdt, cdt)]}"
        prec, att_prec = ava._dot_precisions(cdt)
        sigs = {
            "down": {"U": u, "W": w, "B": w, "PRE": f, "H": f, "n_rows": "i32", "D": "i32", "R": "i32"},
            "attn_fwd": {"HQ": f, "HK": f, "U": u, "X": x, "WU": w, "BU": w, "GATE": f, "OUT": x, "ATT": f, "LSE": f,
                         "n_q": "i32", "n_kv": "i32", "D": "i32", "R": "i32"},
            "up_bwd": {"DOUT": x, "WU": w, "PRE": f, "ATT": f, "GATE": f, "DHP": f, "HP": u, "ROWDOT": f,
                       "n_rows": "i32", "D": "i32", "R": "i32"},
            "attn_bwd": {**dict.fromkeys(("PREX", "PREY", "DHPX", "DHPY", "LSEX", "LSEY", "RDX", "RDY", "GATE_X",
                                          "GATE_Y"), f),
                         "WD": w, "DOUT": x, "DPRE": dpre, "DU": u, "n_x": "i32", "n_y": "i32", "D": "i32", "R": "i32"},
        }  # fmt: skip
        for block_r in sorted(ava._GPU_LAUNCH, reverse=True):
            for step, launches in ava._GPU_LAUNCH[block_r].items():
                for c in launches if case in ALL_CANDIDATES else launches[:1]:
                    consts = {"BLOCK_M": c.block_m, "BLOCK_R": block_r, "BLOCK_D": ava.BLOCK_D,
                              "CDT": ava._TL_DTYPES[cdt], "ACC": tl.float32, "PROJ_PREC": prec}  # fmt: skip
                    if step.startswith("attn"):  # the attention kernels: key blocks and the r-wide dot precision
                        consts |= {"BLOCK_N": c.block_n, "ATT_PREC": att_prec}
                    for flag in flags[step]:
                        label = ", ".join([f"u {cdt}, x {xdt}, w {wdt}".replace("torch.", ""), f"BLOCK_R={block_r}",
                                           f"BLOCK_M={c.block_m}", *([f"BLOCK_N={c.block_n}"] if c.block_n else []),
                                           *(f"{k}={v}" for k, v in flag.items())])  # fmt: skip
                        specs.append(KernelSpec(kernels[step], sigs[step], {**flag, **consts}, c.num_warps,
                                                c.num_stages, label=label,
                                                values=_sm90_values(step, **shapes[block_r])))  # fmt: skip
    return specs


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SM90_CASES))
def test_kernels_compile_for_sm90_without_a_gpu(case):
    """The four AV-Adapter kernels compile to sm_90 cubins, which the interpreter cannot check (see compile_check)."""
    compile_in_subprocess(_sm90_specs, case)


# ---------------------------------------------------------------------------------------------------------------
# GPU (skipped with a reason on CPU by conftest): real compilation, bf16, model-sized shapes, inductor.
# ---------------------------------------------------------------------------------------------------------------

GPU_CASES = [
    (4, 197, 49, 768, 96),  # CLIP ViT-B/16 Base
    (2, 197, 49, 768, 24),  # ViT-B/16 Tiny
    (2, 257, 49, 1024, 64),  # ViT-L/14 Base
    (2, 49, 49, 1536, 128),  # Swin-L window, widest D and r
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "G{}-Nv{}-Na{}-D{}-r{}".format(*c))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_gpu_parity(case, dtype):
    compare(case, dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("a2v,v2a", [(True, False), (False, True)])
def test_gpu_direction_flags_bf16(a2v, v2a):
    compare((2, 197, 49, 768, 96), torch.bfloat16, "cuda", a2v=a2v, v2a=v2a)


@pytest.mark.gpu
@pytest.mark.train_mix
@pytest.mark.parametrize("case", GPU_CASES[:2], ids=lambda c: "G{}-Nv{}-Na{}-D{}-r{}".format(*c))
@pytest.mark.parametrize("x_dtype,w_dtype", [(F32, F32), (BF16, F32)], ids=["x-fp32", "x-bf16"])
def test_gpu_mixed_precision_bf16(case, x_dtype, w_dtype):
    """bf16 u with fp32 master weights (and an fp32 or bf16 residual), what bf16 autocast hands the op."""
    compare(case, BF16, "cuda", x_dtype=x_dtype, w_dtype=w_dtype)


@pytest.mark.gpu
@pytest.mark.train_mix
@pytest.mark.parametrize("r,launches", list(_candidate_sets()))
def test_gpu_every_launch_candidate_bf16(r, launches):
    """Every autotune candidate, compiled for the real GPU, in the training mix (bf16 u, fp32 residual and master
    weights) at B/16 shapes (the parity tests above only see the candidate the autotuner picked)."""
    with ava.force_launch(**launches):
        compare((2, 197, 49, 768, r), BF16, "cuda", x_dtype=F32, w_dtype=F32)


@pytest.mark.gpu
def test_gpu_inductor_compile():
    inputs = make_inputs(2, 197, 49, 768, 96, torch.bfloat16, "cuda")
    compiled = torch.compile(ava.av_adapter, fullgraph=True, backend="inductor")
    grads = (torch.randn_like(inputs["u_v"]), torch.randn_like(inputs["u_a"]))
    outs, dgrads = run(compiled, inputs, grads, True, True)
    ref_outs, ref_grads = run(ava.av_adapter, inputs, grads, True, True)
    for name, a, e in zip(("out_v", "out_a"), outs, ref_outs):
        assert_close(a, e, 1e-6, 1e-6, name=name)
    for k in NAMES:
        assert_close(dgrads[k], ref_grads[k], 1e-6, 1e-6, name=f"grad {k}")
