"""The frozen timm ViT backbone: building it, loading weights, the audio embedding derived from it, and
:class:`ViTBackbone`, its side of the backbone seam (one stage, class-token pooling)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Attention, Block, VisionTransformer, checkpoint_filter_fn

from ..config import STGCMAConfig
from .base import Backbone, BlockParts, GlobalAttention, Stage


def create_backbone(
    config: STGCMAConfig, pretrained: bool = False, checkpoint_path: str | Path | None = None
) -> VisionTransformer:
    """Build the timm ViT named by ``config.backbone`` without a classifier.

    ``pretrained=True`` loads the weights through timm (from its hub cache or a download); ``checkpoint_path`` loads
    a local file instead: a timm state dict or an OpenAI CLIP state dict (``visual.*`` keys, converted by timm's own
    checkpoint filter), as ``.pt/.pth/.bin``, ``.safetensors`` or an OpenAI TorchScript archive. Every backbone
    tensor must be present in the file.
    """
    if pretrained and checkpoint_path is not None:
        raise ValueError("pass either pretrained=True (weights through timm) or checkpoint_path, not both")
    kwargs = {**config.backbone_kwargs, "num_classes": 0}
    model = timm.create_model(config.backbone, pretrained=pretrained, **kwargs)
    check_supported(model, config.backbone)
    if checkpoint_path is not None:
        load_backbone_checkpoint(model, checkpoint_path)
    return model


def check_supported(model: torch.nn.Module, name: str = "backbone") -> None:
    """Raise ValueError if ``model`` is not a ViT that STG-CMA's adapters can be wrapped around."""
    reasons = []
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"{name}: expected a timm VisionTransformer, got {type(model).__name__} "
                         "(STG-CMA builds on timm VisionTransformer and SwinTransformer backbones)")
    if model.cls_token is None:
        reasons.append("it has no class token (class_token=False)")
    if getattr(model, "reg_token", None) is not None:
        reasons.append("it has register tokens")
    if getattr(model, "no_embed_class", False):
        reasons.append("its position embedding excludes the class token (no_embed_class=True)")
    if model.pos_embed is None:
        reasons.append("it has no absolute position embedding")
    if getattr(model, "dynamic_img_size", False):
        reasons.append("dynamic_img_size=True")
    if not isinstance(model.patch_embed, PatchEmbed) or not getattr(model.patch_embed, "flatten", True):
        reasons.append("its patch embedding is not a flattening timm PatchEmbed")
    for i, blk in enumerate(model.blocks):
        if type(blk) is not Block or type(blk.attn) is not Attention:
            found = f"{type(blk).__name__}/{type(blk.attn).__name__}"
            reasons.append(f"block {i} is {found}, expected timm Block/Attention")
            break
        attn = blk.attn
        extras = [n for n in ("q_norm", "k_norm", "norm") if not isinstance(getattr(attn, n, None), torch.nn.Identity)]
        if getattr(attn, "gate", None) is not None:
            extras.append("gate")
        if extras:
            reasons.append(f"block {i} attention has {extras} (qk-norm / scale-norm / gating are not supported)")
            break
    if reasons:
        raise ValueError(f"{name}: cannot build STG-CMA on this backbone: " + "; ".join(reasons))


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    try:
        return timm.models.load_state_dict(str(path))
    except RuntimeError as err:  # OpenAI's own CLIP files are TorchScript archives
        if "jit" not in str(err).lower() and "torchscript" not in str(err).lower():
            raise
        return torch.jit.load(str(path), map_location="cpu").state_dict()


