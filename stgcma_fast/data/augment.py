"""Training-time augmentation of STG-CMA batches: SpecAugment over the whole clip, and audio-visual mixup.

SpecAugment (docs/tasks.md: "freq mask 48, time mask 192 over the whole 10 s"): a clip's K segments are seen as one
(K * T, F) spectrogram; one frequency mask (width uniform in [0, 48), the same bins in every segment) and one time
mask (width uniform in [0, 192), a contiguous run that may span segment borders) per clip, drawn independently for
each clip exactly as ``torchaudio.functional.mask_along_axis_iid`` draws them (``width = int(u * param)``,
``start = int(v * (size - u * param))``). Masked values are set to ``mask_value`` (0 = the dataset mean once the
features are normalised).

Mixup (docs/tasks.md: "mixup 0.5"): the number is ambiguous. Read as timm's ``mixup_alpha`` it is the Beta(0.5, 0.5)
parameter, applied to every batch (the default here: ``alpha=0.5, prob=1.0``). Read as AST's ``--mixup 0.5`` (the
loaders STG-CMA descends from mix waveforms inside ``_wav2fbank`` with ``lambda ~ Beta(10, 10)``) it is the
probability that a sample is mixed: use ``alpha=10.0, prob=0.5`` (:data:`AST_MIXUP`). Both mix audio, video and labels
with one lambda per sample and a random partner from the batch.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

AST_MIXUP: dict[str, float] = {"alpha": 10.0, "prob": 0.5}


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device)


def _band_mask(size: int, param: int, batch: int, generator: torch.Generator | None) -> torch.Tensor:
    """(batch, size) bool: one band per row, drawn like torchaudio's ``mask_along_axis_iid``."""
    param = min(param, size)
    width = _uniform((batch,), generator) * param
    start = (_uniform((batch,), generator) * (size - width)).long()
    end = start + width.long()
    pos = torch.arange(size, device=width.device)
    return (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])


def spec_augment(
    features: torch.Tensor,
    freq_mask_param: int = 48,
    time_mask_param: int = 192,
    generator: torch.Generator | None = None,
    mask_value: float = 0.0,
) -> torch.Tensor:
    """One frequency and one time mask per clip over the concatenated segments.

    Args:
        features: (B, K, T, F) front-end output.
        freq_mask_param / time_mask_param: maximum widths (exclusive) in mel bins / frames; 0 disables a mask.
        generator: makes the masks reproducible (its device is where they are drawn).

    Returns:
        A new (B, K, T, F) tensor; ``features`` is left unchanged.
    """
    if features.dim() != 4:
        raise ValueError(f"expected features of shape (B, K, T, F), got {tuple(features.shape)}")
    b, k, t, f = features.shape
    keep = torch.ones(b, k * t, f, dtype=torch.bool, device=features.device)
    if freq_mask_param > 0:
        keep &= ~_band_mask(f, freq_mask_param, b, generator).to(features.device)[:, None, :]
    if time_mask_param > 0:
        keep &= ~_band_mask(k * t, time_mask_param, b, generator).to(features.device)[:, :, None]
    return features.masked_fill(~keep.reshape(b, k, t, f), mask_value)


@dataclasses.dataclass
class MixupBatch:
    """Mixed batch: ``x_mixed[i] = lam[i] * x[i] + (1 - lam[i]) * x[partner[i]]`` for audio, video and labels."""

    audio: torch.Tensor
    video: torch.Tensor
    labels: torch.Tensor
    lam: torch.Tensor  # (B,) float32, 1 where the sample was not mixed
    partner: torch.Tensor  # (B,) int64


def _mix(x: torch.Tensor, lam: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    w = lam.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return w * x + (1.0 - w) * x[partner.to(x.device)]


def mixup(
    audio: torch.Tensor,
    video: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.5,
    prob: float = 1.0,
    generator: torch.Generator | None = None,
    num_classes: int | None = None,
) -> MixupBatch:
    """Mix each sample with a random partner of the batch, ``lam ~ Beta(alpha, alpha)`` per sample.

    Args:
        audio: (B, ...) e.g. (B, K, T, F); video: (B, ...) e.g. (B, M, 3, H, W).
        labels: soft/one-hot float labels (B, ...) such as AVE's (B, 10, 29), or integer class indices (B, ...)
            which are one-hot encoded with ``num_classes``.
        alpha: Beta parameter; prob: probability that a sample is mixed at all (else ``lam = 1``).
        generator: makes lambdas and partners reproducible.

    Returns:
        :class:`MixupBatch` with float labels of shape (B, ..., C).
    """
    batch = audio.shape[0]
    if video.shape[0] != batch or labels.shape[0] != batch:
        raise ValueError(f"expected the same batch size B, got audio {tuple(audio.shape)}, video {tuple(video.shape)}"
                         f", labels {tuple(labels.shape)}")
    if alpha <= 0 or not 0.0 <= prob <= 1.0:
        raise ValueError(f"expected alpha > 0 and prob in [0, 1], got alpha={alpha}, prob={prob}")
    if not labels.is_floating_point():
        if num_classes is None:
            raise ValueError(f"integer labels {tuple(labels.shape)} need num_classes for one-hot encoding")
        labels = torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float32)
    device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device))
    lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=batch)).to(torch.float32)
    applied = torch.rand(batch, generator=generator, device=device).cpu() < prob
    lam = torch.where(applied, lam, torch.ones_like(lam))
    partner = torch.randperm(batch, generator=generator, device=device).cpu()
    return MixupBatch(_mix(audio, lam, partner), _mix(video, lam, partner), _mix(labels, lam, partner), lam, partner)
