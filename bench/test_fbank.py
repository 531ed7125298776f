"""Audio front end: the batched Kaldi fbank (AudioFrontEnd, on the device) against a loop over
torchaudio.compliance.kaldi.fbank per segment (the authors' per-item CPU path). Throughput in clips/s."""

from __future__ import annotations

import pytest
import torch
import torchaudio

from stgcma_fast.data.frontend import AudioFrontEnd, AudioFrontEndSettings, split_segments

from .common import DEVICE, HAS_CUDA, run_benchmark

SETTINGS = {"vit": AudioFrontEndSettings.vit(), "swin": AudioFrontEndSettings.swin()}


def _torchaudio_loop(waves: torch.Tensor, s: AudioFrontEndSettings) -> torch.Tensor:
    waves = waves - waves.mean(dim=1, keepdim=True)
    segments = split_segments(waves, s, trim=False)
    out = torch.zeros(waves.shape[0], s.num_segments, s.target_frames, s.num_mel_bins)
    for b in range(segments.shape[0]):
        for k in range(segments.shape[1]):
            fb = torchaudio.compliance.kaldi.fbank(
                segments[b, k][None], htk_compat=True, sample_frequency=s.sample_rate, use_energy=False,
                window_type="hanning", num_mel_bins=s.num_mel_bins, dither=0.0, frame_shift=s.frame_shift_ms)
            fb = (fb - s.mean) / (2 * s.std)
            n = min(fb.shape[0], s.target_frames)
            out[b, k, :n] = fb[:n]
    return out


@pytest.mark.parametrize("provider", ["batched", "torchaudio-loop"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_audio_front_end(benchmark, setting, provider):
    s = SETTINGS[setting]
    clips = 16 if HAS_CUDA else 2
    waves = torch.randn(clips, 10 * s.sample_rate)
    if provider == "batched":
        front = AudioFrontEnd(s)
        device_waves = waves.to(DEVICE)
        fn = lambda: front(device_waves)  # noqa: E731
    else:
        fn = lambda: _torchaudio_loop(waves, s)  # noqa: E731
    run_benchmark(benchmark, fn, warmup=1, rounds=5 if HAS_CUDA else 2, items=clips, provider=provider,
                  stage="audio_front_end", setting=setting, device=str(DEVICE) if provider == "batched" else "cpu")
