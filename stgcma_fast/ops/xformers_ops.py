"""xformers backends for the two attention ops (CUDA only: xformers has no CPU kernels).

Temporal attention merges the (N tokens, H heads) pair of the qkv layout into N * H heads of 4-D BMHK inputs
(B, M frames, N * H, hd), which copies q, k and v once. xformers 0.0.35 would also take 5-D BMGHK views with the N
tokens as groups, without that copy, but only its cutlass forward accepts them (flash-attention refuses groups and
heads that cannot be merged into one strided dimension, which q, k and v cut out of qkv cannot), and cutlass runs a
5-D input as one kernel per group, each on its own CUDA stream: N = 197 launches and streams per call instead of one.
Its backward takes 4-D inputs only.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from .torch_ops import window_mask

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HAVE_XFORMERS = importlib.util.find_spec("xformers") is not None  # checked once: supports() must stay traceable
GPU_VALIDATED = True  # a library's kernels, not this project's: chosen automatically on CUDA
_BIAS_ALIGN = 8  # xformers wants the attn_bias rows 16-byte aligned: the key axis is padded to a multiple of 8


def supports(qkv: torch.Tensor, num_heads: int, scale: float, bias: torch.Tensor | None = None,
             mask: torch.Tensor | None = None) -> str | None:  # fmt: skip
    """None if xformers can run this attention, else why not. ``bias`` (H, L, L) and ``mask`` (nW, L, L), L the
    sequence length (frames for temporal attention, window tokens for spatial attention), go in as attn_bias."""
    if not HAVE_XFORMERS:
        return "xformers is not installed (pip install 'stgcma-fast[xformers]')"
    if qkv.device.type != "cuda":
        return f"xformers has no kernels for device {qkv.device.type}"
    if qkv.dtype not in DTYPES:
        return f"dtype {qkv.dtype} not in {DTYPES}"
    hd = qkv.shape[-1] // (3 * num_heads)
    if hd % 8:
        return f"head dim {hd} is not a multiple of 8"
    return bias_problem(qkv, num_heads, bias, mask)


def bias_problem(qkv: torch.Tensor, num_heads: int, bias: torch.Tensor | None,
                 mask: torch.Tensor | None) -> str | None:  # fmt: skip
    """Why ``bias`` / ``mask`` do not fit ``qkv`` (temporal (B, M, N, 3C) or spatial (G, N, 3C)), or None."""
    L = qkv.shape[1] if qkv.dim() == 4 else qkv.shape[-2]
    if bias is not None and tuple(bias.shape) != (num_heads, L, L):
        return f"expected bias of shape (H, L, L) = {(num_heads, L, L)}, got {tuple(bias.shape)}"
    if mask is not None:
        if qkv.dim() == 4:
            return "temporal attention takes no mask"
        G = qkv.shape[0]
        if mask.dim() != 3 or tuple(mask.shape[1:]) != (L, L) or G % max(1, mask.shape[0]):
            return f"expected mask of shape (nW, {L}, {L}) with nW dividing G = {G}, got {tuple(mask.shape)}"
    return None


def _aligned(full: torch.Tensor) -> torch.Tensor:
    """``full`` (..., L, L) as a view into a buffer whose rows are padded to a multiple of 8 (xformers' alignment)."""
    L = full.shape[-1]
    pad = -L % _BIAS_ALIGN
    return F.pad(full, (0, pad))[..., :L] if pad else full.contiguous()


def temporal_attention(qkv: torch.Tensor, num_heads: int, scale: float,
                       bias: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """qkv (B, M, N, 3 * H * hd) -> (B, M, N, H * hd): attention across the M frames per (token, head), plus
    ``bias`` (H, M, M) on the scores if given (an attn_bias tensor (B, N * H, M, M), the (H, M, M) bias repeated
    per (batch, token): a copy, differentiable, so bias gets its gradient)."""
    import xformers.ops as xops

    B, M, N, C3 = qkv.shape
    hd = C3 // (3 * num_heads)
    q, k, v = qkv.view(B, M, N, 3, num_heads, hd).unbind(3)  # each (B, M, N, H, hd), strided
    q, k, v = (t.reshape(B, M, N * num_heads, hd) for t in (q, k, v))  # BMHK with N * H heads (copies)
    attn_bias = None
    if bias is not None:
        row = M + (-M % _BIAS_ALIGN)  # one copy, rows padded for alignment, then the (B, N * H, M, M) view
        padded = F.pad(bias.to(q.dtype), (0, row - M))[None, None].expand(B, N, num_heads, M, row)
        attn_bias = padded.reshape(B, N * num_heads, M, row)[..., :M]
    out = xops.memory_efficient_attention(q, k, v, attn_bias=attn_bias, scale=scale)  # (B, M, N * H, hd)
    return out.reshape(B, M, N, num_heads * hd)


def spatial_attention(qkv: torch.Tensor, num_heads: int, scale: float, bias: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """qkv (G, N, 3 * H * hd) -> (G, N, H * hd): attention within each frame, or (Swin) each window, with the
    additive ``bias`` (H, N, N) and the window ``mask`` (nW, N, N) of sequence g's window g % nW as an attn_bias
    tensor (G, H, N, N) (see :func:`stgcma_fast.ops.torch_ops.spatial_attention`)."""
    import xformers.ops as xops

    G, N, C3 = qkv.shape
    hd = C3 // (3 * num_heads)
    q, k, v = qkv.view(G, N, 3, num_heads, hd).unbind(2)  # each (G, N, H, hd) = BMHK, strided
    if torch.is_grad_enabled() and qkv.requires_grad:
        q, k, v = (t.contiguous() for t in (q, k, v))
    attn_bias = None
    if bias is not None or mask is not None:
        attn_bias = _aligned(window_mask(bias, mask, G, q.dtype).expand(G, num_heads, N, N))
    out = xops.memory_efficient_attention(q, k, v, attn_bias=attn_bias, scale=scale)
    return out.reshape(G, N, num_heads * hd)
