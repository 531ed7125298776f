"""The AVE task (audio-visual event localisation): per-second 29-way classification on STG-CMA features.

Per batch (:meth:`AveTask.step`): the authors' audio-only mixup on the waveforms (training), the audio front end on
the batch's device, SpecAugment (training), the model on the enabled branches, :class:`~stgcma_fast.modules.AVEHead`
on the per-second class tokens (audio first), and cross-entropy over the B x M seconds with label smoothing. The
loader (:meth:`AveTask.build_loader`) yields waveforms, not spectrograms, so the mixup can act on the waveform as the
authors' loader does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from stgcma_fast.core import STGCMABase
from stgcma_fast.data.augment import spec_augment
from stgcma_fast.data.ave import NUM_CLASSES
from stgcma_fast.data.frontend import AVE_FBANK_MEAN, AVE_FBANK_STD, AudioFrontEnd, AudioFrontEndSettings
from stgcma_fast.modules import AVEHead
from stgcma_fast.tasks.ave.metrics import AveMetrics
from stgcma_fast.tasks.ave.mixup import audio_mixup
from stgcma_fast.tasks.base import Loader, StepResult, Task, register_task

AUDIO_SOURCES: tuple[str, ...] = ("auto", "wav", "video")
ON_ERROR: tuple[str, ...] = ("skip", "raise")


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_float(name: str, value: Any, low: float, high: float, high_open: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        interval = f"[{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"expected {name} to be a float in {interval}, got {_describe(value)}")


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"expected {name} to be an int >= {low}, got {_describe(value)}")


@dataclasses.dataclass
class AveOptions:
    """Options of the AVE task (the ``task`` section of a run config).

    Attributes:
        label_smoothing: of the cross-entropy (0.1: the paper; the authors' code parses it but never applies it).
        mixup_prob: probability that a training clip's AUDIO waveform is mixed with another clip's of its batch
            (the authors' "mixup 0.5"); 0 turns the mixup off. mixup_alpha: lambda ~ Beta(alpha, alpha), drawn per
            second; labels and frames are unchanged.
        spec_augment: one frequency mask (width < ``freq_mask`` bins) and one time mask (width < ``time_mask``
            frames, over the whole clip's K x T frames) per training clip.
        head_hidden, head_dropout: the AVE head's hidden width and dropout.
        num_classes: head outputs: AVE's 28 events + background (class 28) = 29.
        audio_source: ``"auto"`` (the prepared ``audio_wav/`` file when there is one, else the video's track),
            ``"wav"`` or ``"video"``.
        audio_mean, audio_std: log-mel normalisation statistics (``stgcma-fast prepare`` computes a dataset's).
        crop_scale: area range of the training random resized crop (torchvision's default (0.08, 1)).
        on_error: bad media are ``"skip"``-ped (reported) or ``"raise"``.
    """

    label_smoothing: float = 0.1
    mixup_prob: float = 0.5
    mixup_alpha: float = 10.0
    spec_augment: bool = True
    freq_mask: int = 48
    time_mask: int = 192
    head_hidden: int = 512
    head_dropout: float = 0.5
    num_classes: int = NUM_CLASSES
    audio_source: str = "auto"
    audio_mean: float = AVE_FBANK_MEAN
    audio_std: float = AVE_FBANK_STD
    crop_scale: tuple[float, float] = (0.08, 1.0)
    on_error: str = "skip"

    def __post_init__(self) -> None:
        _check_float("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        _check_float("mixup_prob", self.mixup_prob, 0.0, 1.0, high_open=False)
        if not isinstance(self.mixup_alpha, (int, float)) or isinstance(self.mixup_alpha, bool) \
                or not self.mixup_alpha > 0:
            raise ValueError(f"expected mixup_alpha to be a float > 0, got {_describe(self.mixup_alpha)}")
        if not isinstance(self.spec_augment, bool):
            raise ValueError(f"expected spec_augment to be a bool, got {_describe(self.spec_augment)}")
        _check_int("freq_mask", self.freq_mask, 0)
        _check_int("time_mask", self.time_mask, 0)
        _check_int("head_hidden", self.head_hidden, 1)
        _check_float("head_dropout", self.head_dropout, 0.0, 1.0, high_open=True)
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) \
                or self.num_classes < NUM_CLASSES:
            raise ValueError(f"expected num_classes to be an int >= {NUM_CLASSES} (AVE's 28 events + background, "
                             f"class {NUM_CLASSES - 1}), got {_describe(self.num_classes)}")
        if self.audio_source not in AUDIO_SOURCES:
            raise ValueError(f"expected audio_source to be one of {AUDIO_SOURCES}, got {_describe(self.audio_source)}")
        if not isinstance(self.audio_mean, (int, float)) or isinstance(self.audio_mean, bool):
            raise ValueError(f"expected audio_mean to be a float, got {_describe(self.audio_mean)}")
        if not isinstance(self.audio_std, (int, float)) or isinstance(self.audio_std, bool) or not self.audio_std > 0:
            raise ValueError(f"expected audio_std to be a float > 0, got {_describe(self.audio_std)}")
        scale = tuple(self.crop_scale) if isinstance(self.crop_scale, (list, tuple)) else None
        if scale is None or len(scale) != 2 or not all(isinstance(s, (int, float)) and not isinstance(s, bool)
                                                       for s in scale) or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"expected crop_scale to be two floats 0 < low <= high <= 1, got "
                             f"{_describe(self.crop_scale)}")
        self.crop_scale = (float(scale[0]), float(scale[1]))
        if self.on_error not in ON_ERROR:
            raise ValueError(f"expected on_error to be one of {ON_ERROR}, got {_describe(self.on_error)}")


def _core(model: nn.Module) -> STGCMABase:
    """The STG-CMA model inside a DDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrapper."""
    while not hasattr(model, "config"):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected an STG-CMA model (or a DDP / compiled wrapper of one), got "
                            f"{type(model).__name__}")
        model = inner
    return model  # type: ignore[return-value]


def frame_settings(model: STGCMABase, crop_scale: tuple[float, float] = (0.08, 1.0)) -> Any:
    """:class:`~stgcma_fast.data.video.FrameSettings` for ``model``: M frames of its input size, normalised with its
    backbone's mean/std from timm's ``pretrained_cfg`` (CLIP's when timm has none), clips of at least 10 s."""
    from stgcma_fast.data.video import FrameSettings

    height, width = model.img_size
    if height != width:
        raise ValueError(f"expected a square backbone input for AVE frames, got img_size {model.img_size}")
    values = {"num_frames": model.config.num_frames, "crop_size": height, "resize_shorter": height,
              "min_seconds": 10.0, "crop_scale": crop_scale}
    try:
        return FrameSettings.from_timm(model.config.backbone, **values)
    except (ValueError, RuntimeError, KeyError):  # no pretrained_cfg for this name
        return FrameSettings(**values)


def frontend_settings(model: STGCMABase, mean: float = AVE_FBANK_MEAN, std: float = AVE_FBANK_STD
                      ) -> AudioFrontEndSettings:
    """The front end for ``model``: the ViT setting (10 ms shift) or, for a Swin backbone, the Swin setting (4.4 ms
    shift: a one-second slice gives 223 frames, zero-padded to 224); (T, F) = ``config.audio_size``, K = M
    one-second segments."""
    t, f = model.config.audio_size
    make = AudioFrontEndSettings.swin if model.config.family == "swin" else AudioFrontEndSettings.vit
    return make(target_frames=t, num_mel_bins=f, num_segments=model.config.num_frames, mean=float(mean),
                std=float(std))


@register_task
class AveTask(Task):
    """AVE event localisation. See the module doc; options: :class:`AveOptions`."""

    name = "ave"
    primary_metric = "accuracy"
    options_type = AveOptions

    def build_head(self, model: STGCMABase) -> nn.Module:
        """:class:`AVEHead` over ``model``'s pooled width for its branches: input 2D (audio-visual) or D."""
        core = _core(model)
        width = int(getattr(core, "num_features", core.embed_dim))
        o = self.options
        return AVEHead(width, o.num_classes, o.head_hidden, o.head_dropout, branches=core.config.branches)

    def build_loader(self, root: Path, split: str, *, train: bool, batch_size: int, seed: int,
                     device: torch.device, model: STGCMABase, num_workers: int = 0,
                     rank: int | None = None, world_size: int | None = None) -> Loader:
        """An :class:`~stgcma_fast.data.AveLoader` yielding ``{"video": (B, M, 3, H, W), "waveform": (B, S),
        "labels": (B, 10), "ids", "index"}`` on ``device`` (the front end runs in :meth:`step`)."""
        from stgcma_fast.data import AveDataset, AveLoader

        core = _core(model)
        if core.config.num_frames != 10:
            raise ValueError(f"expected a model with num_frames = 10 for AVE's 10 one-second labels, got "
                             f"{core.config.num_frames}")
        o = self.options
        dataset = AveDataset(root, split, frames=frame_settings(core, o.crop_scale), train=train,
                             audio_source=o.audio_source, seed=seed)
        return AveLoader(dataset, batch_size=batch_size, device=device, num_workers=num_workers, shuffle=train,
                         seed=seed, rank=rank, world_size=world_size, on_error=o.on_error, frontend=None,
                         pad=None if train else False,  # evaluation: disjoint shards, each clip counted once
                         persistent_workers=num_workers > 0)  # no worker start-up cost at every epoch

    def audio_features(self, model: STGCMABase, waveform: torch.Tensor, *, train: bool,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, S) waveforms -> (B, K, T, F) model input: mixup (train), front end (on their device), SpecAugment
        (train). Draws come from ``generator`` in that order."""
        o = self.options
        settings = frontend_settings(model, o.audio_mean, o.audio_std)
        if train and o.mixup_prob > 0:
            waveform = audio_mixup(waveform, o.mixup_prob, o.mixup_alpha, generator, settings.sample_rate).waveform
        audio = AudioFrontEnd(settings)(waveform)
        if train and o.spec_augment and (o.freq_mask or o.time_mask):
            audio = spec_augment(audio, o.freq_mask, o.time_mask, generator)
        return audio

    def step(self, model: nn.Module, head: nn.Module, batch: dict[str, Any], *, train: bool,
             generator: torch.Generator | None = None) -> StepResult:
        """Loss = cross-entropy (label smoothing, float32 logits) over the B x M seconds; outputs
        ``{"pred": (B, M) argmax, "labels": (B, M)}``."""
        core = _core(model)
        cfg = core.config
        labels = batch["labels"]
        if labels.dim() != 2 or labels.shape[1] != cfg.num_frames:
            raise ValueError(f"expected labels of shape (B, {cfg.num_frames}) (one per second), got "
                             f"{tuple(labels.shape)}")
        audio = None
        if cfg.has_audio:
            if "waveform" in batch:
                audio = self.audio_features(core, batch["waveform"], train=train, generator=generator)
            elif train and self.options.mixup_prob > 0:
                raise ValueError("the AVE mixup acts on waveforms: expected a batch with 'waveform' (a loader built "
                                 "with frontend=None, as AveTask.build_loader does), got spectrograms only "
                                 "(set mixup_prob=0 to train on them)")
            else:
                audio = batch["audio"]
                if train and self.options.spec_augment:
                    audio = spec_augment(audio, self.options.freq_mask, self.options.time_mask, generator)
        video = batch["video"] if cfg.has_video else None
        out = model(video, audio)
        video_feat = getattr(out, "video_pooled", None)
        audio_feat = getattr(out, "audio_pooled", None)
        video_feat = out.video_cls if video_feat is None else video_feat
        audio_feat = out.audio_cls if audio_feat is None else audio_feat
        logits = head(video_feat, audio_feat)  # (B, M, C)
        labels = labels.to(logits.device)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                               label_smoothing=self.options.label_smoothing)
        outputs = {"pred": logits.detach().argmax(dim=-1), "labels": labels.detach()}
        return StepResult(loss=loss, outputs=outputs, num_examples=labels.shape[0])

    def new_metrics(self) -> AveMetrics:
        return AveMetrics(self.options.num_classes)

    def make_synthetic(self, root: Path, *, seed: int = 0, small: bool = True) -> Path:
        """The synthetic AVE set of :mod:`stgcma_fast.tasks.ave.synthetic` (written once under ``root``)."""
        from stgcma_fast.tasks.ave.synthetic import make_synthetic_ave

        return make_synthetic_ave(root, seed=seed, small=small)

    def describe(self, metrics: dict[str, Any]) -> str:
        keys = ("accuracy", "majority_accuracy", "mean_class_accuracy")
        lines = [f"  {key:<24}{metrics[key]:.4f}" for key in keys if isinstance(metrics.get(key), float)]
        if "num_seconds" in metrics:
            lines.append(f"  {'num_seconds':<24}{metrics['num_seconds']}")
        return "\n".join(lines)
