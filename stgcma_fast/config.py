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

# Per-stage bottleneck ratios r_s / C_s of the Swin presets (the authors' Swin code; r_s = int(C_s * ratio)), keyed
# by the backbone's first-stage width. A Swin of another width takes the Swin-B ratios.
SWIN_ADAPTER_RATIOS: dict[int, dict[str, tuple[float, ...]]] = {
    128: {"tiny": (1 / 8, 1 / 8, 1 / 16, 1 / 16), "base": (1 / 4, 1 / 4, 1 / 8, 1 / 8)},  # Swin-B
    192: {"tiny": (1 / 8, 1 / 8, 1 / 16, 1 / 16), "base": (1 / 2, 1 / 4, 1 / 8, 1 / 16)},  # Swin-L
}
DEFAULT_SWIN_ADAPTER_RATIOS = SWIN_ADAPTER_RATIOS[128]
SWIN_AUDIO_SIZE = 224  # Swin: each audio segment is a 224 x 224 spectrogram image (the video frame's size)
VIT_AUDIO_SIZE = (102, 128)  # ViT / CLIP: 102 frames of 128 mel bins

# Named configurations of the paper (ViT family). Values are STGCMAConfig keyword arguments.
PRESETS: dict[str, dict[str, Any]] = {
    "clip-b16-tiny": {"backbone": "vit_base_patch16_clip_quickgelu_224.openai", "adapter": "tiny"},
    "clip-b16-base": {"backbone": "vit_base_patch16_clip_quickgelu_224.openai", "adapter": "base"},
    "clip-l14-tiny": {"backbone": "vit_large_patch14_clip_quickgelu_224.openai", "adapter": "tiny"},
    "clip-l14-base": {"backbone": "vit_large_patch14_clip_quickgelu_224.openai", "adapter": "base"},
    "swin-b-tiny": {"backbone": "swin_base_patch4_window7_224.ms_in22k", "adapter": "tiny"},
    "swin-b-base": {"backbone": "swin_base_patch4_window7_224.ms_in22k", "adapter": "base"},
    "swin-l-tiny": {"backbone": "swin_large_patch4_window7_224.ms_in22k", "adapter": "tiny"},
    "swin-l-base": {"backbone": "swin_large_patch4_window7_224.ms_in22k", "adapter": "base"},
}


def backbone_family(name: str) -> str:
    """``"swin"`` for a timm Swin Transformer name (``swin_*``, any pretrained tag), else ``"vit"``."""
    return "swin" if name.split(".")[0].startswith("swin") else "vit"


