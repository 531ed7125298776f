"""STG-CMA audio front end: a clip's waveform -> K normalised log-mel segments (B, K, T, F).

What the authors' loaders (the LAVisH-derived ``_wav2fbank`` of the STG-CMA AVE / AVS code) do per clip and segment
``m``, and this module does batched:

1. remove the mean of the WHOLE clip's waveform;
2. segment ``m``: ``int(sr * L)`` samples from ``starts[m]``, where (``segmentation="linspace"``, the default, as the
   authors) ``starts = np.linspace(0, S - sr * (L + 0.1), num=K, dtype=int)``: K one-second windows spread evenly over
   the clip, the last ending 0.1 s before its end (for 10 s / K = 10: starts 0, 0.989, 1.978, ... 8.9 s). The
   authors fall back to the whole waveform when ``S <= sr * (L + 0.1)``; here that raises ``ValueError`` instead.
   ``segmentation="contiguous"`` uses ``[m L, (m + 1) L)`` seconds instead (the plain reading, docs/model.md);
3. Kaldi fbank of the segment (:func:`~stgcma_fast.data.fbank.kaldi_fbank`): ViT/CLIP 128 bins, 10 ms shift
   (98 frames per second); Swin 224 bins, 4.4 ms shift (70 samples, 223 frames per second);
4. normalise ``(fbank - mean) / (2 * std)`` (AVE statistics by default: mean -4.1426, std 3.2001);
5. THEN zero-pad or cut to T frames (ViT 102, Swin 224): padded frames are 0 in the normalised space, i.e. equal to
   the dataset mean, as in the authors' code (normalise first, ``ZeroPad2d`` after).

Only the samples that reach the first T frames are transformed (a 1.95 s authors' AVS window cut to 224 frames needs
1.005 s); this changes nothing because the clip mean is removed before segmentation, never per segment.
Statistics: :func:`compute_stats` follows the authors' / AST recipe (mean of per-spectrogram means, mean of
per-spectrogram standard deviations).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import torch

from stgcma_fast.data.fbank import FbankConfig, kaldi_fbank, remove_mean_rows

AVE_FBANK_MEAN: float = -4.1426
AVE_FBANK_STD: float = 3.2001
# The authors' AVSBench-S4 loader, Swin setting (224 bins, 4.4 ms): statistics it hard-codes for S4.
AVS_S4_SWIN_MEAN: float = -5.669627666473389
AVS_S4_SWIN_STD: float = 3.948380470275879
SEGMENTATIONS: tuple[str, ...] = ("linspace", "contiguous")


@dataclasses.dataclass(frozen=True)
class AudioFrontEndSettings:
    """Audio front-end options; :meth:`vit` and :meth:`swin` give the two STG-CMA settings."""

    num_mel_bins: int = 128
    frame_shift_ms: float = 10.0
    target_frames: int = 102
    num_segments: int = 10
    segment_seconds: float = 1.0
    sample_rate: int = 16000
    mean: float = AVE_FBANK_MEAN
    std: float = AVE_FBANK_STD
    segmentation: str = "linspace"
    margin_seconds: float = 0.1
    frame_length_ms: float = 25.0

    def __post_init__(self) -> None:
        if self.segmentation not in SEGMENTATIONS:
            raise ValueError(f"expected segmentation in {SEGMENTATIONS}, got {self.segmentation!r}")
        if self.num_segments < 1 or self.target_frames < 1 or self.segment_seconds <= 0:
            raise ValueError(f"expected num_segments, target_frames >= 1 and segment_seconds > 0, got {self}")
        if self.std <= 0:
            raise ValueError(f"expected std > 0, got {self.std}")
        _ = self.fbank_config  # validates the filterbank options

    @classmethod
    def vit(cls, **overrides: object) -> AudioFrontEndSettings:
        """ViT / CLIP setting: 128 mel bins, 10 ms shift, T = 102 (so a (102, 128) image per second)."""
        return cls(**{"num_mel_bins": 128, "frame_shift_ms": 10.0, "target_frames": 102, **overrides})

    @classmethod
    def swin(cls, **overrides: object) -> AudioFrontEndSettings:
        """Swin setting: 224 mel bins, 4.4 ms shift, T = 224 (a 224 x 224 image per second). The authors' AVS
        loader uses ``segment_seconds=1.95, num_segments=5, mean=AVS_S4_SWIN_MEAN, std=AVS_S4_SWIN_STD``."""
        return cls(**{"num_mel_bins": 224, "frame_shift_ms": 4.4, "target_frames": 224, **overrides})

    @property
    def fbank_config(self) -> FbankConfig:
        return FbankConfig(
            num_mel_bins=self.num_mel_bins,
            frame_shift_ms=self.frame_shift_ms,
            frame_length_ms=self.frame_length_ms,
            sample_rate=float(self.sample_rate),
        )

    @property
    def segment_samples(self) -> int:
        """Samples per segment, ``int(sr * L)`` as the authors compute it."""
        return int(self.sample_rate * self.segment_seconds)

    @property
    def used_samples(self) -> int:
        """Samples of a segment that reach the first ``target_frames`` frames."""
        return min(self.segment_samples, self.fbank_config.samples_for_frames(self.target_frames))


def segment_starts(num_samples: int, settings: AudioFrontEndSettings) -> list[int]:
    """First sample of each of the K segments of a ``num_samples``-long clip (see the module doc)."""
    k, seg, sr = settings.num_segments, settings.segment_samples, settings.sample_rate
    if settings.segmentation == "contiguous":
        if num_samples < k * seg:
            raise ValueError(f"expected at least {k} x {seg} = {k * seg} samples for contiguous segments, "
                             f"got {num_samples}")
        return [m * seg for m in range(k)]
    span = sr * (settings.segment_seconds + settings.margin_seconds)
    if not num_samples > span:
        raise ValueError(
            f"expected more than {span:g} samples (segment {settings.segment_seconds} s + margin "
            f"{settings.margin_seconds} s) for linspace segments, got {num_samples}"
        )
    return [int(s) for s in np.linspace(0, num_samples - span, num=k, dtype=int)]


def split_segments(waveforms: torch.Tensor, settings: AudioFrontEndSettings, trim: bool = True) -> torch.Tensor:
    """(B, S) -> (B, K, L) segments (no mean removal here); ``L = used_samples`` if ``trim`` else the full segment."""
    if waveforms.dim() != 2:
        raise ValueError(f"expected waveforms of shape (B, S), got {tuple(waveforms.shape)}")
    starts = torch.tensor(segment_starts(waveforms.shape[-1], settings), device=waveforms.device)
    length = settings.used_samples if trim else settings.segment_samples
    index = starts[:, None] + torch.arange(length, device=waveforms.device)  # (K, L)
    return waveforms[:, index]


def pad_or_cut(fbank: torch.Tensor, target_frames: int) -> torch.Tensor:
    """(..., frames, F) -> (..., target_frames, F): zero rows appended, or the first ``target_frames`` kept."""
    frames = fbank.shape[-2]
    if frames < target_frames:
        return torch.nn.functional.pad(fbank, (0, 0, 0, target_frames - frames))
    return fbank[..., :target_frames, :]


def normalize(fbank: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``(fbank - mean) / (2 * std)``, the AST / STG-CMA normalisation."""
    return (fbank - mean) / (2.0 * std)


