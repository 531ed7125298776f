"""The plain-torch op contracts: the attention ops against explicit softmax math, and the layouts they hand SDPA."""

import pytest
import torch

from stgcma_fast.ops import torch_ops


def _explicit_attention(q, k, v, scale):  # (..., L, hd)
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Record the inputs torch_ops passes to F.scaled_dot_product_attention (and still run it)."""
    calls = []
    real = torch_ops.F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append((q, k, v))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch_ops.F, "scaled_dot_product_attention", spy)
    return calls


@pytest.mark.parametrize("B,M,N,H,hd", [(2, 10, 5, 3, 8), (1, 4, 17, 2, 16)])
def test_temporal_attention_is_attention_over_frames_with_4d_sdpa_inputs(B, M, N, H, hd, sdpa_calls):
    qkv = torch.randn(B, M, N, 3 * H * hd, dtype=torch.float64)
    out = torch_ops.temporal_attention(qkv, H, hd**-0.5)
    # SDPA's fused CUDA kernels take 4-D inputs only (5-D falls back to the unfused math path)
    assert [t.dim() for t in sdpa_calls[0]] == [4, 4, 4]
    assert tuple(sdpa_calls[0][0].shape) == (B * N, H, M, hd)
    q, k, v = qkv.view(B, M, N, 3, H, hd).unbind(3)  # (B, M, N, H, hd)
    q, k, v = (t.permute(0, 2, 3, 1, 4) for t in (q, k, v))  # (B, N, H, M, hd): frames are the sequence
    expected = _explicit_attention(q, k, v, hd**-0.5).permute(0, 3, 1, 2, 4).reshape(B, M, N, H * hd)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)


def test_spatial_attention_is_attention_over_tokens_with_4d_sdpa_inputs(sdpa_calls):
    G, N, H, hd = 3, 7, 2, 8
    qkv = torch.randn(G, N, 3 * H * hd, dtype=torch.float64)
    out = torch_ops.spatial_attention(qkv, H, hd**-0.5)
    assert [t.dim() for t in sdpa_calls[0]] == [4, 4, 4]
    q, k, v = qkv.view(G, N, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (G, H, N, hd)
    expected = _explicit_attention(q, k, v, hd**-0.5).transpose(1, 2).reshape(G, N, H * hd)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
