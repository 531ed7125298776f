"""Batched Kaldi fbank against ``torchaudio.compliance.kaldi.fbank``, item by item."""

from __future__ import annotations

import math

import pytest
import torch
from torchaudio.compliance.kaldi import fbank as ta_fbank
from torchaudio.compliance.kaldi import get_mel_banks

from stgcma_fast.data import fbank as fbank_module
from stgcma_fast.data.fbank import TOLERANCES, FbankConfig, kaldi_fbank, kaldi_mel_banks
from stgcma_fast.testing import assert_close

SR = 16000
SETTINGS = {"vit": (128, 10.0), "swin": (224, 4.4)}


def _reference(wave: torch.Tensor, num_mel_bins: int, frame_shift: float, window_type: str = "hanning") -> torch.Tensor:
    """The authors' call, on one waveform with its mean removed first."""
    return ta_fbank((wave - wave.mean())[None], htk_compat=True, sample_frequency=SR, use_energy=False,
                    window_type=window_type, num_mel_bins=num_mel_bins, dither=0.0, frame_shift=frame_shift,
                    frame_length=25)


def _batch(seconds: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Items with different content: noise, 440 Hz sine, two tones + DC, quiet noise, silence."""
    g = torch.Generator().manual_seed(1)
    n = int(seconds * SR)
    t = torch.arange(n, dtype=torch.float64) / SR
    items = [
        torch.randn(n, generator=g, dtype=torch.float64),
        0.5 * torch.sin(2 * math.pi * 440 * t),
        0.3 * torch.sin(2 * math.pi * 1000 * t) + 0.2 * torch.sin(2 * math.pi * 3150 * t) + 0.05,
        1e-3 * torch.randn(n, generator=g, dtype=torch.float64),
        torch.zeros(n, dtype=torch.float64),
    ]
    return torch.stack(items).to(dtype)


@pytest.mark.parametrize("num_bins", [23, 128, 224])
def test_mel_banks_bit_identical(num_bins: int) -> None:
    ref, _ = get_mel_banks(num_bins, 512, float(SR), 20.0, 0.0, 100.0, -500.0, 1.0)
    ours = kaldi_mel_banks(num_bins, 512, float(SR), 20.0, 0.0)
    assert ours.shape == (num_bins, 257) and torch.equal(ours[:, :256], ref) and not ours[:, 256].any()


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("seconds", [1.0, 3.3])
def test_fp32_parity_item_by_item(setting: str, seconds: float) -> None:
    bins, shift = SETTINGS[setting]
    waves = _batch(seconds)
    out = kaldi_fbank(waves, FbankConfig(num_mel_bins=bins, frame_shift_ms=shift))
    atol, rtol = TOLERANCES[torch.float32]
    for i, wave in enumerate(waves):
        ref = _reference(wave, bins, shift)
        assert out.shape[1:] == ref.shape
        assert_close(out[i], ref, atol=atol, rtol=rtol, name=f"{setting} item {i}")


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_fp64_parity_is_exact(setting: str) -> None:
    """In float64 the batched path and torchaudio agree to rounding: same algorithm, same mel matrix."""
    bins, shift = SETTINGS[setting]
    waves = _batch(1.0, torch.float64)
    out = kaldi_fbank(waves, FbankConfig(num_mel_bins=bins, frame_shift_ms=shift))
    assert out.dtype == torch.float64
    atol, rtol = TOLERANCES[torch.float64]
    for i, wave in enumerate(waves):
        assert_close(out[i], _reference(wave, bins, shift), atol=atol, rtol=rtol, name=f"{setting} fp64 item {i}")


def test_ill_conditioned_bins_within_fp32_precision() -> None:
    """A chirp over a DC offset has mel bins ~1e-10 below the frame's energy; fp32 cannot resolve them (torchaudio's
    own fp32 output is off there too). Against a float64 truth, both stay within a bound that grows with that ratio."""
    n = 2 * SR
    t = torch.arange(n, dtype=torch.float64) / SR
    wave = 0.3 * torch.sin(2 * math.pi * (100 + 700 * t) * t) + 0.2
    truth = _reference(wave, 128, 10.0)
    frame_max = truth.max(dim=-1, keepdim=True).values
    bound = 1e-3 + 1e-4 * torch.exp(frame_max - truth)
    ours = kaldi_fbank(wave.float(), FbankConfig()).double()
    torchaudio_fp32 = _reference(wave.float(), 128, 10.0).double()
    assert bool(((ours - truth).abs() <= bound).all()), float((ours - truth).abs().max())
    assert bool(((torchaudio_fp32 - truth).abs() <= bound).all())
    well_conditioned = frame_max - truth < 12.0
    assert float((ours - truth).abs()[well_conditioned].max()) < 1e-3


def test_povey_window_and_1d_input() -> None:
    wave = _batch(1.0)[0]
    out = kaldi_fbank(wave, FbankConfig(num_mel_bins=80, window_type="povey"))
    ref = ta_fbank((wave - wave.mean())[None], num_mel_bins=80, dither=0.0)  # Kaldi defaults: povey window
    assert out.shape == (98, 80)
    assert_close(out, ref, atol=1e-3, rtol=0.0, name="povey")


def test_frame_counts() -> None:
    vit, swin = FbankConfig(), FbankConfig(num_mel_bins=224, frame_shift_ms=4.4)
    assert (vit.window_size, vit.window_shift, vit.padded_window_size) == (400, 160, 512)
    assert (swin.window_shift, vit.num_frames(SR), swin.num_frames(SR)) == (70, 98, 223)
    assert vit.num_frames(399) == 0 and vit.samples_for_frames(102) == 101 * 160 + 400
    out = kaldi_fbank(torch.randn(2, 10 * SR), swin)
    assert out.shape == (2, swin.num_frames(10 * SR), 224) and out.dtype == torch.float32


def test_half_input_computed_in_fp32() -> None:
    wave = _batch(1.0)[:2]
    out = kaldi_fbank(wave.half())
    assert out.dtype == torch.float32
    assert_close(out, kaldi_fbank(wave.half().float()), atol=0.0, rtol=0.0, name="half")


def test_errors() -> None:
    with pytest.raises(ValueError, match="at least 400 samples"):
        kaldi_fbank(torch.zeros(2, 399))
    with pytest.raises(ValueError, match=r"shape \(B, S\) or \(S,\), got \(1, 2, 16000\)"):
        kaldi_fbank(torch.zeros(1, 2, SR))
    with pytest.raises(ValueError, match="floating-point"):
        kaldi_fbank(torch.zeros(SR, dtype=torch.int16))
    with pytest.raises(ValueError, match="window_type"):
        FbankConfig(window_type="hann")


def test_window_and_mel_cached() -> None:
    cfg = FbankConfig(num_mel_bins=96)
    fbank_module._cached_mel_t.cache_clear()
    kaldi_fbank(torch.randn(SR), cfg)
    kaldi_fbank(torch.randn(3, SR), cfg)
    info = fbank_module._cached_mel_t.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    a = fbank_module._cached_window("hanning", 400, torch.device("cpu"), torch.float32)
    assert a is fbank_module._cached_window("hanning", 400, torch.device("cpu"), torch.float32)
