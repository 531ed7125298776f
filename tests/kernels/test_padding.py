"""Every Triton kernel on views inside NaN-filled buffers: no read or write outside its tensors.

A kernel that writes one row past its block, or reads past the end of a row, can go unnoticed on contiguous inputs
(the next row is valid memory) and crash the interpreter only by luck. Here each op runs on

- inputs (and upstream gradients) that are views inside NaN-filled buffers, PAD elements larger on both sides of
  every axis; "strided" layouts also leave a NaN between neighbouring elements of the last axis, which the
  launchers must copy (they read rows with unit channel stride);
- outputs and scratch tensors that the launchers allocate (``torch.empty`` / ``empty_like`` / ``zeros`` in the
  kernel module) placed between NaN guard zones of GUARD elements, the ``empty`` ones NaN-filled themselves.

The pads and the guards hold NaNs with two different payloads (bit patterns), compared bit for bit: a NaN that a
kernel computes from a pad it read past (and writes into a guard past its output) has the pad's payload or the
canonical one, so it still shows. The test asserts that every pad and guard element keeps its bits, that the inputs
still hold their values, and
that the outputs and every gradient equal a run on contiguous copies (a read of a NaN pad, or an output element
left unwritten, would put a NaN there). Small shapes, fp32, under the interpreter without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import triton
import triton.language as tl

from stgcma_fast.kernels import av_adapter, layer_norm, quick_gelu, t_adapter, temporal_attention
from stgcma_fast.testing import assert_close

PAD = 3  # NaN elements before and after the view along every axis
GUARD = 64  # NaN elements before and after every tensor a launcher allocates (256 bytes in fp32)
PAD_TAG, GUARD_TAG = 0x15, 0x2A  # NaN payloads of the pads and of the guards (< 0x40: they fit every float dtype)
# (integer dtype of the same width, quiet-NaN bits): a tagged NaN is these bits | tag
_NAN_BITS = {torch.float16: (torch.int16, 0x7E00), torch.bfloat16: (torch.int16, 0x7FC0),
             torch.float32: (torch.int32, 0x7FC00000), torch.float64: (torch.int64, 0x7FF8000000000000)}
ATOL, RTOL = 1e-6, 1e-6  # same arithmetic on both runs; the torch weight GEMMs may block differently on strided input
LAYOUTS = ("padded", "strided")


def tagged_nans(shape: tuple[int, ...], dtype: torch.dtype, device, tag: int) -> torch.Tensor:
    """A tensor of NaNs whose payload is ``tag``."""
    int_dtype, quiet = _NAN_BITS[dtype]
    return torch.full(shape, quiet | tag, dtype=int_dtype, device=device).view(dtype)


def untagged(t: torch.Tensor, tag: int) -> torch.Tensor:
    """Boolean mask of the elements of ``t`` that are not NaNs with payload ``tag`` (bit for bit)."""
    int_dtype, quiet = _NAN_BITS[t.dtype]
    return t.contiguous().view(int_dtype) != (quiet | tag)


class Padded:
    """``t``'s values as a view inside a NaN-filled buffer: PAD more elements on both sides of every axis and, with
    ``step=2``, a NaN between neighbouring elements of the last axis. A 0-dim tensor becomes an element of a 1-D
    buffer."""

    def __init__(self, t: torch.Tensor, step: int = 1) -> None:
        self.original = t.detach().clone()
        if t.dim() == 0:
            shape, self.index = (2 * PAD + 1,), (PAD,)
        else:
            *lead, last = t.shape
            shape = (*(s + 2 * PAD for s in lead), step * last + 2 * PAD)
            self.index = (*(slice(PAD, PAD + s) for s in lead), slice(PAD, PAD + step * last, step))
        self.buffer = tagged_nans(shape, t.dtype, t.device, PAD_TAG)
        self.view = self.buffer[self.index]
        self.view.copy_(t)

    def check(self, name: str) -> None:
        outside = torch.ones_like(self.buffer, dtype=torch.bool)
        outside[self.index] = False
        touched = int(untagged(self.buffer[outside], PAD_TAG).sum())
        assert touched == 0, f"{name}: {touched} padding elements around the view were written"
        assert torch.equal(self.buffer[self.index], self.original), f"{name}: the input view was modified"


class GuardedTorch:
    """Stands in for ``torch`` in a kernel module: ``empty``, ``empty_like`` and ``zeros`` return contiguous views
    between NaN guard zones (``empty`` ones NaN-filled); everything else is torch's."""

    def __init__(self) -> None:
        self.allocations: list[tuple[torch.Tensor, int, tuple[int, ...]]] = []

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def empty(self, *args, **kwargs) -> torch.Tensor:
        return self._guarded(torch.empty(*args, **kwargs), fill=False)

    def empty_like(self, *args, **kwargs) -> torch.Tensor:
        return self._guarded(torch.empty_like(*args, **kwargs), fill=False)

    def zeros(self, *args, **kwargs) -> torch.Tensor:
        return self._guarded(torch.zeros(*args, **kwargs), fill=True)

    def _guarded(self, t: torch.Tensor, fill: bool) -> torch.Tensor:
        if not t.is_floating_point() or not t.is_contiguous():
            raise AssertionError(f"unexpected allocation {t.dtype} {tuple(t.shape)} strides {t.stride()}")
        n = t.numel()
        buffer = tagged_nans((n + 2 * GUARD,), t.dtype, t.device, GUARD_TAG)
        view = buffer[GUARD : GUARD + n].view(t.shape)
        if fill:
            view.copy_(t)
        self.allocations.append((buffer, n, tuple(t.shape)))
        return view

    def check(self) -> None:
        assert self.allocations, "the launchers allocated nothing through the guard: is the patch in place?"
        for buffer, n, shape in self.allocations:
            guards = torch.cat([buffer[:GUARD], buffer[GUARD + n :]])
            written = untagged(guards, GUARD_TAG).nonzero().flatten().tolist()
            where = [i - GUARD if i < GUARD else i - GUARD + n for i in written]  # offsets from the tensor's start
            assert not written, (f"guard zone of an allocated {tuple(shape)} tensor was written at element offsets "
                                 f"{where[:8]} (negative: before the tensor, >= {n}: past its end)")