@dataclass
class STGCMAConfig:
    """Configuration of an STG-CMA model on a timm VisionTransformer or SwinTransformer backbone.

    Attributes:
        backbone: timm model name, with or without a pretrained tag
            (e.g. ``vit_base_patch16_clip_quickgelu_224.openai``).
        backbone_kwargs: extra timm ``create_model`` kwargs (``depth``, ``img_size``, ``embed_dim`` ...).
        adapter: ``"tiny"`` or ``"base"`` (the paper's presets for this backbone), a ratio r / D in (0, 1], an
            explicit bottleneck width r (int >= 1), or a per-stage list of ratios / widths (one entry per backbone
            stage: 4 for a Swin, 1 for a ViT). Swin stages take r_s = int(C_s * ratio).
        num_frames: M video frames per clip, equal to K audio segments.
        audio_size: (T, F) of each audio segment's spectrogram: time frames, mel bins. Default: (102, 128) for a
            ViT; for a Swin the video frame's size (224 x 224), the only size it accepts (the audio grid must equal
            the video grid at every stage).
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
    adapter: str | float | int | tuple[float | int, ...] = "base"
    num_frames: int = 10
    audio_size: tuple[int, int] | None = None
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
        if isinstance(self.adapter, (tuple, list)):
            if not self.adapter:
                raise ValueError("expected a per-stage adapter list with at least one entry, got []")
            for a in self.adapter:
                _check_adapter(a, "adapter entry")
            self.adapter = tuple(self.adapter)
            if self.family == "vit" and len(self.adapter) != 1:
                raise ValueError(f"expected adapter to give one bottleneck per backbone stage (a ViT has 1), got "
                                 f"{len(self.adapter)} entries {list(self.adapter)} for backbone {self.backbone!r}")
        else:
            _check_adapter(self.adapter, "adapter")
        if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"expected num_frames to be an int >= 1, got {_got(self.num_frames)}")
        if self.audio_size is None:
            self.audio_size = self._default_audio_size()
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

    def _default_audio_size(self) -> tuple[int, int]:
        if self.family != "swin":
            return VIT_AUDIO_SIZE
        tail = self.backbone.split(".")[0].rsplit("_", 1)[-1]  # swin_base_patch4_window12_384 -> 384
        size = self.backbone_kwargs.get("img_size", int(tail) if tail.isdigit() else SWIN_AUDIO_SIZE)
        if isinstance(size, (tuple, list)) and len(size) == 2:
            return tuple(size)
        return (size, size) if isinstance(size, int) and not isinstance(size, bool) else (SWIN_AUDIO_SIZE,) * 2

    @property
    def family(self) -> str:
        """The backbone family the ``backbone`` name belongs to: ``"vit"`` or ``"swin"``."""
        return backbone_family(self.backbone)

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
        """The adapter bottleneck r for a ViT of width ``embed_dim`` (a per-stage list must have one entry)."""
        adapter = self.adapter
        if isinstance(adapter, tuple):
            if len(adapter) != 1:
                raise ValueError(f"expected adapter to give one bottleneck per backbone stage (1 for a ViT), got "
                                 f"{len(adapter)} entries {list(adapter)}")
            adapter = adapter[0]
        if isinstance(adapter, str):
            ratio = ADAPTER_RATIOS.get(embed_dim, DEFAULT_ADAPTER_RATIOS)[adapter]
        elif isinstance(adapter, float):
            ratio = adapter
        else:
            return int(adapter)
        return max(1, round(ratio * embed_dim))

    def stage_bottlenecks(self, widths: tuple[int, ...]) -> tuple[int, ...]:
        """Swin: the bottleneck r_s = int(C_s * ratio_s) of each stage of widths C_s (an int entry is r_s itself)."""
        n = len(widths)
        adapter = self.adapter
        if isinstance(adapter, str):
            adapter = SWIN_ADAPTER_RATIOS.get(widths[0], DEFAULT_SWIN_ADAPTER_RATIOS)[adapter][:n]
            if len(adapter) < n:  # a Swin with more than four stages repeats the last ratio
                adapter = adapter + adapter[-1:] * (n - len(adapter))
        elif not isinstance(adapter, tuple):
            adapter = (adapter,) * n
        if len(adapter) != n:
            raise ValueError(f"expected adapter to give one bottleneck per backbone stage ({n} stages), got "
                             f"{len(adapter)} entries {list(adapter)}")
        return tuple(int(a) if isinstance(a, int) else max(1, int(w * a)) for a, w in zip(adapter, widths))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> STGCMAConfig:
        """One of the paper's configurations (``PRESETS``), with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"], d["audio_size"] = list(self.stages), list(self.audio_size)
        if isinstance(self.adapter, tuple):
            d["adapter"] = list(self.adapter)
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


def _check_adapter(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected {name} to be 'tiny', 'base', a ratio in (0, 1] or a width >= 1, got {_got(value)}")
    if isinstance(value, str):
        if name != "adapter":
            raise ValueError(f"expected {name} to be a ratio in (0, 1] or a width >= 1, got {value!r}")
        _check_choice("adapter", value, ("tiny", "base"))
    elif isinstance(value, int) and value < 1:
        raise ValueError(f"expected an {name} width >= 1, got {value}")
    elif isinstance(value, float) and not 0.0 < value <= 1.0:
        raise ValueError(f"expected an {name} ratio in (0, 1], got {value}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        shown = repr(value) if isinstance(value, str) else _got(value)
        raise ValueError(f"expected {name} to be one of {choices}, got {shown}")
