"""Audio decoding and writing with PyAV (bundled FFmpeg; ``torchaudio.load`` does not work on these machines).

:func:`decode_audio` reads the first audio stream of any container PyAV opens (mp4/m4a with AAC, mkv/webm with Opus or
Vorbis, wav, flac, ...) and resamples it to mono float32 at 16 kHz with
``av.AudioResampler(format="flt", layout="mono", rate=16000)`` (flushed with ``resample(None)``).

Timeline: in a file with a video stream, the audio is placed on the VIDEO's timeline by its timestamps, so sample
``s`` is the sound at ``s / rate`` seconds after the first video frame (the origin of the frame sampling in
:mod:`stgcma_fast.data.video`): an audio track that starts later than the video is preceded by zeros for the time
it does not cover (that time is silent in the file: padding of missing time, not a zero-filled corrupt clip), one
that starts earlier is cut. An audio-only file starts at its first sample. Inside the track, a jump of the
timestamps by more than ``tolerance_seconds`` (lost packets) is an error.

With ``seconds`` the result is cut to exactly ``round(seconds * rate)`` samples, or zero-padded at the end when it
falls short by at most ``tolerance_seconds`` (default 0.1 s: AAC / Opus frame rounding and priming); a larger
shortfall is an error, never a silent zero fill. Missing, unreadable, corrupt, audio-less or too-short files, and
every error FFmpeg reports (decoders run with ``err_detect=crccheck+explode``; frames marked corrupt), raise
:class:`MediaError` naming the file.

:func:`write_audio` writes a mono waveform: WAV (16-bit PCM) or FLAC (16-bit) for the ``prepare`` step, and AAC
(``.m4a`` / ``.mp4``) or Opus (``.mkv`` / ``.webm`` / ``.opus`` / ``.ogg``) for tests.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

SAMPLE_RATE: int = 16000
_CODEC_BY_SUFFIX: dict[str, str] = {
    ".wav": "pcm_s16le",
    ".flac": "flac",
    ".m4a": "aac",
    ".mp4": "aac",
    ".mkv": "libopus",
    ".webm": "libopus",
    ".opus": "libopus",
    ".ogg": "libopus",
}
_DECODE_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError, ValueError, EOFError)


class MediaError(RuntimeError):
    """A media file cannot give the audio asked for; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def fit_length(
    waveform: torch.Tensor, num_samples: int, max_pad: int, path: str | Path = "<waveform>"
) -> torch.Tensor:
    """Cut (..., S) to ``num_samples`` or zero-pad it when ``num_samples - S <= max_pad``; else :class:`MediaError`."""
    have = waveform.shape[-1]
    if have >= num_samples:
        return waveform[..., :num_samples]
    if num_samples - have > max_pad:
        raise MediaError(
            path, f"audio too short: {have} samples, expected {num_samples} (shortfall {num_samples - have} samples "
            f"> tolerance {max_pad})"
        )
    return torch.nn.functional.pad(waveform, (0, num_samples - have))


def video_start(container: av.container.InputContainer) -> Fraction | None:
    """The presentation time (seconds) of the first frame of ``container``'s first video stream (FFmpeg's
    ``start_time``): the origin of the timeline frames and audio segments are placed on. None without a video
    stream or a start time (the audio is then not moved)."""
    if not container.streams.video:
        return None
    stream = container.streams.video[0]
    if stream.start_time is None or stream.time_base is None:
        return None
    return stream.start_time * stream.time_base


