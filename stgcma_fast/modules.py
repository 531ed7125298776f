"""Trainable STG-CMA parameters: adapters, gates and the AVE head.

The adapter modules only hold parameters (with timm-style names); the reference model and the fast model each
compute with them in their own forward code, so one state dict loads into either.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import STGCMAConfig


class TAdapter(nn.Module):
    """Bottleneck adapter ``Ad(z) = GELU(z W_d + b_d) W_u + b_u`` (no inner skip); ``up`` starts at zero."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.down.reset_parameters()
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)


class AVAdapter(nn.Module):
    """AV-Adapter parameters: an independent bottleneck per modality (``video``, ``audio``; None when absent).

    The parameter-free cross-attention between the two bottlenecks and its gates (held by the block, see
    :class:`BlockAdapters`) are applied by the model's forward code.
    """

    def __init__(self, dim: int, bottleneck: int, video: bool = True, audio: bool = True) -> None:
        super().__init__()
        self.video = TAdapter(dim, bottleneck) if video else None
        self.audio = TAdapter(dim, bottleneck) if audio else None


class BlockAdapters(nn.Module):
    """Everything STG-CMA adds to one frozen block.

    Attributes (None where the stage, modality or direction is disabled):
        temporal_v, temporal_a: T-Adapters of the temporal stage (None also where the block has no temporal pass:
            Swin's shifted blocks).
        temporal_bias_v, temporal_bias_a: Swin's trainable temporal relative-position bias tables (2M - 1, heads)
            per modality, trunc-normal std 0.02 (``bias_heads`` given); entry i - j + M - 1 is added to the score of
            frame i vs frame j.
        spatial, global_: AV-Adapters of the spatial (after MHSA) and global (after FFN) stages.
        spatial_alpha, spatial_beta, global_alpha, global_beta: gates (0-dim, zero-init), or with shared gates one
            ``alpha``, ``beta`` pair used by both AV-Adapters. alpha gates audio -> video, beta video -> audio.
    """

    def __init__(self, config: STGCMAConfig, dim: int, bottleneck: int, temporal: bool = True,
                 bias_heads: int | None = None) -> None:  # fmt: skip
        """``temporal``: whether the block runs the temporal pass; ``bias_heads``: the heads of a temporal bias table
        (None: no table, ViT)."""
        super().__init__()
        v, a = config.has_video, config.has_audio
        temporal = temporal and "temporal" in config.stages
        self.temporal_v = TAdapter(dim, bottleneck) if temporal and v else None
        self.temporal_a = TAdapter(dim, bottleneck) if temporal and a else None
        if temporal and bias_heads is not None:
            rows = 2 * config.num_frames - 1
            for name, present in (("temporal_bias_v", v), ("temporal_bias_a", a)):
                if present:
                    table = nn.Parameter(torch.empty(rows, bias_heads))
                    nn.init.trunc_normal_(table, std=0.02)
                    setattr(self, name, table)
        self.spatial = AVAdapter(dim, bottleneck, v, a) if "spatial" in config.stages else None
        self.global_ = AVAdapter(dim, bottleneck, v, a) if "global" in config.stages else None
        self.shared_gates = config.shared_gates
        gated = [s for s in ("spatial", "global") if s in config.stages]
        prefixes = [""] if config.shared_gates and gated else [f"{s}_" for s in gated]
        for prefix in prefixes:
            if config.a2v:
                setattr(self, f"{prefix}alpha", nn.Parameter(torch.zeros(())))
            if config.v2a:
                setattr(self, f"{prefix}beta", nn.Parameter(torch.zeros(())))

    def temporal_bias(self, modality: str) -> torch.Tensor | None:
        """The ``"v"`` or ``"a"`` temporal bias table (2M - 1, heads), or None."""
        return getattr(self, f"temporal_bias_{modality}", None)

    def gates(self, stage: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(alpha, beta) of the ``"spatial"`` or ``"global"`` AV-Adapter; None for a direction fixed at zero."""
        prefix = "" if self.shared_gates else f"{stage}_"
        return getattr(self, f"{prefix}alpha", None), getattr(self, f"{prefix}beta", None)


class AVEHead(nn.Module):
    """AVE event-localisation head: ``concat(pooled_a, pooled_v)`` per second -> Linear(2C, 512) -> Dropout ->
    Linear(512, num_classes).

    Reads the pooled features (``STGCMAOutput.video_pooled`` / ``audio_pooled``: the class token of a ViT), of width
    C = ``model.num_features``. With a single branch the input is that branch's feature alone (``in_features = C``).
    Input (B, M, C) per modality; output (B, M, num_classes) logits.
    """

    def __init__(self, embed_dim: int, num_classes: int = 29, hidden: int = 512, dropout: float = 0.5,
                 branches: str = "audio-visual") -> None:
        """``embed_dim``: C, the pooled width (``model.num_features``)."""
        super().__init__()
        self.branches = branches
        in_features = 2 * embed_dim if branches == "audio-visual" else embed_dim
        self.fc1 = nn.Linear(in_features, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, video_pooled: torch.Tensor | None, audio_pooled: torch.Tensor | None) -> torch.Tensor:
        feats = [t for t in (audio_pooled, video_pooled) if t is not None]
        x = torch.cat(feats, dim=-1)
        if x.shape[-1] != self.fc1.in_features:
            raise ValueError(f"AVEHead expected {self.fc1.in_features} input features ({self.branches}), "
                             f"got {x.shape[-1]}")
        return self.fc2(self.drop(self.fc1(x)))
