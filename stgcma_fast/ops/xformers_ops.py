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

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HAVE_XFORMERS = importlib.util.find_spec("xformers") is not None  # checked once: supports() must stay traceable


def supports(qkv: torch.Tensor, num_heads: int, scale: float) -> str | None:
    """None if xformers can run this attention, else why not."""
    if not HAVE_XFORMERS:
        return "xformers is not installed (pip install 'stgcma-fast[xformers]')"
    if qkv.device.type != "cuda":
        return f"xformers has no kernels for device {qkv.device.type}"
    if qkv.dtype not in DTYPES:
        return f"dtype {qkv.dtype} not in {DTYPES}"
    hd = qkv.shape[-1] // (3 * num_heads)
    if hd % 8:
        return f"head dim {hd} is not a multiple of 8"
    return None


def temporal_attention(qkv: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """qkv (B, M, N, 3 * H * hd) -> (B, M, N, H * hd): attention across the M frames per (token, head)."""
    import xformers.ops as xops

    B, M, N, C3 = qkv.shape
    hd = C3 // (3 * num_heads)
    q, k, v = qkv.view(B, M, N, 3, num_heads, hd).unbind(3)  # each (B, M, N, H, hd), strided
    q, k, v = (t.reshape(B, M, N * num_heads, hd) for t in (q, k, v))  # BMHK with N * H heads (copies)
    out = xops.memory_efficient_attention(q, k, v, scale=scale)  # (B, M, N * H, hd)
    return out.reshape(B, M, N, num_heads * hd)


def spatial_attention(qkv: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """qkv (G, N, 3 * H * hd) -> (G, N, H * hd): attention within each frame."""
    import xformers.ops as xops

    G, N, C3 = qkv.shape
    hd = C3 // (3 * num_heads)
    q, k, v = qkv.view(G, N, 3, num_heads, hd).unbind(2)  # each (G, N, H, hd) = BMHK, strided
    if torch.is_grad_enabled() and qkv.requires_grad:
        q, k, v = (t.contiguous() for t in (q, k, v))
    return xops.memory_efficient_attention(q, k, v, scale=scale).reshape(G, N, num_heads * hd)
