"""The xformers backend's layout handling, on CPU: xformers has no CPU kernels, so ``xformers.ops`` is replaced by a
stand-in that computes ``memory_efficient_attention`` as documented (BMHK or BMGHK inputs, the last stride 1) and
records what it was given. The real kernels run in the GPU benchmarks (bench/test_kernels.py, provider xformers)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from stgcma_fast.ops import torch_ops, xformers_ops
from stgcma_fast.testing import assert_close


class _FakeXops:
    """``memory_efficient_attention(q, k, v, scale=)`` on [B, M, H, K] (or [B, M, G, H, K]) inputs."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self.biases: list[torch.Tensor] = []

    def memory_efficient_attention(self, query, key, value, attn_bias=None, p=0.0, scale=None):
        assert p == 0.0
        assert query.stride(-1) == key.stride(-1) == value.stride(-1) == 1, "xformers needs unit last strides"
        self.calls.append((tuple(query.shape), tuple(query.stride())))
        if attn_bias is not None:  # a tensor [B, H, Mq, Mk], rows 16-byte aligned, in q's dtype
            B, Mq, H = query.shape[:3]
            assert tuple(attn_bias.shape) == (B, H, Mq, key.shape[1]), attn_bias.shape
            assert attn_bias.stride(-1) == 1 and attn_bias.stride(-2) % 8 == 0, attn_bias.stride()
            assert attn_bias.dtype == query.dtype
            self.biases.append(attn_bias)
        five = query.dim() == 5
        if five:  # BMGHK: the groups are more heads
            B, M, G, H, K = query.shape
            query, key, value = (t.reshape(B, t.shape[1], G * H, K) for t in (query, key, value))
        out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (query, key, value)), attn_mask=attn_bias,
                                             scale=scale)
        out = out.transpose(1, 2)
        return out.reshape(*out.shape[:2], G, H, K) if five else out


@pytest.fixture
def fake_xops(monkeypatch):
    fake = _FakeXops()
    package = types.ModuleType("xformers")
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = fake.memory_efficient_attention
    package.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    return fake


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_temporal_attention_matches_torch_with_4d_inputs(fake_xops, grad):
    """Same numbers as the torch contract, in inference and with autograd, and always 4-D BMHK inputs with the
    (token, head) pair merged into N * H heads: xformers' only 5-D forward (cutlass) runs one kernel per group, i.e.
    per token, on its own CUDA stream, and flash-attention refuses these strided groups."""
    B, M, N, H, hd = 2, 10, 7, 3, 8
    qkv = torch.randn(B, M, N, 3 * H * hd, dtype=torch.float64)
    leaf = qkv.clone().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out = xformers_ops.temporal_attention(leaf, H, hd**-0.5)
    ref_leaf = qkv.clone().requires_grad_(grad)
    ref = torch_ops.temporal_attention(ref_leaf, H, hd**-0.5)
    assert out.shape == (B, M, N, H * hd)
    assert_close(out.detach(), ref.detach(), 1e-12, 1e-12, name="out")
    assert [shape for shape, _ in fake_xops.calls] == [(B, M, N * H, hd)]
    if grad:
        g = torch.randn_like(out)
        (dq,) = torch.autograd.grad(out, leaf, g)
        (dq_ref,) = torch.autograd.grad(ref, ref_leaf, g)
        assert_close(dq, dq_ref, 1e-12, 1e-12, name="dqkv")


def test_spatial_attention_matches_torch(fake_xops):
    G, N, H, hd = 3, 5, 2, 8
    qkv = torch.randn(G, N, 3 * H * hd, dtype=torch.float64)
    out = xformers_ops.spatial_attention(qkv, H, 0.3)
    assert_close(out, torch_ops.spatial_attention(qkv, H, 0.3), 1e-12, 1e-12, name="out")


def test_supports_refuses_cpu_and_a_missing_install(monkeypatch):
    monkeypatch.setattr(xformers_ops, "HAVE_XFORMERS", True)
    assert "device cpu" in xformers_ops.supports(torch.zeros(1, 2, 3, 3 * 16), 1, 1.0)
    monkeypatch.setattr(xformers_ops, "HAVE_XFORMERS", False)
    assert "not installed" in xformers_ops.supports(torch.zeros(1, 2, 3, 3 * 16), 1, 1.0)


@pytest.mark.parametrize("M", [10, 16, 3])
def test_temporal_attention_bias_is_an_aligned_attn_bias_with_its_gradient(fake_xops, M):
    """The (H, M, M) bias goes in as one (B, N * H, M, M) attn_bias (rows padded to 8 elements, xformers'
    alignment) and gets the same gradient as through the torch contract."""
    B, N, H, hd = 2, 5, 4, 8
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, M, N, 3 * H * hd, dtype=torch.float64, generator=g)
    bias = torch.randn(H, M, M, dtype=torch.float64, generator=g)
    leaves = qkv.clone().requires_grad_(), bias.clone().requires_grad_()
    out = xformers_ops.temporal_attention(*leaves[:1], H, hd**-0.5, leaves[1])
    refs = qkv.clone().requires_grad_(), bias.clone().requires_grad_()
    ref = torch_ops.temporal_attention(refs[0], H, hd**-0.5, refs[1])
    assert_close(out.detach(), ref.detach(), 1e-12, 1e-12, name="out")
    assert tuple(fake_xops.biases[0].shape) == (B, N * H, M, M)
    up = torch.randn_like(out)
    for name, a, b in zip(("dqkv", "dbias"), torch.autograd.grad(out, leaves, up), torch.autograd.grad(ref, refs, up)):
        assert_close(a, b, 1e-12, 1e-12, name=name)


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_matches_torch(fake_xops, shifted):
    """Swin window attention: relative-position bias (H, N, N) plus the shift mask (nW, N, N) of window g % nW."""
    nW, B, N, H, hd = 4, 2, 49, 3, 8
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(B * nW, N, 3 * H * hd, dtype=torch.float64, generator=g)
    bias = torch.randn(H, N, N, dtype=torch.float64, generator=g)
    mask = torch.where(torch.rand(nW, N, N, generator=g) < 0.3, -100.0, 0.0).double() if shifted else None
    out = xformers_ops.spatial_attention(qkv, H, 0.3, bias, mask)
    assert_close(out, torch_ops.spatial_attention(qkv, H, 0.3, bias, mask), 1e-12, 1e-12, name="out")
    assert tuple(fake_xops.biases[0].shape) == (B * nW, H, N, N)


def test_bias_and_mask_shapes_are_checked():
    qkv = torch.zeros(1, 10, 3, 3 * 2 * 16)
    problem = xformers_ops.bias_problem
    assert problem(qkv, 2, torch.zeros(2, 10, 10), None) is None
    bad = problem(qkv, 2, torch.zeros(2, 9, 9), None)
    assert "expected bias of shape (H, L, L) = (2, 10, 10), got (2, 9, 9)" in bad
    assert "takes no mask" in problem(qkv, 2, None, torch.zeros(1, 10, 10))
    windows = torch.zeros(6, 49, 3 * 2 * 16)
    assert problem(windows, 2, torch.zeros(2, 49, 49), torch.zeros(3, 49, 49)) is None
    assert "nW dividing G = 6, got (4, 49, 49)" in problem(windows, 2, None, torch.zeros(4, 49, 49))
