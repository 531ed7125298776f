"""Plain-torch implementations of the four STG-CMA ops: the contract every faster backend must match.

Each function here is both the fallback backend of :mod:`stgcma_fast.ops.dispatch` and the ground truth of the
kernel parity tests. Shapes use G = frames in the batch (B * M), N_v / N_a tokens per frame, D channels,
r the adapter bottleneck, H heads of size hd (D = H * hd).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import activations

GPU_VALIDATED = True  # torch's own kernels, not this project's: chosen automatically on CUDA


def t_adapter(
    x: torch.Tensor,  # (R, D) adapter input rows
    residual: torch.Tensor,  # (R, D) added to the adapter output
    w_down: torch.Tensor,  # (r, D)
    b_down: torch.Tensor,  # (r,)
    w_up: torch.Tensor,  # (D, r)
    b_up: torch.Tensor,  # (D,)
    row_scale: torch.Tensor | None = None,  # (R,) per-row factor on the adapter output (drop path), or None
) -> torch.Tensor:
    """Vanilla bottleneck adapter with residual: ``residual + row_scale * (GELU(x W_d^T + b_d) W_u^T + b_u)``.

    GELU is the exact (erf) form. Returns (R, D) in the dtype of ``x``.
    """
    out = F.linear(F.gelu(F.linear(x, w_down, b_down)), w_up, b_up)
    if row_scale is not None:
        out = out * row_scale.to(out.dtype).unsqueeze(-1)
    return residual + out


def av_adapter(
    u_v: torch.Tensor,  # (G, N_v, D) video adapter input (the frozen MHSA or FFN output)
    u_a: torch.Tensor,  # (G, N_a, D) audio adapter input
    x_v: torch.Tensor,  # (G, N_v, D) video residual stream
    x_a: torch.Tensor,  # (G, N_a, D) audio residual stream
    w_down_v: torch.Tensor,  # (r, D)
    b_down_v: torch.Tensor,  # (r,)
    w_up_v: torch.Tensor,  # (D, r)
    b_up_v: torch.Tensor,  # (D,)
    w_down_a: torch.Tensor,  # (r, D)
    b_down_a: torch.Tensor,  # (r,)
    w_up_a: torch.Tensor,  # (D, r)
    b_up_a: torch.Tensor,  # (D,)
    alpha: torch.Tensor,  # () gate of audio -> video attention
    beta: torch.Tensor,  # () gate of video -> audio attention
    a2v: bool = True,  # False: alpha is fixed at zero, the video branch does not read audio
    v2a: bool = True,  # False: beta is fixed at zero, the audio branch does not read video
) -> tuple[torch.Tensor, torch.Tensor]:
    """AV-Adapter with the residual epilogue of the spatial / global stage.

    Per frame g::

        h_v = GELU(u_v W_dv^T + b_dv)                  (N_v, r)
        h_a = GELU(u_a W_da^T + b_da)                  (N_a, r)
        h_v' = h_v + alpha * softmax(h_v h_a^T) h_a    softmax over the N_a audio tokens, no 1/sqrt(r)
        h_a' = h_a + beta  * softmax(h_a h_v^T) h_v    softmax over the N_v video tokens
        out_v = x_v + u_v + h_v' W_uv^T + b_uv
        out_a = x_a + u_a + h_a' W_ua^T + b_ua

    Both directions read the un-gated h_v and h_a. Returns (out_v, out_a).
    """
    h_v = F.gelu(F.linear(u_v, w_down_v, b_down_v))
    h_a = F.gelu(F.linear(u_a, w_down_a, b_down_a))
    hv_new, ha_new = h_v, h_a
    # SDPA with scale=1 is exactly softmax(q k^T) v, computed max-subtracted. Its operands get a head axis of size 1
    # (a view): the fused CUDA kernels take 4-D inputs only, a 3-D call would run the math path, which writes the
    # N_v x N_a scores and probabilities to memory.
    q_v, q_a = h_v.unsqueeze(-3), h_a.unsqueeze(-3)
    if a2v:
        hv_new = h_v + alpha.to(h_v.dtype) * F.scaled_dot_product_attention(q_v, q_a, q_a, scale=1.0).squeeze(-3)
    if v2a:
        ha_new = h_a + beta.to(h_a.dtype) * F.scaled_dot_product_attention(q_a, q_v, q_v, scale=1.0).squeeze(-3)
    out_v = x_v + u_v + F.linear(hv_new, w_up_v, b_up_v)
    out_a = x_a + u_a + F.linear(ha_new, w_up_a, b_up_a)
    return out_v, out_a


def temporal_attention(
    qkv: torch.Tensor,  # (B, M, N, 3 * H * hd) output of the frozen qkv projection, viewable as (B, M, N, 3, H, hd)
    num_heads: int,
    scale: float,
    bias: torch.Tensor | None = None,  # (H, M, M) additive score bias (frame i vs frame j), or None
) -> torch.Tensor:
    """Self-attention across the M frames, independently for every (batch, token, head)::

        out[b, i, n, h] = sum_j softmax_j(scale * q[b, i, n, h] . k[b, j, n, h] + bias[h, i, j]) v[b, j, n, h]

    ``bias`` (Swin's temporal relative-position bias, gathered from its table) is given to SDPA as its additive
    ``attn_mask``, cast to q's dtype (a differentiable cast: bias gets its gradient, the sum of dL/dscores over
    batch and tokens). Returns (B, M, N, H * hd), the layout the output projection reads.
    """
    B, M, N, C3 = qkv.shape
    H = num_heads
    hd = C3 // (3 * H)
    q, k, v = qkv.view(B, M, N, 3, H, hd).permute(3, 0, 2, 4, 1, 5).unbind(0)  # each (B, N, H, M, hd), strided
    # 4-D (B * N, H, M, hd), which copies: SDPA's fused CUDA kernels (flash, memory-efficient, cuDNN) take 4-D
    # inputs only; a 5-D one would run the unfused math path.
    q, k, v = (t.reshape(B * N, H, M, hd) for t in (q, k, v))
    mask = None if bias is None else bias.to(q.dtype)  # (H, M, M) broadcasts over the B * N sequences
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # (B * N, H, M, hd)
    return out.view(B, N, H, M, hd).permute(0, 3, 1, 2, 4).reshape(B, M, N, H * hd)


def window_mask(
    bias: torch.Tensor | None,  # (H, N, N) additive bias shared by every sequence, or None
    mask: torch.Tensor | None,  # (nW, N, N) additive mask of window w = g % nW, or None
    G: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """The additive attention mask of :func:`spatial_attention` in ``dtype``, broadcastable to (G, H, N, N): the bias
    alone as (H, N, N) (a broadcast, no copy), or bias + mask per window as (G, H or 1, N, N), the layout of timm's
    fused Swin attention (a copy per sequence; the windows of a batch are window-fastest, as timm's
    ``window_partition`` orders them). None when both are None."""
    if mask is None:
        return None if bias is None else bias.to(dtype)
    nW, N = mask.shape[0], mask.shape[-1]
    full = mask.to(dtype).unsqueeze(1)  # (nW, 1, N, N)
    if bias is not None:
        full = full + bias.to(dtype)  # (nW, H, N, N)
    return full.unsqueeze(0).expand(G // nW, *full.shape).reshape(G, full.shape[1], N, N)


def window_problem(qkv: torch.Tensor, num_heads: int, bias: torch.Tensor | None,
                   mask: torch.Tensor | None) -> str | None:  # fmt: skip
    """Why ``bias`` / ``mask`` do not fit ``qkv`` (G, N, 3 * H * hd) in :func:`spatial_attention`, or None."""
    G, N = qkv.shape[0], qkv.shape[1]
    if bias is not None and tuple(bias.shape) != (num_heads, N, N):
        return f"expected bias of shape (H, N, N) = {(num_heads, N, N)}, got {tuple(bias.shape)}"
    if mask is not None:
        if mask.dim() != 3 or tuple(mask.shape[1:]) != (N, N) or mask.shape[0] < 1 or G % mask.shape[0]:
            return f"expected mask of shape (nW, {N}, {N}) with nW dividing G = {G}, got {tuple(mask.shape)}"
    for name, t in (("bias", bias), ("mask", mask)):
        if t is not None and t.device != qkv.device:
            return f"expected {name} on {qkv.device} (the device of qkv), got {t.device}"
    return None


def spatial_attention(
    qkv: torch.Tensor,  # (G, N, 3 * H * hd)
    num_heads: int,
    scale: float,
    bias: torch.Tensor | None = None,  # (H, N, N) additive score bias (Swin's relative-position bias), or None
    mask: torch.Tensor | None = None,  # (nW, N, N) additive mask of sequence g's window g % nW (Swin's shift mask)
) -> torch.Tensor:
    """Self-attention across the N tokens of each frame, or (Swin window attention) of each window: G = B * nW
    windows of N = 49 tokens, window-fastest; ``softmax(scale * q k^T + bias[h] + mask[g % nW]) v``, both given to
    SDPA as its additive ``attn_mask`` (:func:`window_mask`). Returns (G, N, H * hd)."""
    G, N, C3 = qkv.shape
    hd = C3 // (3 * num_heads)
    problem = window_problem(qkv, num_heads, bias, mask)
    if problem is not None:
        raise ValueError(f"spatial_attention: {problem}")
    q, k, v = qkv.view(G, N, 3, num_heads, hd).permute(2, 0, 3, 1, 4).unbind(0)  # each (G, H, N, hd)
    attn_mask = window_mask(bias, mask, G, q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    return out.transpose(1, 2).reshape(G, N, num_heads * hd)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:  # (..., C) the frozen FFN's fc1 output
    """CLIP's QuickGELU ``x * sigmoid(1.702 x)``, keeping only x for backward (it recomputes the sigmoid: see
    :mod:`stgcma_fast.ops.activations`). Returns x's shape and dtype."""
    return activations.quick_gelu(x)


def layer_norm(
    x: torch.Tensor,  # (..., D) the residual stream
    weight: torch.Tensor | None,  # (D,)
    bias: torch.Tensor | None,  # (D,)
    eps: float,
    out_dtype: torch.dtype | None = None,  # the dtype the next GEMM reads (the autocast dtype); None: x's dtype
) -> torch.Tensor:
    """LayerNorm over the last axis, returned in ``out_dtype``: under autocast, torch runs it in fp32 and the cast is
    the one the following linear layer would make."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps).to(out_dtype or x.dtype)
