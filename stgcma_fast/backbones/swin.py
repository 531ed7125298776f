"""The frozen timm Swin Transformer backbone: building it, loading weights (timm's or Microsoft's original layout),
its separate frozen 1-channel audio patch embedding, and :class:`SwinBackbone`, its side of the backbone seam
(four stages with patch merging, shifted-window attention, token-mean pooling)."""

from __future__ import annotations

import copy
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, WindowAttention, checkpoint_filter_fn

from ..config import STGCMAConfig
from .base import Backbone, BlockParts, ShiftedWindows, Stage


def create_swin_backbone(
    config: STGCMAConfig, pretrained: bool = False, checkpoint_path: str | Path | None = None
) -> SwinTransformer:
    """Build the timm Swin named by ``config.backbone`` without a classifier.

    ``pretrained=True`` loads the weights through timm; ``checkpoint_path`` loads a local file instead: a timm state
    dict or Microsoft's original Swin format (``swin_*_22k.pth``: ``model`` key, patch merging at the end of stages
    0-2), converted by timm's own Swin checkpoint filter. Every backbone tensor must be present in the file.
    """
    if pretrained and checkpoint_path is not None:
        raise ValueError("pass either pretrained=True (weights through timm) or checkpoint_path, not both")
    kwargs = {**config.backbone_kwargs, "num_classes": 0}
    model = timm.create_model(config.backbone, pretrained=pretrained, **kwargs)
    check_supported(model, config.backbone)
    if checkpoint_path is not None:
        load_swin_checkpoint(model, checkpoint_path)
    return model


def check_supported(model: nn.Module, name: str = "backbone") -> None:
    """Raise ValueError if ``model`` is not a Swin Transformer that STG-CMA's adapters can be wrapped around."""
    if not isinstance(model, SwinTransformer):
        raise ValueError(f"{name}: expected a timm SwinTransformer, got {type(model).__name__}")
    reasons = []
    if getattr(model.patch_embed, "dynamic_img_size", False) or not getattr(model.patch_embed, "strict_img_size", True):
        reasons.append("dynamic image sizes (strict_img_size=False)")
    for s, layer in enumerate(model.layers):
        for j, blk in enumerate(layer.blocks):
            if type(blk) is not SwinTransformerBlock or type(blk.attn) is not WindowAttention:
                reasons.append(f"stage {s} block {j} is {type(blk).__name__}/{type(blk.attn).__name__}, expected "
                               "timm SwinTransformerBlock/WindowAttention")
            elif getattr(blk, "dynamic_mask", False):
                reasons.append(f"stage {s} block {j} computes its shift mask per input (dynamic_mask=True)")
            elif any(r % w for r, w in zip(blk.input_resolution, blk.window_size)):
                reasons.append(f"stage {s} block {j}: its token map {tuple(blk.input_resolution)} is not a whole "
                               f"number of {tuple(blk.window_size)} windows")
            if len(reasons) > 1 or (reasons and "stage" in reasons[-1]):
                break
        else:
            continue
        break
    if reasons:
        raise ValueError(f"{name}: cannot build STG-CMA on this backbone: " + "; ".join(reasons))


def load_swin_checkpoint(model: SwinTransformer, checkpoint_path: str | Path) -> None:
    """Load a timm or Microsoft-format Swin state dict from a local file into ``model`` (strict on backbone
    tensors; the classifier is dropped)."""
    from .vit import _read_checkpoint

    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint {path} does not exist")
    state = checkpoint_filter_fn(_read_checkpoint(path), model)  # Microsoft layout -> timm's (patch merging moved)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"backbone checkpoint {path} does not match the backbone: missing {sorted(missing)[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected {sorted(unexpected)[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}")


