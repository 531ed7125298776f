"""Small models and randomisation shared by the model tests."""

from __future__ import annotations

import torch

from stgcma_fast import FastSTGCMA, ReferenceSTGCMA, STGCMAConfig

# A CLIP-shaped ViT small enough for CPU tests: 32 x 32 images with 8 x 8 patches -> 17 video tokens; audio
# spectrograms 20 x 24 -> 2 x 3 patches -> 7 audio tokens; the 4 x 4 visual grid is resized along frequency
# and centre-cropped along time.
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
TINY_BACKBONE = "vit_base_patch16_clip_quickgelu_224"


def tiny_config(**overrides) -> STGCMAConfig:
    kw = dict(backbone=TINY_BACKBONE, backbone_kwargs=TINY_VIT, adapter=24, num_frames=3, audio_size=(20, 24),
              drop_path_rate=0.0)
    kw.update(overrides)
    return STGCMAConfig(**kw)


def randomize_(model: torch.nn.Module, std: float = 0.3, frozen_too: bool = True) -> torch.nn.Module:
    """Give every parameter (adapters, gates, temporal embeddings, and optionally the frozen backbone) random
    values: zero-initialised up-projections and gates would hide almost every bug."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad or frozen_too:
                if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm_pre.weight")):
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(std * torch.randn(p.shape, generator=g))
    return model


def model_pair(config: STGCMAConfig, std: float = 0.3, dtype: torch.dtype = torch.float64,
               **fast_kwargs) -> tuple[ReferenceSTGCMA, FastSTGCMA]:
    """A reference and a fast model holding the same (randomised) weights, in ``dtype``."""
    ref = randomize_(ReferenceSTGCMA(config), std=std).to(dtype)
    fast = FastSTGCMA(config, **fast_kwargs).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def inputs(config: STGCMAConfig, batch: int = 2, dtype: torch.dtype = torch.float32, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    H, W = config.backbone_kwargs.get("img_size", 224), config.backbone_kwargs.get("img_size", 224)
    M = config.num_frames
    video = torch.randn(batch, M, 3, H, W, generator=g).to(dtype) if config.has_video else None
    audio = torch.randn(batch, M, *config.audio_size, generator=g).to(dtype) if config.has_audio else None
    return video, audio