def _run(fn: Callable, inputs: dict, grads_out: list[torch.Tensor], needs_grad: tuple[str, ...]):
    leaves = {k: (v.requires_grad_() if k in needs_grad else v) for k, v in inputs.items()}
    outs = fn(**leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(outs, grads_out)
    return [o.detach() for o in outs], {k: leaves[k].grad for k in needs_grad}


def check_padded_run(module, fn: Callable, inputs: dict, grads_out: list[torch.Tensor], needs_grad: tuple[str, ...],
                     layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``fn(**inputs)`` forward and backward on padded views with the launchers' allocations guarded, check the
    pads and guards, then run it on contiguous copies and compare (see the module docstring)."""
    step = 2 if layout == "strided" else 1
    padded = {k: Padded(v, step) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    padded_grads = [Padded(g, step) for g in grads_out]
    guard = GuardedTorch()
    with monkeypatch.context() as m:
        m.setattr(module, "torch", guard)
        outs, grads = _run(fn, {k: padded[k].view if k in padded else v for k, v in inputs.items()},
                           [p.view for p in padded_grads], needs_grad)  # fmt: skip
    guard.check()
    for name, p in padded.items():
        p.check(name)
    for i, p in enumerate(padded_grads):
        p.check(f"upstream gradient {i}")
    # The contiguous run comes second: an access past the end there would hit unguarded memory.
    expected_outs, expected_grads = _run(
        fn, {k: v if not isinstance(v, torch.Tensor) else v.clone() for k, v in inputs.items()},
        [g.clone() for g in grads_out], needs_grad)  # fmt: skip
    for i, o in enumerate(expected_outs):
        assert torch.isfinite(o).all(), f"contiguous run: output {i} is not finite"
    for i, (o, e) in enumerate(zip(outs, expected_outs)):
        assert_close(o, e, ATOL, RTOL, f"output {i}")
    for name in needs_grad:
        assert grads[name] is not None, f"no gradient for {name}"
        assert_close(grads[name], expected_grads[name], ATOL, RTOL, f"grad {name}")


def _randn(g: torch.Generator, device, *shape: int, std: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=g) * std).to(device)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("row_scale", [False, True], ids=["no-scale", "row-scale"])
def test_t_adapter(layout, row_scale, device, monkeypatch):
    R, D, r = 10, 24, 8  # D and r below their blocks: masked columns
    g = torch.Generator().manual_seed(0)
    inputs = {"x": _randn(g, device, R, D), "residual": _randn(g, device, R, D),
              "w_down": _randn(g, device, r, D, std=D**-0.5), "b_down": _randn(g, device, r, std=0.5),
              "w_up": _randn(g, device, D, r, std=r**-0.5), "b_up": _randn(g, device, D, std=0.5),
              "row_scale": (torch.rand(R, generator=g) < 0.6).float().to(device) / 0.6 if row_scale else None}
    check_padded_run(t_adapter, t_adapter.t_adapter, inputs, [_randn(g, device, R, D)],
                     ("x", "residual", "w_down", "b_down", "w_up", "b_up"), layout, monkeypatch)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_temporal_attention(layout, device, monkeypatch):
    B, M, N, H, hd = 2, 3, 5, 2, 8
    g = torch.Generator().manual_seed(1)
    inputs = {"qkv": _randn(g, device, B, M, N, 3 * H * hd), "num_heads": H, "scale": hd**-0.5}
    check_padded_run(temporal_attention, temporal_attention.temporal_attention, inputs,
                     [_randn(g, device, B, M, N, H * hd)], ("qkv",), layout, monkeypatch)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_temporal_attention_with_bias(layout, device, monkeypatch):
    """Swin's temporal position bias (H, M, M) in a padded view too; its gradient partial sums are a launcher
    scratch tensor between guards."""
    B, M, N, H, hd = 2, 3, 5, 2, 8
    g = torch.Generator().manual_seed(4)
    inputs = {"qkv": _randn(g, device, B, M, N, 3 * H * hd), "num_heads": H, "scale": hd**-0.5,
              "bias": _randn(g, device, H, M, M)}
    check_padded_run(temporal_attention, temporal_attention.temporal_attention, inputs,
                     [_randn(g, device, B, M, N, H * hd)], ("qkv", "bias"), layout, monkeypatch)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_quick_gelu(layout, device, monkeypatch):
    g = torch.Generator().manual_seed(2)
    shape = (3, 5, 40)
    check_padded_run(quick_gelu, quick_gelu.quick_gelu, {"x": _randn(g, device, *shape, std=3.0)},
                     [_randn(g, device, *shape)], ("x",), layout, monkeypatch)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(7, 24), (2, 5, 24)], ids=["rows", "3d"])
def test_layer_norm(layout, shape, device, monkeypatch):
    g = torch.Generator().manual_seed(3)
    D = shape[-1]
    inputs = {"x": _randn(g, device, *shape) + 2.0, "weight": 1.0 + _randn(g, device, D, std=0.2),
              "bias": _randn(g, device, D, std=0.2), "eps": 1e-5}
    check_padded_run(layer_norm, layer_norm.layer_norm, inputs, [_randn(g, device, *shape)], ("x",), layout,
                     monkeypatch)


AV_NAMES = ("u_v", "u_a", "x_v", "x_a", "w_down_v", "b_down_v", "w_up_v", "b_up_v", "w_down_a", "b_down_a", "w_up_a",
            "b_up_a", "alpha", "beta")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("a2v", "v2a"), [(True, True), (True, False)], ids=["bidirectional", "a2v"])
def test_av_adapter(layout, a2v, v2a, device, monkeypatch):
    G, N_v, N_a, D, r = 2, 5, 3, 24, 8
    g = torch.Generator().manual_seed(4)
    inputs = {}
    for side, n in (("v", N_v), ("a", N_a)):
        inputs |= {f"u_{side}": _randn(g, device, G, n, D), f"x_{side}": _randn(g, device, G, n, D),
                   f"w_down_{side}": _randn(g, device, r, D, std=D**-0.5), f"b_down_{side}": _randn(g, device, r),
                   f"w_up_{side}": _randn(g, device, D, r, std=r**-0.5), f"b_up_{side}": _randn(g, device, D)}
    inputs |= {"alpha": _randn(g, device), "beta": _randn(g, device), "a2v": a2v, "v2a": v2a}
    grads = [_randn(g, device, G, N_v, D), _randn(g, device, G, N_a, D)]
    needs_grad = tuple(n for n in AV_NAMES if (n != "alpha" or a2v) and (n != "beta" or v2a))
    check_padded_run(av_adapter, av_adapter.av_adapter, inputs, grads, needs_grad, layout, monkeypatch)


# ----------------------------------------------------------------------------------------------------------------------
# The checks can fail: a kernel that reads and writes one element past its tensors is caught.
@triton.jit
def _copy_kernel(X, Y, n, EXTRA: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n + EXTRA  # EXTRA = 1: the off-by-one this file is about
    tl.store(Y + offs, tl.load(X + offs, mask=mask, other=0.0) + 1.0, mask=mask)


class _CopyModule:
    """A stand-in kernel module whose launcher allocates through its ``torch`` global, as the real ones do."""

    torch = torch
    extra = 0

    @classmethod
    def launch(cls, x: torch.Tensor) -> torch.Tensor:
        y = cls.torch.empty(x.shape, dtype=x.dtype, device=x.device)
        _copy_kernel[(1,)](x, y, x.numel(), EXTRA=cls.extra, BLOCK=16)
        return y


@pytest.mark.parametrize("extra", [0, 1], ids=["in-bounds", "one-past"])
def test_the_guards_catch_an_access_one_past_the_end(extra, device, monkeypatch):
    x = Padded(torch.arange(5.0, device=device))
    monkeypatch.setattr(_CopyModule, "extra", extra)
    guard = GuardedTorch()
    monkeypatch.setattr(_CopyModule, "torch", guard)
    y = _CopyModule.launch(x.view)
    x.check("x")  # reads do not change the padding
    if extra == 0:
        guard.check()
        assert_close(y, torch.arange(5.0, device=device) + 1.0, 0.0, 0.0, "y")
    else:
        with pytest.raises(AssertionError, match=r"guard zone of an allocated \(5,\) tensor was written at element "
                                                 r"offsets \[5\]"):  # fmt: skip
            guard.check()