class AudioPatchEmbed(nn.Module):
    """The frozen 1-channel patch embedding of the audio branch (Swin): ``proj`` is the pretrained RGB patch conv
    reduced over its input channels (``"mean"``, or ``"sum"``), its bias and the patch ``norm`` are copies.

    (B, 1, T, F) -> (B, T / p, F / p, C), rows = time (NHWC, as the video patch embedding).
    """

    def __init__(self, patch_embed: nn.Module, reduction: str = "mean") -> None:
        super().__init__()
        conv = patch_embed.proj
        w = conv.weight
        self.proj = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, bias=conv.bias is not None,
                              device=w.device, dtype=w.dtype)  # fmt: skip
        self.norm = copy.deepcopy(patch_embed.norm)
        with torch.no_grad():
            self.proj.weight.copy_(w.mean(1, keepdim=True) if reduction == "mean" else w.sum(1, keepdim=True))
            if conv.bias is not None:
                self.proj.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinBackbone(Backbone):
    """A timm SwinTransformer behind the seam.

    Stages as timm builds them (PatchMerging at the start of stages 1-3); each block attends within (shifted)
    windows of the frame's token map; STG-CMA's temporal pass runs in the even-index (unshifted) blocks of every
    stage only, with a trainable temporal relative-position bias per modality instead of a temporal embedding; the
    audio branch has its own frozen 1-channel patch embedding (``audio_embed``); the pooled feature is the token
    mean after the frozen final norm. Token layout (B, M, N, C), N = H_s * W_s row-major.
    """

    family = "swin"
    has_temporal_embedding = False
    temporal_bias = True

    def __init__(self, module: SwinTransformer, config: STGCMAConfig) -> None:
        check_supported(module, config.backbone)
        self.module = module
        pe = module.patch_embed
        self.img_size = tuple(pe.img_size)
        if tuple(config.audio_size) != self.img_size:
            raise ValueError(f"expected audio_size (T, F) = {self.img_size} for the Swin backbone {config.backbone!r}"
                             f" (each audio segment is an image of the video frame's size, so that audio and video "
                             f"windows pair one to one), got {tuple(config.audio_size)}")
        self.audio_grid = tuple(pe.grid_size)
        self.num_video_tokens = self.num_audio_tokens = self.audio_grid[0] * self.audio_grid[1]
        layers = list(module.layers)
        widths = tuple(layer.blocks[0].norm1.normalized_shape[0] for layer in layers)
        bottlenecks = config.stage_bottlenecks(widths)
        stages, blocks, parts, start = [], [], [], 0
        identity = nn.Identity()
        for s, (layer, width, r) in enumerate(zip(layers, widths, bottlenecks)):
            grid = tuple(layer.blocks[0].input_resolution)
            stages.append(Stage(index=s, blocks=range(start, start + len(layer.blocks)), width=width,
                                heads=layer.blocks[0].attn.num_heads, bottleneck=r, grid=grid, audio_grid=grid,
                                downsample=not isinstance(layer.downsample, nn.Identity)))  # fmt: skip
            for j, blk in enumerate(layer.blocks):
                layout = ShiftedWindows(grid=tuple(blk.input_resolution), window=tuple(blk.window_size),
                                        shift=tuple(blk.shift_size))  # fmt: skip
                blocks.append(blk)
                parts.append(BlockParts(norm1=blk.norm1, attn=blk.attn, ls1=identity, norm2=blk.norm2, mlp=blk.mlp,
                                        ls2=identity, layout=layout, temporal=j % 2 == 0))  # fmt: skip
            start += len(layer.blocks)
        self.stages = tuple(stages)
        self._blocks = tuple(blocks)
        self._parts = tuple(parts)
        self.audio_embed = AudioPatchEmbed(pe, config.audio_patch_reduction) if config.has_audio else None

    @property
    def patch_weight(self) -> torch.Tensor:
        return self.module.patch_embed.proj.weight

    def block(self, i: int) -> SwinTransformerBlock:
        return self._blocks[i]

    def block_parts(self, i: int) -> BlockParts:
        return self._parts[i]

    def attention_bias(self, i: int) -> torch.Tensor:
        """Block i's frozen relative-position bias (H, N, N) of one window, N = window area."""
        attn = self._blocks[i].attn
        N = attn.window_area
        table = attn.relative_position_bias_table[attn.relative_position_index.view(-1)]  # (N * N, H)
        return table.view(N, N, -1).permute(2, 0, 1)

    def attention_mask(self, i: int) -> torch.Tensor | None:
        """Block i's shift mask (nW, N, N) (0 within a region, -100 across), None for an unshifted block."""
        blk = self._blocks[i]
        return blk.attn_mask if any(blk.shift_size) else None

    def init_buffers(self) -> None:
        """Recompute every block's relative-position index and shift mask (timm's non-persistent buffers)."""
        for blk in self._blocks:
            blk.attn.init_non_persistent_buffers()
            blk.init_non_persistent_buffers()

    def freeze(self) -> None:
        """Freeze everything: the Swin backbone (final norm included) and the audio patch embedding."""
        for p in self.module.parameters():
            p.requires_grad_(False)
        if self.audio_embed is not None:
            for p in self.audio_embed.parameters():
                p.requires_grad_(False)

    def embed_video(self, video: torch.Tensor, temporal_embed: torch.Tensor | None = None) -> torch.Tensor:
        """(B, M, 3, H, W) -> (B, M, N, C_0): the frozen 4 x 4 patch embedding (and patch norm) per frame."""
        B, M = video.shape[:2]
        x = self.module.patch_embed(video.reshape(B * M, *video.shape[2:]))  # (B * M, H_0, W_0, C_0)
        return x.reshape(B, M, -1, x.shape[-1])

    def embed_audio(self, audio: torch.Tensor, temporal_embed: torch.Tensor | None = None,
                    reduction: str = "mean") -> torch.Tensor:  # fmt: skip
        """(B, K, T, F) -> (B, K, N, C_0): each segment as a 1-channel image (rows = time) through the frozen audio
        patch embedding (its reduction was fixed when it was built)."""
        B, K, T, F_ = audio.shape
        x = self.audio_embed(audio.reshape(B * K, 1, T, F_))
        return x.reshape(B, K, -1, x.shape[-1])

    def downsample(self, stage: Stage, x: torch.Tensor) -> torch.Tensor:
        """timm's frozen PatchMerging before ``stage``: (B, M, H * W, C) -> (B, M, H/2 * W/2, 2C)."""
        B, M, _, C = x.shape
        H, W = self.stages[stage.index - 1].grid
        y = self.module.layers[stage.index].downsample(x.reshape(B * M, H, W, C))
        return y.reshape(B, M, -1, y.shape[-1])

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over the tokens of every frame: (B, M, N, C) -> (B, M, C)."""
        return x.mean(dim=2)

    def stage_map(self, stage: Stage, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, M, N, C) -> (B, M, C, H, W) (a view of contiguous tokens)."""
        H, W = stage.grid if grid is None else grid
        B, M, _, C = x.shape
        return x.transpose(-1, -2).reshape(B, M, C, H, W)


def audio_patch_conv(embed: AudioPatchEmbed, x: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, F) -> (B, T / p, F / p, C) written out: conv, channels last, patch norm (the reference's form)."""
    return embed.norm(F.conv2d(x, embed.proj.weight, embed.proj.bias, stride=embed.proj.stride).permute(0, 2, 3, 1))
