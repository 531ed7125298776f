"""Frozen backbone families behind one seam (:class:`stgcma_fast.backbones.base.Backbone`).

:func:`create_backbone` builds the frozen timm module a config names; :func:`build_backbone` wraps it in its
family's seam: ``vit`` holds the ViT family (CLIP towers), ``swin`` the Swin Transformers.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from ..config import STGCMAConfig
from .base import Backbone, BlockParts, GlobalAttention, ShiftedWindows, SpatialLayout, Stage, drop_path_rates
from .swin import SwinBackbone
from .vit import ViTBackbone

__all__ = ["Backbone", "BlockParts", "GlobalAttention", "ShiftedWindows", "SpatialLayout", "Stage", "SwinBackbone",
           "ViTBackbone", "build_backbone", "create_backbone", "drop_path_rates"]


def create_backbone(config: STGCMAConfig, pretrained: bool = False,
                    checkpoint_path: str | Path | None = None) -> nn.Module:  # fmt: skip
    """The frozen timm module ``config.backbone`` names, without a classifier, with weights from timm
    (``pretrained``) or a local file (``checkpoint_path``); see the families' ``create_*backbone``."""
    if config.family == "swin":
        from .swin import create_swin_backbone

        return create_swin_backbone(config, pretrained=pretrained, checkpoint_path=checkpoint_path)
    from .vit import create_backbone as create_vit_backbone

    return create_vit_backbone(config, pretrained=pretrained, checkpoint_path=checkpoint_path)


def build_backbone(module: nn.Module, config: STGCMAConfig) -> Backbone:
    """The seam for the frozen timm ``module`` built from ``config`` (raises ValueError for an unsupported one)."""
    from timm.models.swin_transformer import SwinTransformer

    if isinstance(module, SwinTransformer):
        return SwinBackbone(module, config)
    return ViTBackbone(module, config)
