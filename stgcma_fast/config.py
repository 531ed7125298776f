"""`STGCMAConfig`: everything that defines an STG-CMA model, and the paper's presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STAGES = ("temporal", "spatial", "global")
FUSIONS = ("bidirectional", "a2v", "v2a", "none")
BRANCHES = ("audio-visual", "video", "audio")
AUDIO_PATCH_REDUCTIONS = ("mean", "sum")

# Bottleneck ratio r / D per adapter preset, keyed by the backbone's embedding width. The paper's Table 1 says 1/16
# for CLIP ViT-B/16 Base, but its reported trainable count (11.5M) only fits 1/8, so the presets follow the counts.
# A ViT of another width takes the ViT-B/16 ratios.
ADAPTER_RATIOS: dict[int, dict[str, float]] = {
    768: {"tiny": 1 / 32, "base": 1 / 8},  # CLIP ViT-B/16: r = 24 / 96
    1024: {"tiny": 1 / 32, "base": 1 / 16},  # CLIP ViT-L/14: r = 32 / 64
}
DEFAULT_ADAPTER_RATIOS = ADAPTER_RATIOS[768]

# Named configurations of the paper (ViT family). Values are STGCMAConfig keyword arguments.
PRESETS: dict[str, dict[str, Any]] = {
    "clip-b16-tiny": {"backbone": "vit_base_patch16_clip_quickgelu_224.openai", "adapter": "tiny"},
    "clip-b16-base": {"backbone": "vit_base_patch16_clip_quickgelu_224.openai", "adapter": "base"},
    "clip-l14-tiny": {"backbone": "vit_large_patch14_clip_quickgelu_224.openai", "adapter": "tiny"},
    "clip-l14-base": {"backbone": "vit_large_patch14_clip_quickgelu_224.openai", "adapter": "base"},
}


@dataclass
class STGCMAConfig:
    """Configuration of an STG-CMA model on a timm VisionTransformer backbone.

    Attributes:
        backbone: timm model name, with or without a pretrained tag
            (e.g. ``vit_base_patch16_clip_quickgelu_224.openai``).
        backbone_kwargs: extra timm ``create_model`` kwargs (``depth``, ``img_size``, ``embed_dim`` ...).
        adapter: ``"tiny"`` or ``"base"`` (the paper's presets for this backbone), a ratio r / D in (0, 1], or an
            explicit bottleneck width r (int >= 1).
        num_frames: M video frames per clip, equal to K audio segments.
        audio_size: (T, F) of each audio segment's spectrogram: time frames, mel bins.
        stages: enabled adaptation stages, a subset of ("temporal", "spatial", "global"). A disabled stage falls back
            to the plain frozen computation and has no adapters.
        fusion: "bidirectional", "a2v" (audio -> video only, beta fixed 0), "v2a" (video -> audio only, alpha fixed
            0) or "none" (both branches adapted, no interaction).
        branches: "audio-visual", "video" (video branch only) or "audio" (audio branch only).
        shared_gates: one (alpha, beta) pair per block shared by the spatial and global AV-Adapters (the authors'
            code) instead of one pair per adapter (the paper, default).
        audio_patch_reduction: how the frozen RGB patch embedding becomes a 1-channel one: "mean" (paper) or "sum"
            (authors' code, i.e. 3x the mean).
        drop_path_rate: drop-path rate of the temporal branch at the last block (linear from 0 over depth).
    """

    backbone: str = "vit_base_patch16_clip_quickgelu_224.openai"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    adapter: str | float | int = "base"
    num_frames: int = 10
    audio_size: tuple[int, int] = (102, 128)
    stages: tuple[str, ...] = STAGES
    fusion: str = "bidirectional"
    branches: str = "audio-visual"
    shared_gates: bool = False
    audio_patch_reduction: str = "mean"
    drop_path_rate: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"expected backbone to be a non-empty timm model name (str), got {_got(self.backbone)}")
        if not isinstance(self.backbone_kwargs, Mapping) or not all(isinstance(k, str) for k in self.backbone_kwargs):
            raise ValueError(f"expected backbone_kwargs to be a dict of str keys, got {_got(self.backbone_kwargs)}")
        self.backbone_kwargs = dict(self.backbone_kwargs)
        if not isinstance(self.stages, (tuple, list)) or not all(isinstance(s, str) for s in self.stages):
            raise ValueError(f"expected stages to be a tuple of names from {STAGES}, got {_got(self.stages)}")
        self.stages = tuple(self.stages)
        _check_choice("fusion", self.fusion, FUSIONS)
        _check_choice("branches", self.branches, BRANCHES)
        _check_choice("audio_patch_reduction", self.audio_patch_reduction, AUDIO_PATCH_REDUCTIONS)
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or len(set(self.stages)) != len(self.stages):
            raise ValueError(f"expected stages to be distinct names from {STAGES}, got {self.stages}")
        self.stages = tuple(s for s in STAGES if s in self.stages)  # canonical order
        if isinstance(self.adapter, bool) or not isinstance(self.adapter, (str, int, float)):
            raise ValueError(f"expected adapter to be 'tiny', 'base', a ratio in (0, 1] or a width >= 1, "
                             f"got {_got(self.adapter)}")
        if isinstance(self.adapter, str):
            _check_choice("adapter", self.adapter, ("tiny", "base"))
        elif isinstance(self.adapter, int) and self.adapter < 1:
            raise ValueError(f"expected an adapter width >= 1, got {self.adapter}")
        elif isinstance(self.adapter, float) and not 0.0 < self.adapter <= 1.0:
            raise ValueError(f"expected an adapter ratio in (0, 1], got {self.adapter}")
        if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"expected num_frames to be an int >= 1, got {_got(self.num_frames)}")
        if (not isinstance(self.audio_size, (tuple, list)) or len(self.audio_size) != 2
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.audio_size)):
            raise ValueError(f"expected audio_size = (T, F) positive ints, got {_got(self.audio_size)}")
        self.audio_size = tuple(self.audio_size)
        if not isinstance(self.shared_gates, bool):
            raise ValueError(f"expected shared_gates to be a bool, got {_got(self.shared_gates)}")
        rate = self.drop_path_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise ValueError(f"expected drop_path_rate to be a number in [0, 1), got {_got(rate)}")
        self.drop_path_rate = float(rate)

    @property
    def has_video(self) -> bool:
        return self.branches in ("audio-visual", "video")

    @property
    def has_audio(self) -> bool:
        return self.branches in ("audio-visual", "audio")

    @property
    def a2v(self) -> bool:
        """Whether the video branch reads audio in the AV-Adapters (alpha is a parameter)."""
        return self.branches == "audio-visual" and self.fusion in ("bidirectional", "a2v")

    @property
    def v2a(self) -> bool:
        """Whether the audio branch reads video in the AV-Adapters (beta is a parameter)."""
        return self.branches == "audio-visual" and self.fusion in ("bidirectional", "v2a")

    def bottleneck_width(self, embed_dim: int) -> int:
        """The adapter bottleneck r for a backbone of width ``embed_dim``."""
        if isinstance(self.adapter, str):
            ratio = ADAPTER_RATIOS.get(embed_dim, DEFAULT_ADAPTER_RATIOS)[self.adapter]
        elif isinstance(self.adapter, float):
            ratio = self.adapter
        else:
            return int(self.adapter)
        return max(1, round(ratio * embed_dim))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> STGCMAConfig:
        """One of the paper's configurations (``PRESETS``), with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"], d["audio_size"] = list(self.stages), list(self.audio_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> STGCMAConfig:
        if not isinstance(d, Mapping):
            raise ValueError(f"expected a dict of STGCMAConfig fields, got {_got(d)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown STGCMAConfig fields {unknown}; expected a subset of {sorted(names)}")
        return cls(**d)


def _got(value: Any) -> str:
    """``'0.1' (str)``: a received value and its type, for error messages."""
    return f"{value!r} ({type(value).__name__})"


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        shown = repr(value) if isinstance(value, str) else _got(value)
        raise ValueError(f"expected {name} to be one of {choices}, got {shown}")
