"""The authors' AVE mixup: the AUDIO waveform alone is mixed with another clip's, one lambda per second.

STG-CMA's AVE loader (inherited from LAVisH / AST's ``_wav2fbank``) builds each second's spectrogram from
``lam * wave_a + (1 - lam) * wave_b`` with a fresh ``lam ~ Beta(alpha, alpha)`` for every second, with probability
``prob`` per clip; the frames and the labels stay those of clip a. Here the same is done batched, on the waveforms
before the audio front end: clip ``i`` is mixed (with probability ``prob``) with a partner ``j != i`` of its batch,
and sample ``t`` of second ``s = t // sample_rate`` gets ``lam[i, s]``; samples past the last full second take the
last second's lambda. Every draw comes from one CPU ``torch.Generator``, so a run is reproducible.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch


@dataclasses.dataclass
class AudioMixup:
    """A mixed batch of waveforms and how it was mixed.

    waveform: (B, S) mixed waveforms; lam: (B, seconds) float32, the weight of each clip's own audio per second
    (1 where the clip was not mixed); partner: (B,) int64, the clip each one was mixed with (itself when unmixed);
    mixed: (B,) bool.
    """

    waveform: torch.Tensor
    lam: torch.Tensor
    partner: torch.Tensor
    mixed: torch.Tensor


def audio_mixup(
    waveform: torch.Tensor,
    prob: float = 0.5,
    alpha: float = 10.0,
    generator: torch.Generator | None = None,
    sample_rate: int = 16000,
) -> AudioMixup:
    """Mix each clip's waveform, with probability ``prob``, with another clip's of the batch (lambda per second).

    Args:
        waveform: (B, S) float waveforms at ``sample_rate`` (any device; the draws are made on the CPU).
        prob: probability that a clip is mixed (0: the batch comes back unchanged); alpha: Beta(alpha, alpha).
        generator: CPU generator all draws come from.

    Returns:
        :class:`AudioMixup`; ``waveform`` is a new tensor (the input is not modified).
    """
    if waveform.dim() != 2 or not waveform.is_floating_point():
        raise ValueError(f"expected float waveforms of shape (B, S), got {tuple(waveform.shape)} {waveform.dtype}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"expected mixup prob in [0, 1], got {prob!r}")
    if not alpha > 0:
        raise ValueError(f"expected mixup alpha > 0, got {alpha!r}")
    if sample_rate < 1:
        raise ValueError(f"expected sample_rate >= 1, got {sample_rate!r}")
    batch, samples = waveform.shape
    seconds = max(1, samples // sample_rate)
    if prob == 0.0 or batch < 2:
        return AudioMixup(waveform.clone(), torch.ones(batch, seconds), torch.arange(batch),
                          torch.zeros(batch, dtype=torch.bool))
    mixed = torch.rand(batch, generator=generator) < prob
    # A partner other than the clip itself: shift by 1 .. B-1 positions.
    partner = (torch.arange(batch) + torch.randint(1, batch, (batch,), generator=generator)) % batch
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=(batch, seconds))).to(torch.float32)
    lam = torch.where(mixed[:, None], lam, torch.ones_like(lam))
    partner = torch.where(mixed, partner, torch.arange(batch))
    second_of_sample = torch.clamp(torch.arange(samples) // sample_rate, max=seconds - 1)
    weight = lam[:, second_of_sample].to(device=waveform.device, dtype=waveform.dtype)  # (B, S)
    out = weight * waveform + (1.0 - weight) * waveform[partner.to(waveform.device)]
    return AudioMixup(out, lam, partner, mixed)