def load_backbone_checkpoint(model: VisionTransformer, checkpoint_path: str | Path) -> None:
    """Load a timm or OpenAI CLIP state dict from a local file into ``model`` (strict on backbone tensors)."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint {path} does not exist")
    state = checkpoint_filter_fn(_read_checkpoint(path), model)  # converts OpenAI CLIP keys, resamples pos embed
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # the classifier / CLIP projection is unused
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"backbone checkpoint {path} does not match the backbone: missing {sorted(missing)[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected {sorted(unexpected)[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}")


def patch_size(model: VisionTransformer) -> tuple[int, int]:
    return tuple(model.patch_embed.patch_size)


def audio_grid(model: VisionTransformer, audio_size: tuple[int, int]) -> tuple[int, int]:
    """Audio patch grid (T / p_h, F / p_w) of a (T, F) spectrogram; rows are time. Raises if smaller than a patch."""
    ph, pw = patch_size(model)
    T, F_ = audio_size
    if T < ph or F_ < pw:
        raise ValueError(f"expected an audio spectrogram of at least one patch ({ph} x {pw}), "
                         f"got (T, F) = {audio_size}")
    return T // ph, F_ // pw


def audio_patch_weight(model: VisionTransformer, reduction: str) -> torch.Tensor:
    """The frozen RGB patch-embedding kernel reduced to one input channel: (D, 1, p_h, p_w)."""
    w = model.patch_embed.proj.weight
    return w.mean(dim=1, keepdim=True) if reduction == "mean" else w.sum(dim=1, keepdim=True)


def audio_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """Position embedding for the audio grid, derived from the visual one.

    pos_embed: (1, 1 + G_h * G_w, D) with the class position first; grid: (G_h, G_w); target: (T_p, F_p) audio
    patch grid, rows = time. Along each axis the visual grid is bilinearly resized where it is smaller than the audio
    grid, then centre-cropped (start = G // 2 - t // 2, as in AST) where it is larger. Returns (1, 1 + T_p * F_p, D)
    with the class position reused.
    """
    gh, gw = grid
    th, tw = target
    D = pos_embed.shape[-1]
    cls_pos, grid_pos = pos_embed[:, :1], pos_embed[:, 1:]
    if grid_pos.shape[1] != gh * gw:
        raise ValueError(f"expected {gh * gw} grid positions in pos_embed, got {grid_pos.shape[1]}")
    g = grid_pos.reshape(1, gh, gw, D).permute(0, 3, 1, 2)  # (1, D, G_h, G_w)
    rh, rw = max(gh, th), max(gw, tw)
    if (rh, rw) != (gh, gw):
        g = F.interpolate(g.float(), size=(rh, rw), mode="bilinear", align_corners=False).to(pos_embed.dtype)
    h0, w0 = rh // 2 - th // 2, rw // 2 - tw // 2
    g = g[:, :, h0 : h0 + th, w0 : w0 + tw]
    return torch.cat([cls_pos, g.flatten(2).transpose(1, 2)], dim=1)


def freeze_backbone(model: VisionTransformer) -> None:
    """Freeze every backbone tensor except the final LayerNorm, which STG-CMA trains (authors' code)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.norm.parameters():
        p.requires_grad_(True)


class ViTBackbone(Backbone):
    """A timm VisionTransformer (CLIP-style: class token, absolute positions, optional pre-norm) behind the seam.

    One stage of ``depth`` blocks, no downsampling; every block attends over all tokens of a frame; the frozen
    embeddings add a trainable temporal embedding per modality (before the pre-norm); the pooled feature is the
    class token after the final norm (the one part of the backbone STG-CMA trains). Token layout (B, M, N, D) with
    the class token first.
    """

    family = "vit"
    has_temporal_embedding = True

    def __init__(self, module: VisionTransformer, config: STGCMAConfig) -> None:
        check_supported(module, config.backbone)
        self.module = module
        D = module.embed_dim
        pe = module.patch_embed
        self.img_size = tuple(pe.img_size)
        self.audio_grid = audio_grid(module, config.audio_size)
        self.num_video_tokens = 1 + pe.num_patches
        self.num_audio_tokens = 1 + self.audio_grid[0] * self.audio_grid[1]
        blocks = module.blocks
        self.stages = (Stage(index=0, blocks=range(len(blocks)), width=D, heads=blocks[0].attn.num_heads,
                             bottleneck=config.bottleneck_width(D), grid=tuple(pe.grid_size),
                             audio_grid=self.audio_grid),)  # fmt: skip
        self._parts = tuple(BlockParts(norm1=b.norm1, attn=b.attn, ls1=b.ls1, norm2=b.norm2, mlp=b.mlp, ls2=b.ls2,
                                       layout=GlobalAttention()) for b in blocks)  # fmt: skip

    @property
    def patch_weight(self) -> torch.Tensor:
        return self.module.patch_embed.proj.weight

    def block(self, i: int) -> Block:
        return self.module.blocks[i]

    def block_parts(self, i: int) -> BlockParts:
        return self._parts[i]

    def freeze(self) -> None:
        freeze_backbone(self.module)

    def embed_video(self, video: torch.Tensor, temporal_embed: torch.Tensor | None) -> torch.Tensor:
        """(B, M, 3, H, W) -> (B, M, N_v, D): patches, class token, position (+ temporal embedding e_m), pre-norm."""
        bb = self.module
        B, M = video.shape[:2]
        D = bb.embed_dim
        patches = bb.patch_embed(video.reshape(B * M, *video.shape[2:])).view(B, M, -1, D)
        pos = bb.pos_embed.view(1, 1, -1, D)
        if temporal_embed is not None:
            pos = pos + temporal_embed.view(1, M, 1, -1)  # (1, M, N_v, D)
        cls = bb.cls_token.view(1, 1, 1, -1).expand(B, M, 1, -1)
        return bb.norm_pre(torch.cat([cls, patches], dim=2) + pos)

    def embed_audio(self, audio: torch.Tensor, temporal_embed: torch.Tensor | None, reduction: str) -> torch.Tensor:
        """(B, K, T, F) -> (B, K, N_a, D): the spectrogram as a 1-channel image (rows = time) through the RGB-reduced
        patch kernel, class token, the visual positions fitted to the audio grid (+ e_k), pre-norm."""
        bb = self.module
        B, K, T, F_ = audio.shape
        D = bb.embed_dim
        weight = audio_patch_weight(bb, reduction)
        patches = F.conv2d(audio.reshape(B * K, 1, T, F_), weight, bb.patch_embed.proj.bias,
                           stride=bb.patch_embed.patch_size)
        patches = bb.patch_embed.norm(patches.flatten(2).transpose(1, 2)).view(B, K, -1, D)
        pos = audio_pos_embed(bb.pos_embed, bb.patch_embed.grid_size, self.audio_grid).view(1, 1, -1, D)
        if temporal_embed is not None:
            pos = pos + temporal_embed.view(1, K, 1, -1)
        cls = bb.cls_token.view(1, 1, 1, -1).expand(B, K, 1, -1)
        return bb.norm_pre(torch.cat([cls, patches], dim=2) + pos)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The class token of every frame: (B, M, N, D) -> (B, M, D)."""
        return x[:, :, 0]

    def stage_map(self, stage: Stage, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """The patch tokens (class token dropped) as a map: (B, M, N, D) -> (B, M, D, H, W), ``grid`` (H, W)
        defaulting to the video grid (pass ``stage.audio_grid`` for audio)."""
        H, W = stage.grid if grid is None else grid
        B, M, _, D = x.shape
        return x[:, :, 1:].transpose(-1, -2).reshape(B, M, D, H, W)
