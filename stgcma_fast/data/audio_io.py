"""Audio decoding and writing with PyAV (bundled FFmpeg; ``torchaudio.load`` does not work on these machines).

:func:`decode_audio` reads the first audio stream of any container PyAV opens (mp4/m4a with AAC, mkv/webm with Opus or
Vorbis, wav, flac, ...) and resamples it to mono float32 at 16 kHz with
``av.AudioResampler(format="flt", layout="mono", rate=16000)`` (flushed with ``resample(None)``). With ``seconds``
the result is cut to exactly ``round(seconds * rate)`` samples, or zero-padded when it falls short by at most
``tolerance_seconds`` (default 0.1 s: AAC / Opus frame rounding and priming); a larger shortfall is an error, never a
silent zero fill. Missing, unreadable, corrupt, audio-less or too-short files raise :class:`MediaError` naming the file.

:func:`write_audio` writes a mono waveform: WAV (16-bit PCM) or FLAC (16-bit) for the ``prepare`` step, and AAC
(``.m4a`` / ``.mp4``) or Opus (``.mkv`` / ``.webm`` / ``.opus`` / ``.ogg``) for tests.
"""

from __future__ import annotations

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


def decode_audio(
    path: str | Path,
    sample_rate: int = SAMPLE_RATE,
    seconds: float | None = None,
    tolerance_seconds: float = 0.1,
) -> torch.Tensor:
    """Decode the first audio stream of ``path`` to mono float32 at ``sample_rate``.

    Args:
        seconds: if given, return exactly ``round(seconds * sample_rate)`` samples (see the module doc).
        tolerance_seconds: the largest shortfall that is zero-padded rather than reported.

    Returns:
        (S,) float32 tensor, samples in [-1, 1] for integer-coded sources.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "file not found")
    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError(path, "no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            for frame in container.decode(stream):
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    except MediaError:
        raise
    except _DECODE_ERRORS as exc:
        raise MediaError(path, f"cannot decode audio ({type(exc).__name__}: {exc})") from exc
    waveform = torch.from_numpy(np.concatenate(chunks).astype(np.float32, copy=False)) if chunks else torch.zeros(0)
    if waveform.numel() == 0:
        raise MediaError(path, "the audio stream decodes to no samples")
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
