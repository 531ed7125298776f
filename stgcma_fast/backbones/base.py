"""The seam between STG-CMA and a frozen backbone family: its geometry, its frozen parts, embeddings and pooling.

A :class:`Backbone` wraps the frozen timm module (which stays registered on the STG-CMA model as ``backbone``, so
parameter names do not depend on the seam) and answers everything the STG-CMA code needs to know about it:

- ``embed_video`` / ``embed_audio``: the frozen embeddings of the first stage's input, per frame / segment;
- ``stages``: per stage its blocks, width, heads, adapter bottleneck and whether a frozen downsampling (Swin's patch
  merging) runs before it; ``downsample`` runs that;
- ``block_parts(i)``: block i's frozen parts (norms, attention, MLP, layer scales) and its spatial attention layout;
- ``final_norm``, ``pool`` (ViT: the class token; Swin: the token mean) and ``stage_map`` (a stage's tokens as a
  (B, M, C, H, W) map for dense tasks).

It holds references to the frozen modules only, never to their parameters, so ``to()``, ``to_empty()`` and
``load_state_dict(assign=True)`` on the model keep it valid.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Stage:
    """One stage of a backbone.

    Attributes:
        index: the stage's position (0-based).
        blocks: the global indices of its blocks (the STG-CMA adapters of block i are ``adapters.{i}``).
        width: C_s, the token width of its blocks.
        heads: the attention heads of its blocks.
        bottleneck: r_s, the width of its adapters' bottleneck.
        grid: (H_s, W_s), the token grid of one video frame in this stage.
        audio_grid: the token grid of one audio segment in this stage (rows = time).
        downsample: whether a frozen downsampling runs before its first block.
    """

    index: int
    blocks: range
    width: int
    heads: int
    bottleneck: int
    grid: tuple[int, int]
    audio_grid: tuple[int, int]
    downsample: bool = False


@dataclass(frozen=True)
class GlobalAttention:
    """Spatial attention layout: one attention over all the tokens of a frame (ViT, class token included)."""


@dataclass(frozen=True)
class ShiftedWindows:
    """Spatial attention layout of a Swin block: the (H, W) token map of a frame, cyclically shifted by ``-shift``
    (rows, columns), cut into non-overlapping ``window`` (h, w) windows; attention runs within each window (with the
    frozen relative-position bias and, where shifted, the shift mask of :meth:`Backbone.attention_mask`).

    Windows are ordered row-major over the window grid, as timm's ``window_partition`` orders them, and tokens
    row-major within a window.
    """

    grid: tuple[int, int]
    window: tuple[int, int]
    shift: tuple[int, int] = (0, 0)

    @property
    def num_windows(self) -> int:
        return (self.grid[0] // self.window[0]) * (self.grid[1] // self.window[1])

    @property
    def area(self) -> int:
        """Tokens per window."""
        return self.window[0] * self.window[1]

    @property
    def row_major(self) -> bool:
        """Whether the window order of the tokens is the row-major order itself (no shift, windows of whole rows)."""
        return self.shift == (0, 0) and self.window[1] == self.grid[1]

    def order(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(N,) int64: the row-major index of the token at each position of the window order (window by window,
        row-major within a window, after the shift): ``partition(x)`` is ``x[:, :, order]`` viewed as windows."""
        H, W = self.grid
        return self.partition(torch.arange(H * W, device=device).view(1, 1, H * W, 1)).reshape(H * W)

    def partition(self, x: torch.Tensor) -> torch.Tensor:
        """(B, M, N, C) tokens of the (H, W) map -> (B * M, nW, area, C): shifted, cut into windows (a copy)."""
        B, M, N, C = x.shape
        (H, W), (wh, ww), (sh, sw) = self.grid, self.window, self.shift
        x = x.reshape(B * M, H, W, C)
        if sh or sw:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        x = x.view(B * M, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(B * M, self.num_windows, wh * ww, C)

    def reverse(self, w: torch.Tensor, batch: int) -> torch.Tensor:
        """(B * M, nW, area, C) windows -> (B, M, N, C) tokens, the shift undone; ``batch`` = B."""
        G, _, _, C = w.shape
        (H, W), (wh, ww), (sh, sw) = self.grid, self.window, self.shift
        x = w.reshape(G, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(G, H, W, C)
        if sh or sw:
            x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
        return x.reshape(batch, G // batch, H * W, C)


SpatialLayout = GlobalAttention | ShiftedWindows


@dataclass(frozen=True)
class BlockParts:
    """The frozen parts of one block that the STG-CMA recipe runs, shared by both modalities.

    ``attn`` has ``qkv``, ``proj`` (nn.Linear), ``num_heads`` and ``scale``; ``mlp`` has ``fc1``, ``act``,
    ``drop1``, ``norm``, ``fc2``, ``drop2`` (timm's Mlp); ``ls1`` / ``ls2`` are the layer scales (Identity where the
    family has none). ``layout`` says how the spatial attention groups the tokens of a frame. ``temporal``: whether
    the block runs STG-CMA's temporal pass (Swin: only the unshifted, even-index blocks of a stage).
    """

    norm1: nn.Module
    attn: nn.Module
    ls1: nn.Module
    norm2: nn.Module
    mlp: nn.Module
    ls2: nn.Module
    layout: SpatialLayout
    temporal: bool = True

    @property
    def num_heads(self) -> int:
        return self.attn.num_heads

    @property
    def scale(self) -> float:
        return self.attn.scale


class Backbone(abc.ABC):
    """What STG-CMA needs from a frozen backbone family (see the module docstring).

    Attributes set by the subclass: ``module`` (the timm model), ``stages``, ``img_size`` (H, W) of a video frame,
    ``audio_grid`` (first-stage token grid of an audio segment, rows = time), ``num_video_tokens`` /
    ``num_audio_tokens`` (first-stage tokens per frame / segment), ``has_temporal_embedding`` (whether STG-CMA adds
    a trainable temporal embedding per modality to the embedded tokens), ``temporal_bias`` (whether each temporal
    pass adds a trainable (2M - 1, heads) relative-position bias per modality: Swin), ``audio_embed`` (a frozen
    module of the family's own audio embedding that the STG-CMA model registers as ``audio_patch_embed``, or None).
    """

    family: str
    module: nn.Module
    stages: tuple[Stage, ...]
    img_size: tuple[int, int]
    audio_grid: tuple[int, int]
    num_video_tokens: int
    num_audio_tokens: int
    has_temporal_embedding: bool
    temporal_bias: bool = False
    audio_embed: nn.Module | None = None

    # ------------------------------------------------------------------ geometry
    @property
    def depth(self) -> int:
        """The number of blocks over all stages."""
        return sum(len(s.blocks) for s in self.stages)

    @property
    def embed_dim(self) -> int:
        """The token width of the first stage (the embeddings' width)."""
        return self.stages[0].width

    @property
    def num_features(self) -> int:
        """The width of the pooled features (the last stage's)."""
        return self.stages[-1].width

    @property
    @abc.abstractmethod
    def patch_weight(self) -> torch.Tensor:
        """The video patch-embedding weight: its device and dtype are the model's."""

    # ------------------------------------------------------------------ parts
    @abc.abstractmethod
    def block(self, i: int) -> nn.Module:
        """The frozen timm block i (global index)."""

    @abc.abstractmethod
    def block_parts(self, i: int) -> BlockParts:
        """Block i's frozen parts and spatial layout."""

    def attention_bias(self, i: int) -> torch.Tensor | None:
        """Block i's frozen additive bias (H, N, N) on the spatial attention scores (Swin: the relative-position
        bias of a window), or None."""
        return None

    def attention_mask(self, i: int) -> torch.Tensor | None:
        """Block i's additive mask (nW, N, N) of each window (Swin's shift mask, 0 / -100), or None."""
        return None

    def init_buffers(self) -> None:
        """Recompute the frozen modules' non-persistent buffers (after ``to_empty``, which leaves them
        uninitialised); nothing for a family without any."""
        return None

    @abc.abstractmethod
    def freeze(self) -> None:
        """Freeze the backbone, except what STG-CMA trains of it."""

    # ------------------------------------------------------------------ computation
    @abc.abstractmethod
    def embed_video(self, video: torch.Tensor, temporal_embed: torch.Tensor | None) -> torch.Tensor:
        """(B, M, 3, H, W) -> (B, M, N_v, C_0) first-stage tokens; ``temporal_embed`` (M, C_0) or None."""

    @abc.abstractmethod
    def embed_audio(self, audio: torch.Tensor, temporal_embed: torch.Tensor | None, reduction: str) -> torch.Tensor:
        """(B, K, T, F) -> (B, K, N_a, C_0) first-stage tokens; ``reduction`` of the RGB patch kernel."""

    def downsample(self, stage: Stage, x: torch.Tensor) -> torch.Tensor:
        """The frozen downsampling before ``stage`` (only called where ``stage.downsample``)."""
        raise NotImplementedError(f"{self.family} backbones have no downsampling (stage {stage.index})")

    @abc.abstractmethod
    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm after the last block, on (B, M, N, C)."""

    @abc.abstractmethod
    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, M, N, C) after the final norm -> (B, M, C) pooled per frame."""

    @abc.abstractmethod
    def stage_map(self, stage: Stage, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, M, N, C_s) tokens of ``stage`` -> (B, M, C_s, H_s, W_s) map on ``grid`` (default: the video grid;
        ``stage.audio_grid`` for audio)."""

    def drop_path_rates(self, rate: float) -> list[float]:
        """Drop-path rate of the temporal branch per block: linear from 0 at the first block to ``rate``."""
        return drop_path_rates(rate, self.depth)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Linear drop-path schedule from 0 at the first block to ``rate`` at the last."""
    return [rate * i / max(depth - 1, 1) for i in range(depth)]
