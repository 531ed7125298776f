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


def _explicit_temporal(qkv, H, scale, bias):  # softmax over frames j of q_i . k_j * scale + bias[h, i, j]
    B, M, N, C3 = qkv.shape
    hd = C3 // (3 * H)
    q, k, v = qkv.view(B, M, N, 3, H, hd).unbind(3)  # (B, M, N, H, hd)
    s = torch.einsum("binhd,bjnhd->bnhij", q, k) * scale + bias
    return torch.einsum("bnhij,bjnhd->binhd", s.softmax(-1), v).reshape(B, M, N, H * hd)


@pytest.mark.parametrize("H", [4, 8, 16, 32])
def test_temporal_attention_bias_and_its_gradient(H, sdpa_calls):
    """Swin's temporal relative-position bias: (H, M, M) gathered from a (2M - 1, H) table, added to the score of
    frame i vs frame j; output, dqkv and dbias (the sum of dL/dscores over batch and tokens) match fp64 explicit
    math, and the gradient reaches the table through the gather."""
    B, M, N, hd = 2, 10, 3, 32
    g = torch.Generator().manual_seed(H)
    qkv = torch.randn(B, M, N, 3 * H * hd, dtype=torch.float64, generator=g)
    table = torch.randn(2 * M - 1, H, dtype=torch.float64, generator=g)
    idx = torch.arange(M)[:, None] - torch.arange(M)[None, :] + M - 1  # (M, M): i - j + M - 1
    leaves = [qkv.clone().requires_grad_(), table.clone().requires_grad_()]
    out = torch_ops.temporal_attention(leaves[0], H, hd**-0.5, leaves[1][idx].permute(2, 0, 1))
    assert tuple(sdpa_calls[0][0].shape) == (B * N, H, M, hd)
    refs = [qkv.clone().requires_grad_(), table.clone().requires_grad_()]
    ref = _explicit_temporal(refs[0], H, hd**-0.5, refs[1][idx].permute(2, 0, 1))
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    up = torch.randn(out.shape, dtype=torch.float64, generator=g)
    for a, b in zip(torch.autograd.grad(out, leaves, up), torch.autograd.grad(ref, refs, up)):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)


def test_temporal_attention_without_bias_is_unchanged():
    qkv = torch.randn(1, 10, 4, 3 * 4 * 32, dtype=torch.float64)
    zero = torch.zeros(4, 10, 10, dtype=torch.float64)
    torch.testing.assert_close(torch_ops.temporal_attention(qkv, 4, 0.2),
                               torch_ops.temporal_attention(qkv, 4, 0.2, zero), atol=1e-14, rtol=1e-14)


@pytest.mark.parametrize("shift", [0, 3], ids=["W-MSA", "SW-MSA"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_window_attention_matches_timm(shift, dtype):
    """spatial_attention with Swin's relative-position bias and shift mask equals timm's own WindowAttention (qkv
    projection before, output projection after) on the windows of a tiny shifted / unshifted block."""
    from timm.models.swin_transformer import SwinTransformerBlock

    torch.manual_seed(0)
    C, H, res, B = 64, 2, 14, 3  # 2 x 2 windows of 7 x 7 per image
    block = SwinTransformerBlock(C, (res, res), num_heads=H, window_size=7, shift_size=shift).to(dtype).eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_(0, 1.0)
    attn = block.attn
    windows = torch.randn(B * 4, 49, C, dtype=dtype)
    mask = block.attn_mask  # (nW, 49, 49) or None
    assert (mask is None) == (shift == 0)
    with torch.no_grad():
        expected = attn(windows, mask=mask)
        qkv = attn.qkv(windows)
        got = attn.proj(torch_ops.spatial_attention(qkv, H, attn.scale, attn._get_rel_pos_bias()[0], mask))
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


def test_spatial_attention_rejects_a_mask_that_does_not_fit():
    qkv = torch.randn(6, 49, 3 * 2 * 8)
    with pytest.raises(ValueError, match=r"expected mask of shape \(nW, 49, 49\) with nW dividing G = 6, got \(4, 49"):
        torch_ops.spatial_attention(qkv, 2, 1.0, None, torch.zeros(4, 49, 49))
    with pytest.raises(ValueError, match=r"expected bias of shape \(H, N, N\) = \(2, 49, 49\), got \(3, 49, 49\)"):
        torch_ops.spatial_attention(qkv, 2, 1.0, torch.zeros(3, 49, 49))
