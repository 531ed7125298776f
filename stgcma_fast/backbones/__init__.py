"""Frozen backbone families behind one seam (:class:`stgcma_fast.backbones.base.Backbone`).

:func:`build_backbone` wraps a frozen timm module in its family's seam; ``vit`` holds the ViT family (CLIP towers).
"""

from __future__ import annotations

import torch.nn as nn

from ..config import STGCMAConfig
from .base import Backbone, BlockParts, GlobalAttention, SpatialLayout, Stage, drop_path_rates
from .vit import ViTBackbone

__all__ = ["Backbone", "BlockParts", "GlobalAttention", "SpatialLayout", "Stage", "ViTBackbone", "build_backbone",
           "drop_path_rates"]


def build_backbone(module: nn.Module, config: STGCMAConfig) -> Backbone:
    """The seam for the frozen timm ``module`` built from ``config`` (raises ValueError for an unsupported one)."""
    return ViTBackbone(module, config)
