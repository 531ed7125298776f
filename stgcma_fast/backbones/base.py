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


SpatialLayout = GlobalAttention  # Swin adds shifted-window layouts


@dataclass(frozen=True)
class BlockParts:
    """The frozen parts of one block that the STG-CMA recipe runs, shared by both modalities.

    ``attn`` has ``qkv``, ``proj`` (nn.Linear), ``num_heads`` and ``scale``; ``mlp`` has ``fc1``, ``act``,
    ``drop1``, ``norm``, ``fc2``, ``drop2`` (timm's Mlp); ``ls1`` / ``ls2`` are the layer scales (Identity where the
    family has none). ``layout`` says how the spatial attention groups the tokens of a frame.
    """

    norm1: nn.Module
    attn: nn.Module
    ls1: nn.Module
    norm2: nn.Module
    mlp: nn.Module
    ls2: nn.Module
    layout: SpatialLayout

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
    a trainable temporal embedding per modality to the embedded tokens).
    """

    family: str
    module: nn.Module
    stages: tuple[Stage, ...]
    img_size: tuple[int, int]
    audio_grid: tuple[int, int]
    num_video_tokens: int
    num_audio_tokens: int
    has_temporal_embedding: bool

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