class AudioFrontEnd:
    """Batched clip -> (B, K, T, F) spectrogram segments; runs on the waveforms' device.

    Example: ``AudioFrontEnd(AudioFrontEndSettings.vit())(waves)`` with ``waves`` (B, 160000) gives (B, 10, 102, 128).
    """

    def __init__(self, settings: AudioFrontEndSettings | None = None) -> None:
        self.settings = settings or AudioFrontEndSettings.vit()

    def __repr__(self) -> str:
        return f"AudioFrontEnd({self.settings})"

    @staticmethod
    def _as_batch(waveforms: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if waveforms.dim() not in (1, 2) or not waveforms.is_floating_point():
            raise ValueError(f"expected float waveforms of shape (B, S) or (S,), got {tuple(waveforms.shape)} "
                             f"{waveforms.dtype}")
        x = waveforms if waveforms.dim() == 2 else waveforms.unsqueeze(0)
        x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        return remove_mean_rows(x), waveforms.dim() == 1

    def raw_fbank(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, K, frames, F) log-mel of the full segments: not normalised, not padded or cut
        (the input of :func:`compute_stats`)."""
        x, squeeze = self._as_batch(waveforms)
        segments = split_segments(x, self.settings, trim=False)
        b, k, length = segments.shape
        fb = kaldi_fbank(segments.reshape(b * k, length), self.settings.fbank_config, remove_mean=False)
        fb = fb.reshape(b, k, *fb.shape[-2:])
        return fb[0] if squeeze else fb

    def __call__(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, S) or (S,) waveforms at ``settings.sample_rate`` -> (B, K, T, F) (or (K, T, F)) float32 features."""
        s = self.settings
        x, squeeze = self._as_batch(waveforms)
        segments = split_segments(x, s, trim=True)
        b, k, length = segments.shape
        fb = kaldi_fbank(segments.reshape(b * k, length), s.fbank_config, remove_mean=False)
        fb = pad_or_cut(normalize(fb, s.mean, s.std), s.target_frames)
        fb = fb.reshape(b, k, s.target_frames, s.num_mel_bins)
        return fb[0] if squeeze else fb


def compute_stats(fbanks: Iterable[torch.Tensor], per_item: bool = True) -> tuple[float, float]:
    """Dataset statistics of raw (un-normalised) log-mel spectrograms, each (..., frames, F).

    ``per_item=True`` (the authors' and AST's recipe): the mean over spectrograms of each spectrogram's mean, and the
    mean of each spectrogram's (unbiased) standard deviation. ``per_item=False``: the pooled mean and standard
    deviation of all values. Accumulated in float64.
    """
    sum_mean = sum_std = 0.0
    items = 0
    total = total_sq = 0.0
    count = 0
    for fb in fbanks:
        if fb.dim() < 2:
            raise ValueError(f"expected spectrograms of shape (..., frames, F), got {tuple(fb.shape)}")
        flat = fb.detach().to(torch.float64).reshape(-1, fb.shape[-2] * fb.shape[-1])
        if per_item:
            sum_mean += float(flat.mean(dim=1).sum())
            sum_std += float(flat.std(dim=1).sum())
            items += flat.shape[0]
        else:
            total += float(flat.sum())
            total_sq += float(flat.pow(2).sum())
            count += flat.numel()
    if per_item:
        if items == 0:
            raise ValueError("compute_stats got no spectrogram")
        return sum_mean / items, sum_std / items
    if count < 2:
        raise ValueError(f"compute_stats needs at least 2 values, got {count}")
    mean = total / count
    var = max(total_sq - count * mean * mean, 0.0) / (count - 1)
    return mean, var**0.5
