"""Compatibility alias: the ViT backbone code lives in :mod:`stgcma_fast.backbones.vit`."""

from .backbones.base import drop_path_rates
from .backbones.vit import (
    audio_grid,
    audio_patch_weight,
    audio_pos_embed,
    check_supported,
    create_backbone,
    freeze_backbone,
    load_backbone_checkpoint,
    patch_size,
)

__all__ = ["audio_grid", "audio_patch_weight", "audio_pos_embed", "check_supported", "create_backbone",
           "drop_path_rates", "freeze_backbone", "load_backbone_checkpoint", "patch_size"]
