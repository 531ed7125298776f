"""Numerical comparison helpers shared by the tests and the benchmarks."""

from __future__ import annotations

import torch

# Default tolerances per dtype for whole-op comparisons against an fp32/fp64 reference. Ops may declare their own
# tighter or looser tables next to their implementation; tests take them from there.
DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


def describe_mismatch(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, name: str = "") -> str:
    """A one-paragraph report: max abs/rel error, where, how many elements fail, NaN/Inf counts."""
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    diff = (a - e).abs()
    bound = atol + rtol * e.abs()
    bad = ~(diff <= bound)
    finite = torch.isfinite(diff)
    lines = [f"{name or 'tensor'}: shape {tuple(actual.shape)}, {int(bad.sum())} of {bad.numel()} elements outside "
             f"atol={atol:g} rtol={rtol:g}"]
    if finite.any():
        d = torch.where(finite, diff, torch.zeros_like(diff))
        idx = int(d.argmax())
        where = tuple(int(i) for i in torch.unravel_index(torch.tensor(idx), diff.shape)) if diff.dim() else ()
        rel = d / e.abs().clamp_min(1e-12)
        lines.append(f"  max abs err {float(d.max()):.3e} at {where} (actual {float(a.flatten()[idx]):.6g}, "
                     f"expected {float(e.flatten()[idx]):.6g}); max rel err {float(rel.max()):.3e}")
    lines.append(f"  NaN actual/expected: {int(a.isnan().sum())}/{int(e.isnan().sum())}, "
                 f"Inf actual/expected: {int(a.isinf().sum())}/{int(e.isinf().sum())}; "
                 f"expected max |x| {float(e.abs().max()) if e.numel() else 0.0:.3e}")
    return "\n".join(lines)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, name: str = "") -> None:
    """Like ``torch.testing.assert_close`` but with a report that says where and how badly it failed.

    NaN or Inf anywhere in ``actual`` fails unless ``expected`` has it at the same place.
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{name or 'tensor'}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    same_nonfinite = (a.isnan() & e.isnan()) | (a.isinf() & e.isinf() & (a.sign() == e.sign()))
    ok = ((a - e).abs() <= atol + rtol * e.abs()) | same_nonfinite
    if not bool(ok.all()):
        raise AssertionError(describe_mismatch(actual, expected, atol, rtol, name))
