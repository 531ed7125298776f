"""PyAV decoding of mp4 (AAC), mkv (Opus), wav and flac; length handling; clear errors for bad files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av", reason="PyAV is needed for audio decoding (pip install av)")

from stgcma_fast.data.audio_io import MediaError, decode_audio, fit_length, write_audio  # noqa: E402

SR = 16000
FREQ = 440.0


def _sine(seconds: float, rate: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * math.pi * FREQ * t)).astype(np.float32)


def _write_av(path: Path, audio_codec: str, video_codec: str | None, rate: int = SR, seconds: float = 2.0) -> Path:
    """A small container written with PyAV directly: optional 64x64 video track plus a mono audio track."""
    with av.open(str(path), "w") as container:
        video = None
        if video_codec is not None:
            video = container.add_stream(video_codec, rate=10)
            video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = container.add_stream(audio_codec, rate=rate)
        audio.layout = "mono"
        frame = av.AudioFrame.from_ndarray(_sine(seconds, rate)[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in [*audio.encode(frame), *audio.encode(None)]:
            container.mux(packet)
        if video is not None:
            for i in range(int(seconds * 10)):
                image = np.full((64, 64, 3), i * 10, dtype=np.uint8)
                container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(video.encode(None))
    return path


def _dominant_hz(wave: torch.Tensor) -> float:
    x = wave.numpy().astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * SR / len(x)


@pytest.mark.parametrize(
    ("name", "writer"),
    [
        ("clip.mp4", lambda p: _write_av(p, "aac", "libx264")),
        ("clip.mkv", lambda p: _write_av(p, "libopus", "libvpx-vp9", rate=48000)),
        ("clip.m4a", lambda p: _write_av(p, "aac", None, rate=44100)),
        ("clip.wav", lambda p: write_audio(p, _sine(2.0))),
        ("clip.flac", lambda p: write_audio(p, torch.from_numpy(_sine(2.0))[None])),
        ("clip.webm", lambda p: write_audio(p, _sine(2.0))),
    ],
)
def test_round_trip(tmp_path: Path, name: str, writer) -> None:
    path = writer(tmp_path / name)
    wave = decode_audio(path, seconds=2.0)
    assert wave.shape == (2 * SR,) and wave.dtype == torch.float32
    assert abs(_dominant_hz(wave) - FREQ) < 1.0
    middle = wave[SR // 2 : 3 * SR // 2]  # away from codec priming and the end-of-stream transient
    assert float(middle.abs().max()) == pytest.approx(0.5, abs=0.05)
    full = decode_audio(path)
    assert full.numel() >= 2 * SR - 0.1 * SR


def test_lossless_is_exact_to_16_bits(tmp_path: Path) -> None:
    sine = _sine(1.0)
    for suffix in (".wav", ".flac"):
        wave = decode_audio(write_audio(tmp_path / f"a{suffix}", sine))
        assert wave.shape == (SR,)
        assert float((wave - torch.from_numpy(sine)).abs().max()) < 1.0 / 32767


def test_length_tolerance(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "a.wav", _sine(2.0))
    padded = decode_audio(path, seconds=2.05)
    assert padded.shape == (int(2.05 * SR),) and not padded[2 * SR:].any()
    assert decode_audio(path, seconds=1.5).shape == (int(1.5 * SR),)
    with pytest.raises(MediaError, match=r"too short: 32000 samples, expected 48000") as info:
        decode_audio(path, seconds=3.0)
    assert info.value.path == path and str(path) in str(info.value)
    assert decode_audio(path, seconds=3.0, tolerance_seconds=1.0).shape == (3 * SR,)
    with pytest.raises(MediaError, match="<waveform>: audio too short"):
        fit_length(torch.zeros(10), 20, 5)


def test_bad_files_raise_media_error(tmp_path: Path) -> None:
    good = _write_av(tmp_path / "good.mp4", "aac", "libx264")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.mkv"
    garbage.write_bytes(b"\x00\x01junk" * 500)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for path in (truncated, garbage, empty):
        with pytest.raises(MediaError, match="cannot decode audio") as info:
            decode_audio(path)
        assert info.value.path == path and str(path) in str(info.value)
    with pytest.raises(MediaError, match="file not found"):
        decode_audio(tmp_path / "absent.mp4")
    wav = write_audio(tmp_path / "cut.wav", _sine(2.0))
    cut = tmp_path / "cut_half.wav"
    cut.write_bytes(wav.read_bytes()[: wav.stat().st_size // 2])
    with pytest.raises(MediaError, match="too short"):
        decode_audio(cut, seconds=2.0)


def test_video_without_audio(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        for _ in range(5):
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")))
        container.mux(video.encode(None))
    with pytest.raises(MediaError, match="no audio stream"):
        decode_audio(path)


def test_write_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot infer a codec"):
        write_audio(tmp_path / "a.xyz", _sine(0.1))
    with pytest.raises(ValueError, match=r"mono waveform of shape \(S,\) or \(1, S\), got \(2, 1600\)"):
        write_audio(tmp_path / "a.wav", np.zeros((2, 1600), np.float32))


def _flip_bytes(path: Path, count: int = 5) -> None:
    data = bytearray(path.read_bytes())
    for pos in np.random.default_rng(0).integers(len(data) // 3, 2 * len(data) // 3, count):
        data[pos] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("suffix", "detected"), [(".flac", True), (".m4a", True), (".wav", False), (".webm", False)])
def test_bit_flips_inside_packets(tmp_path: Path, suffix: str, detected: bool) -> None:
    """FLAC's frame checksums (verified: ``err_detect=crccheck``) and AAC's bitstream syntax catch these flips; PCM
    and Opus have neither, so the damage decodes without error (the limit docs/media.md states)."""
    path = write_audio(tmp_path / f"a{suffix}", _sine(2.0))
    clean = decode_audio(path)
    _flip_bytes(path)
    if detected:
        with pytest.raises(MediaError, match=r"cannot decode audio \(InvalidDataError") as info:
            decode_audio(path)
        assert info.value.path == path
    else:
        damaged = decode_audio(path)
        assert damaged.shape == clean.shape and not torch.equal(damaged, clean)


def test_audio_that_ends_before_the_video_starts(tmp_path: Path) -> None:
    from tests.data.synth_media import write_timed_clip

    path = write_timed_clip(tmp_path / "before", "h264", audio=(-2.0, -1.0))
    with pytest.raises(MediaError, match=r"the audio ends before the video starts \(it starts 2\.00 s before "
                       r"the first video frame and lasts 1\.\d\d s\)") as info:
        decode_audio(path, seconds=1.0)
    assert info.value.path == path
    assert decode_audio(path, align=False).numel() >= SR - 0.1 * SR, "unaligned, the track reads as it is"
