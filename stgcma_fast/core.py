"""What the reference and the fast model share: construction, parameter names, input checks, the output type.

No forward computation lives here: :class:`stgcma_fast.reference.ReferenceSTGCMA` and
:class:`stgcma_fast.model.FastSTGCMA` each implement their own (``collect_output`` only assembles the output from
their final tokens: pooling, stage maps as views, the head).

Non-finite values: both models propagate NaN and Inf like every torch module: inputs are checked for shape, dtype
and device, never for finiteness, and nothing is masked. A NaN or Inf anywhere in one clip's video or audio reaches
that clip's outputs (attention mixes it into every token of the frame, temporal attention into every frame, the
AV-Adapters into the other modality); clips never mix, so the other clips of the batch stay finite. Catching a
non-finite loss is the training loop's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .backbones import Backbone, build_backbone, create_backbone
from .config import STGCMAConfig
from .modules import BlockAdapters


@dataclass
class STGCMAOutput:
    """Per-frame features (None for a disabled branch).

    video_cls (B, M, D), audio_cls (B, K, D): class tokens after the final norm (ViT; None for a Swin, which has
        no class token).
    video_tokens (B, M, N_v, D), audio_tokens (B, K, N_a, D): all tokens after the final norm (ViT: class token
        first; Swin: the last stage's tokens, row-major on its grid).
    logits: the attached head's output, if the model has a head (it reads the pooled features).
    video_pooled (B, M, C), audio_pooled (B, K, C): the pooled feature per frame / segment, C =
        ``model.num_features`` (ViT: the class token, the same tensors as video_cls / audio_cls; Swin: the token
        mean of the last stage).
    video_stages, audio_stages: one map per backbone stage, (B, M, C_s, H_s, W_s), the last after the final norm
        (ViT: one entry, the patch tokens without the class token on the patch grid; Swin: four, each taken before
        the next stage's patch merging; views of the tokens).
    """

    video_cls: torch.Tensor | None
    audio_cls: torch.Tensor | None
    video_tokens: torch.Tensor | None
    audio_tokens: torch.Tensor | None
    logits: torch.Tensor | None = None
    video_pooled: torch.Tensor | None = None
    audio_pooled: torch.Tensor | None = None
    video_stages: list[torch.Tensor] | None = None
    audio_stages: list[torch.Tensor] | None = None


@dataclass
class ParamReport:
    """Parameter counts: ``trainable``, ``frozen``, ``total`` and counts per group (``groups``, trainable only)."""

    trainable: int
    frozen: int
    groups: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    def __str__(self) -> str:
        rows = [f"{'group':<22}{'params':>14}"]
        rows += [f"{name:<22}{n:>14,}" for name, n in self.groups.items()]
        rows += [f"{'trainable':<22}{self.trainable:>14,}  ({self.trainable / 1e6:.2f}M)",
                 f"{'frozen':<22}{self.frozen:>14,}  ({self.frozen / 1e6:.2f}M)",
                 f"{'total':<22}{self.total:>14,}  ({self.total / 1e6:.2f}M)"]
        return "\n".join(rows)


def _param_group(name: str) -> str:
    if name.startswith("backbone.norm."):
        return "final_norm"
    if name.startswith("temporal_embed"):
        return "temporal_embeddings"
    if name.startswith("audio_patch_embed."):
        return "audio_patch_embed"
    if name.startswith("head."):
        return "head"
    if name.startswith("adapters."):
        leaf = name.split(".")[2]
        if leaf.endswith(("alpha", "beta")):
            return "gates"
        if leaf.startswith("temporal_bias"):
            return "temporal_bias"
        return {"temporal_v": "temporal_adapters", "temporal_a": "temporal_adapters", "spatial": "spatial_adapters",
                "global_": "global_adapters"}[leaf]
    return "other"


class STGCMABase(nn.Module):
    """Builds the frozen backbone, the adapters, gates and temporal embeddings of STG-CMA.

    ``self.backbone`` is the frozen timm module (parameter names ``backbone.*``); ``self.arch`` is its side of the
    backbone seam (:class:`stgcma_fast.backbones.base.Backbone`): stages, block parts, embeddings, pooling.

    Args:
        config: the model configuration.
        pretrained: load backbone weights through timm (hub cache or download).
        checkpoint_path: load backbone weights from a local file instead: a timm state dict, an OpenAI CLIP one
            (ViT) or Microsoft's original Swin one.
        head: optional task head called as ``head(video_pooled, audio_pooled)`` (the pooled features, width
            ``num_features``); its output is ``STGCMAOutput.logits``.
    """

    def __init__(self, config: STGCMAConfig, pretrained: bool = False, checkpoint_path: str | Path | None = None,
                 head: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = create_backbone(config, pretrained=pretrained, checkpoint_path=checkpoint_path)
        self.arch: Backbone = build_backbone(self.backbone, config)
        if self.arch.audio_embed is not None:  # Swin: the audio branch's own frozen patch embedding
            self.audio_patch_embed = self.arch.audio_embed
        self.arch.freeze()
        first = self.arch.stages[0]
        D = self.arch.embed_dim
        self.embed_dim = D  # the width of the embeddings (ViT: every block's)
        self.num_features = self.arch.num_features  # the width of the pooled features (what a head reads)
        self.depth = self.arch.depth
        self.num_heads = first.heads
        self.bottleneck = first.bottleneck
        self.img_size = self.arch.img_size
        self.audio_grid = self.arch.audio_grid
        M = config.num_frames
        temporal = self.arch.has_temporal_embedding
        self.temporal_embed_v = nn.Parameter(torch.zeros(M, D)) if config.has_video and temporal else None
        self.temporal_embed_a = nn.Parameter(torch.zeros(M, D)) if config.has_audio and temporal else None
        bias_heads = lambda stage: stage.heads if self.arch.temporal_bias else None  # noqa: E731
        self.adapters = nn.ModuleList(BlockAdapters(config, stage.width, stage.bottleneck,
                                                    temporal=self.arch.block_parts(i).temporal,
                                                    bias_heads=bias_heads(stage))
                                      for stage in self.arch.stages for i in stage.blocks)  # fmt: skip
        self.drop_path_rates = self.arch.drop_path_rates(config.drop_path_rate)
        self.head = head

    def to_empty(self, *, device: torch.device | str | None, recurse: bool = True) -> STGCMABase:
        """``nn.Module.to_empty``, then the backbone's non-persistent buffers (Swin's relative-position indices and
        shift masks) are recomputed: they are not in any state dict, so nothing else would restore them."""
        super().to_empty(device=device, recurse=recurse)
        self.arch.init_buffers()
        return self

    @property
    def num_video_tokens(self) -> int:
        """First-stage tokens per video frame (ViT: the class token and the patches)."""
        return self.arch.num_video_tokens

    @property
    def num_audio_tokens(self) -> int:
        """First-stage tokens per audio segment."""
        return self.arch.num_audio_tokens

    def collect_output(self, x_v: torch.Tensor | None, x_a: torch.Tensor | None,
                       stages_v: list[torch.Tensor], stages_a: list[torch.Tensor]) -> STGCMAOutput:
        """The output from the final-normed tokens x_v (B, M, N_v, C), x_a (B, K, N_a, C) (None for a disabled
        branch) and each stage's last tokens (the last stage's after the final norm); runs the head."""
        arch = self.arch
        pooled_v = arch.pool(x_v) if x_v is not None else None
        pooled_a = arch.pool(x_a) if x_a is not None else None
        maps_v = [arch.stage_map(s, t) for s, t in zip(arch.stages, stages_v)] if x_v is not None else None
        maps_a = [arch.stage_map(s, t, s.audio_grid) for s, t in zip(arch.stages, stages_a)] if x_a is not None \
            else None  # fmt: skip
        cls_v, cls_a = (pooled_v, pooled_a) if arch.family == "vit" else (None, None)
        logits = self.head(pooled_v, pooled_a) if self.head is not None else None
        return STGCMAOutput(video_cls=cls_v, audio_cls=cls_a, video_tokens=x_v, audio_tokens=x_a, logits=logits,
                            video_pooled=pooled_v, audio_pooled=pooled_a, video_stages=maps_v, audio_stages=maps_a)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimizer should see (adapters, gates, temporal embeddings, final norm, head)."""
        return [p for p in self.parameters() if p.requires_grad]

    def param_report(self) -> ParamReport:
        """Trainable and frozen parameter counts, trainable ones by group."""
        groups: dict[str, int] = {}
        trainable = frozen = 0
        for name, p in self.named_parameters():
            if p.requires_grad:
                trainable += p.numel()
                g = _param_group(name)
                groups[g] = groups.get(g, 0) + p.numel()
            else:
                frozen += p.numel()
        return ParamReport(trainable=trainable, frozen=frozen, groups=groups)

    def check_inputs(self, video: torch.Tensor | None, audio: torch.Tensor | None) -> int:
        """Validate ``video`` (B, M, 3, H, W) and ``audio`` (B, K, T, F) against the config; returns B."""
        cfg = self.config
        M = cfg.num_frames
        H, W = self.img_size
        T, F_ = cfg.audio_size
        _check_present("video", video, cfg.has_video, cfg.branches)
        _check_present("audio", audio, cfg.has_audio, cfg.branches)
        if video is not None:
            _check_tensor("video", video, "(B, M, 3, H, W)", (None, M, 3, H, W), f"M = {M}, H x W = {H} x {W}")
        if audio is not None:
            _check_tensor("audio", audio, "(B, K, T, F)", (None, M, T, F_), f"K = M = {M}, (T, F) = {(T, F_)}")
        if video is not None and audio is not None:
            if video.shape[0] != audio.shape[0]:
                raise ValueError(f"expected video and audio with the same batch size, got {video.shape[0]} and "
                                 f"{audio.shape[0]}")
            if video.device != audio.device:
                raise ValueError(f"expected video and audio on the same device, got {video.device} and "
                                 f"{audio.device}")
        x = video if video is not None else audio
        p = self.arch.patch_weight
        if x.device != p.device:
            raise ValueError(f"expected inputs on the model's device {p.device}, got {x.device}")
        if x.dtype != p.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"expected inputs of the model's dtype {p.dtype} (or run under torch.autocast), "
                             f"got {x.dtype}")
        return x.shape[0]


def _check_present(name: str, x: torch.Tensor | None, wanted: bool, branches: str) -> None:
    if wanted and x is None:
        raise ValueError(f"expected the {name} tensor: the model has branches={branches!r}")
    if not wanted and x is not None:
        raise ValueError(f"expected {name}=None: the model has branches={branches!r} and would ignore it")


def _check_tensor(name: str, x: torch.Tensor, layout: str, expected: tuple, detail: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected {name} to be a torch.Tensor {layout}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"expected {name} to be a floating-point tensor, got dtype {x.dtype}")
    shown = tuple("B" if e is None else e for e in expected)
    if x.dim() != len(expected) or any(e is not None and s != e for s, e in zip(x.shape, expected)):
        raise ValueError(f"expected {name} of shape {layout} = {shown} ({detail}), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch of {name}, got shape {tuple(x.shape)}")
