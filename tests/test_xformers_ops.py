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

    def memory_efficient_attention(self, query, key, value, attn_bias=None, p=0.0, scale=None):
        assert attn_bias is None and p == 0.0
        assert query.stride(-1) == key.stride(-1) == value.stride(-1) == 1, "xformers needs unit last strides"
        self.calls.append((tuple(query.shape), tuple(query.stride())))
        five = query.dim() == 5
        if five:  # BMGHK: the groups are more heads
            B, M, G, H, K = query.shape
            query, key, value = (t.reshape(B, t.shape[1], G * H, K) for t in (query, key, value))
        out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (query, key, value)), scale=scale)
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