def _decoded_audio(container: av.container.InputContainer, sample_rate: int, tolerance_seconds: float, path: Path
                   ) -> tuple[list[np.ndarray], Fraction | None]:
    """Mono float32 chunks at ``sample_rate``, and the first frame's presentation time (seconds, None if untimed)."""
    stream = container.streams.audio[0]
    stream.codec_context.options = {"err_detect": "crccheck+explode"}
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    first: Fraction | None = None
    expected: Fraction | None = None  # where the next frame should start if no time is missing
    for frame in container.decode(stream):
        if frame.is_corrupt:
            raise MediaError(path, f"the decoder reports an audio frame corrupt (at {float(expected or 0):.2f} s)")
        if frame.pts is not None and frame.time_base is not None:
            time = frame.pts * frame.time_base
            first = time if first is None else first
            if expected is not None and time - expected > tolerance_seconds:
                raise MediaError(path, f"audio corrupt: its timestamps jump from {float(expected - first):.2f} s to "
                                       f"{float(time - first):.2f} s (lost packets)")
            expected = time + Fraction(frame.samples, frame.sample_rate)
        chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
    chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    return chunks, first


def decode_audio(
    path: str | Path,
    sample_rate: int = SAMPLE_RATE,
    seconds: float | None = None,
    tolerance_seconds: float = 0.1,
    align: bool = True,
) -> torch.Tensor:
    """Decode the first audio stream of ``path`` to mono float32 at ``sample_rate``, on the video's timeline.

    Args:
        seconds: if given, return exactly ``round(seconds * sample_rate)`` samples (see the module doc).
        tolerance_seconds: the largest shortfall that is zero-padded at the end rather than reported, and the
            largest jump of the timestamps inside the track that is not reported.
        align: place the audio on the video stream's timeline (pad a late start, cut an early one); False keeps
            the track as it starts.

    Returns:
        (S,) float32 tensor, samples in [-1, 1] for integer-coded sources.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "file not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError(path, "no audio stream")
            origin = video_start(container) if align else None
            chunks, first = _decoded_audio(container, sample_rate, tolerance_seconds, path)
    except MediaError:
        raise
    except _DECODE_ERRORS as exc:
        raise MediaError(path, f"cannot decode audio ({type(exc).__name__}: {exc})") from exc
    waveform = torch.from_numpy(np.concatenate(chunks).astype(np.float32, copy=False)) if chunks else torch.zeros(0)
    if waveform.numel() == 0:
        raise MediaError(path, "the audio stream decodes to no samples")
    if origin is not None and first is not None:
        offset = round((first - origin) * sample_rate)  # > 0: the audio starts after the first video frame
        if offset >= 0:
            waveform = torch.nn.functional.pad(waveform, (offset, 0))
        elif -offset >= waveform.numel():
            raise MediaError(path, f"the audio ends before the video starts (it starts {float(origin - first):.2f} s "
                                   f"before the first video frame and lasts {waveform.numel() / sample_rate:.2f} s)")
        else:
            waveform = waveform[-offset:]
    if seconds is None:
        return waveform
    return fit_length(waveform, round(seconds * sample_rate), round(tolerance_seconds * sample_rate), path)


def write_audio(
    path: str | Path, waveform: torch.Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE, codec: str | None = None
) -> Path:
    """Write a mono waveform (S,) or (1, S) of floats in [-1, 1] (values outside are clipped).

    The codec follows the suffix (``.wav`` 16-bit PCM, ``.flac``, ``.m4a``/``.mp4`` AAC, ``.mkv``/``.webm``/``.opus``
    /``.ogg`` Opus) unless ``codec`` names one. Opus needs a rate of 8, 12, 16, 24 or 48 kHz. Returns ``path``.
    """
    path = Path(path)
    codec = codec or _CODEC_BY_SUFFIX.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"cannot infer a codec from suffix {path.suffix!r}; expected one of {list(_CODEC_BY_SUFFIX)}")
    data = torch.as_tensor(waveform).detach().cpu().to(torch.float32).numpy()
    if data.ndim == 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape (S,) or (1, S), got {tuple(data.shape)}")
    data = np.clip(data, -1.0, 1.0)
    if codec in ("pcm_s16le", "flac"):
        frame = av.AudioFrame.from_ndarray(np.round(data * 32767.0).astype(np.int16)[None, :], format="s16",
                                           layout="mono")
    else:
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[None, :]), format="flt", layout="mono")
    frame.sample_rate = sample_rate
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=sample_rate)
        stream.layout = "mono"
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
