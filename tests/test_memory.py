"""Memory-lean pieces of the fast path keep less for backward and compute the same gradients."""

from __future__ import annotations

import torch
from timm.layers import QuickGELU

from stgcma_fast.memory import saved_activation_bytes
from stgcma_fast.ops.activations import lean_activation, quick_gelu
from stgcma_fast.testing import assert_close


def test_quick_gelu_matches_timm_and_keeps_only_its_input():
    x = torch.randn(64, 96, dtype=torch.float64, requires_grad=True)
    g = torch.randn(64, 96, dtype=torch.float64)
    expected = QuickGELU()(x)
    (dx_expected,) = torch.autograd.grad(expected, x, g)
    got = quick_gelu(x)
    (dx,) = torch.autograd.grad(got, x, g)
    assert_close(got, expected, 1e-12, 1e-12, "quick_gelu")
    assert_close(dx, dx_expected, 1e-12, 1e-12, "d quick_gelu")
    assert torch.autograd.gradcheck(quick_gelu, (x[:3, :4].detach().clone().requires_grad_(),))
    y = x.detach().float().requires_grad_()
    lean = saved_activation_bytes(lambda: quick_gelu(y * 1))
    plain = saved_activation_bytes(lambda: QuickGELU()(y * 1))
    assert lean == y.numel() * 4 and plain == 2 * lean


def test_lean_activation_mapping():
    assert lean_activation(QuickGELU()) is quick_gelu
    x = torch.randn(5)
    assert torch.equal(lean_activation(torch.nn.GELU(approximate="tanh"))(x), torch.nn.GELU(approximate="tanh")(x))
    relu = torch.nn.ReLU()
    assert lean_activation(relu) is relu
