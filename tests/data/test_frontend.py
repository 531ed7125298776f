"""The STG-CMA audio front end against a per-clip, per-segment restatement of the authors' ``_wav2fbank``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchaudio.compliance.kaldi import fbank as ta_fbank

from stgcma_fast.data.frontend import (
    AVE_FBANK_MEAN,
    AVE_FBANK_STD,
    AVS_S4_SWIN_MEAN,
    AVS_S4_SWIN_STD,
    AudioFrontEnd,
    AudioFrontEndSettings,
    compute_stats,
    pad_or_cut,
    segment_starts,
)
from stgcma_fast.testing import assert_close

SR = 16000


def _authors_clip(wave: torch.Tensor, s: AudioFrontEndSettings) -> torch.Tensor:
    """One clip as the authors' loader computes it, segment by segment: (K, T, F)."""
    waveform = wave[None] - wave.mean()
    starts = np.linspace(0, waveform.shape[1] - SR * (s.segment_seconds + 0.1), num=s.num_segments, dtype=int)
    out = []
    for idx in range(s.num_segments):
        seg = waveform[:, starts[idx]:starts[idx] + int(SR * s.segment_seconds)]
        fb = ta_fbank(seg, htk_compat=True, sample_frequency=SR, use_energy=False, window_type="hanning",
                      num_mel_bins=s.num_mel_bins, dither=0.0, frame_shift=s.frame_shift_ms)
        fb = (fb - s.mean) / (s.std * 2)
        p = s.target_frames - fb.shape[0]
        fb = torch.nn.functional.pad(fb, (0, 0, 0, p)) if p > 0 else fb[: s.target_frames]
        out.append(fb)
    return torch.stack(out)


def _clips(batch: int, seconds: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    n = int(seconds * SR)
    t = torch.arange(n) / SR
    clips = [0.1 * torch.randn(n, generator=g), 0.4 * torch.sin(2 * math.pi * (200 + 300 * t) * t) + 0.1]
    clips += [torch.randn(n, generator=g) * torch.sin(2 * math.pi * 0.3 * t) for _ in range(batch - 2)]
    return torch.stack(clips[:batch])


@pytest.mark.parametrize(
    ("settings", "seconds", "shape"),
    [
        (AudioFrontEndSettings.vit(), 10.0, (3, 10, 102, 128)),
        (AudioFrontEndSettings.swin(), 10.0, (3, 10, 224, 224)),
        (AudioFrontEndSettings.swin(segment_seconds=1.95, num_segments=5, mean=AVS_S4_SWIN_MEAN,
                                    std=AVS_S4_SWIN_STD), 5.0, (3, 5, 224, 224)),
    ],
    ids=["vit", "swin", "swin-avs"],
)
def test_matches_authors_pipeline(settings: AudioFrontEndSettings, seconds: float, shape: tuple[int, ...]) -> None:
    clips = _clips(3, seconds)
    out = AudioFrontEnd(settings)(clips)
    assert out.shape == shape and out.dtype == torch.float32
    for i, clip in enumerate(clips):
        assert_close(out[i], _authors_clip(clip, settings), atol=1e-4, rtol=0.0, name=f"clip {i}")


def test_vit_padding_rows_are_zero_after_normalisation() -> None:
    out = AudioFrontEnd()(_clips(2, 10.0))
    assert not out[:, :, 98:].any() and out[:, :, :98].abs().amin() > 0


def test_single_clip_and_defaults() -> None:
    front = AudioFrontEnd()
    assert front.settings == AudioFrontEndSettings.vit()
    assert (front.settings.mean, front.settings.std) == (AVE_FBANK_MEAN, AVE_FBANK_STD) == (-4.1426, 3.2001)
    clip = _clips(1, 10.0)
    assert_close(front(clip[0]), front(clip)[0], atol=0.0, rtol=0.0, name="1-D input")
    assert front(clip[0]).shape == (10, 102, 128)


def test_segment_starts() -> None:
    vit = AudioFrontEndSettings.vit()
    starts = segment_starts(10 * SR, vit)
    assert starts[0] == 0 and starts[-1] == 10 * SR - 17600 and len(starts) == 10
    assert starts == [int(x) for x in np.linspace(0, 142400.0, 10).astype(int)]
    contiguous = AudioFrontEndSettings.vit(segmentation="contiguous")
    assert segment_starts(10 * SR, contiguous) == [m * SR for m in range(10)]
    with pytest.raises(ValueError, match="at least 10 x 16000"):
        segment_starts(10 * SR - 1, contiguous)
    with pytest.raises(ValueError, match="more than 17600 samples"):
        segment_starts(17600, vit)
    with pytest.raises(ValueError, match="segmentation"):
        AudioFrontEndSettings(segmentation="random")


def test_contiguous_segments_are_seconds() -> None:
    clip = _clips(1, 10.0)
    settings = AudioFrontEndSettings.vit(segmentation="contiguous")
    out = AudioFrontEnd(settings)(clip)
    centred = clip[0] - clip[0].mean()
    for m in (0, 9):
        seg = centred[m * SR:(m + 1) * SR][None]
        ref = ta_fbank(seg, htk_compat=True, sample_frequency=SR, use_energy=False, window_type="hanning",
                       num_mel_bins=128, dither=0.0, frame_shift=10)
        ref = pad_or_cut((ref - AVE_FBANK_MEAN) / (2 * AVE_FBANK_STD), 102)
        assert_close(out[0, m], ref, atol=1e-4, rtol=0.0, name=f"segment {m}")


def test_raw_fbank_and_stats() -> None:
    front = AudioFrontEnd(AudioFrontEndSettings.vit())
    clips = _clips(3, 10.0)
    raw = front.raw_fbank(clips)
    assert raw.shape == (3, 10, 98, 128)
    normalised = (raw - AVE_FBANK_MEAN) / (2 * AVE_FBANK_STD)
    assert_close(front(clips)[:, :, :98], normalised, atol=1e-5, rtol=0.0, name="raw vs front end")
    mean, std = compute_stats([raw[0], raw[1:]])
    flat = raw.double().reshape(30, -1)
    assert mean == pytest.approx(float(flat.mean(1).mean())) and std == pytest.approx(float(flat.std(1).mean()))
    pooled_mean, pooled_std = compute_stats(iter([raw[:2], raw[2]]), per_item=False)
    assert pooled_mean == pytest.approx(float(raw.double().mean()))
    assert pooled_std == pytest.approx(float(raw.double().std()), rel=1e-6)
    with pytest.raises(ValueError, match="no spectrogram"):
        compute_stats([])


def test_input_errors() -> None:
    with pytest.raises(ValueError, match=r"\(B, S\) or \(S,\)"):
        AudioFrontEnd()(torch.zeros(1, 2, 10 * SR))
    with pytest.raises(ValueError, match="more than 17600 samples"):
        AudioFrontEnd()(torch.zeros(2, SR))
