"""Batched Kaldi-compatible log-mel filterbank, item-by-item equal to ``torchaudio.compliance.kaldi.fbank``.

``torchaudio.compliance.kaldi.fbank`` reads ONE waveform (a 2-D input is taken as channels and only channel 0 is
used). :func:`kaldi_fbank` takes a batch (B, S) and reproduces, per item, the call the STG-CMA authors make::

    fbank(wave, htk_compat=True, sample_frequency=16000, use_energy=False, window_type='hanning',
          num_mel_bins=F, dither=0.0, frame_shift=shift_ms, frame_length=25)

Steps, mirroring torchaudio 2.x ``compliance/kaldi.py`` op by op (so the fp32 rounding matches too):

1. frames of ``window_size = int(sr * frame_length_ms * 0.001)`` samples every
   ``window_shift = int(sr * frame_shift_ms * 0.001)`` samples (16 kHz: 400 / 160 at 10 ms, 400 / 70 at 4.4 ms),
   ``snip_edges=True``: ``1 + (S - window_size) // window_shift`` frames, no padding at the ends;
2. per-frame DC removal (``remove_dc_offset``), then pre-emphasis 0.97 with ``x[-1] := x[0]`` (replicate);
3. symmetric window (``hanning`` = ``torch.hann_window(periodic=False)``; ``povey`` = hanning ** 0.85, Kaldi's
   default; ``hamming``; ``rectangular``), zero-padded to the next power of two (400 -> 512);
4. power spectrum ``|rfft|^2`` (257 bins), times the Kaldi mel matrix (triangles on the mel scale
   ``1127 ln(1 + f / 700)`` between ``low_freq`` = 20 Hz and Nyquist, with ``num_mel_bins + 1`` equal mel steps;
   the Nyquist bin gets weight 0; built in float32 exactly as torchaudio builds it);
5. ``log(max(x, eps))`` with ``eps = torch.finfo(torch.float32).eps`` (1.19e-7), whatever the dtype.

``use_energy=False`` makes ``htk_compat`` irrelevant (it only places the energy column); ``dither=0`` is fixed (no
randomness), and so are ``snip_edges``, ``use_power`` and ``use_log_fbank``. The window and the mel matrix are
cached per (config, device, dtype). Computation is in float32 (float64 inputs stay float64). On CPU the output is
bit-identical to torchaudio's for the same waveform (checked in ``tests/data/test_fbank.py``); the declared tolerance
:data:`TOLERANCES` leaves room for other BLAS / FFT back ends.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

EPSILON: float = float(torch.finfo(torch.float32).eps)  # torchaudio's EPSILON, used for every dtype
WINDOW_TYPES: tuple[str, ...] = ("hanning", "povey", "hamming", "rectangular")
# Tolerances of kaldi_fbank against torchaudio (log-mel values, natural log), per dtype: (atol, rtol).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {torch.float32: (1e-3, 0.0), torch.float64: (1e-6, 0.0)}


@dataclasses.dataclass(frozen=True)
class FbankConfig:
    """Options of the Kaldi filterbank (the subset STG-CMA varies; everything else is Kaldi's default)."""

    num_mel_bins: int = 128
    frame_shift_ms: float = 10.0
    frame_length_ms: float = 25.0
    sample_rate: float = 16000.0
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0: offset from Nyquist
    preemphasis: float = 0.97
    remove_dc_offset: bool = True
    round_to_power_of_two: bool = True
    window_type: str = "hanning"

    def __post_init__(self) -> None:
        if self.window_type not in WINDOW_TYPES:
            raise ValueError(f"expected window_type in {WINDOW_TYPES}, got {self.window_type!r}")
        if self.num_mel_bins <= 3:
            raise ValueError(f"expected num_mel_bins > 3, got {self.num_mel_bins}")
        if self.window_shift <= 0 or self.window_size < 2:
            raise ValueError(f"expected a frame shift >= 1 sample and a frame >= 2 samples, got {self}")
        if self.padded_window_size % 2:
            raise ValueError(f"the padded window ({self.padded_window_size} samples) must be even")
        if not 0.0 <= self.preemphasis <= 1.0:
            raise ValueError(f"expected preemphasis in [0, 1], got {self.preemphasis}")

    @property
    def window_shift(self) -> int:
        """Frame shift in samples; same expression (and float rounding) as torchaudio."""
        return int(self.sample_rate * self.frame_shift_ms * 0.001)

    @property
    def window_size(self) -> int:
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def padded_window_size(self) -> int:
        n = self.window_size
        return 1 << (n - 1).bit_length() if self.round_to_power_of_two else n

    def num_frames(self, num_samples: int) -> int:
        """Frames produced from ``num_samples`` samples (``snip_edges=True``); 0 if shorter than one window."""
        if num_samples < self.window_size:
            return 0
        return 1 + (num_samples - self.window_size) // self.window_shift

    def samples_for_frames(self, num_frames: int) -> int:
        """Fewest samples that give ``num_frames`` frames."""
        return (num_frames - 1) * self.window_shift + self.window_size if num_frames > 0 else 0


def kaldi_mel_banks(
    num_bins: int, padded_window_size: int, sample_rate: float, low_freq: float, high_freq: float
) -> torch.Tensor:
    """Kaldi's triangular mel filterbank, (num_bins, padded_window_size // 2 + 1) float32, Nyquist column zero.

    The expressions of ``torchaudio.compliance.kaldi.get_mel_banks`` (no VTLN warping), evaluated in float32 as
    torchaudio evaluates them, so the matrix is bit-identical to torchaudio's (whose fp64 path also uses this fp32
    matrix).
    """
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(f"bad mel range: low_freq {low_freq}, high_freq {high_freq}, Nyquist {nyquist}")
    fft_bin_width = sample_rate / padded_window_size
    mel_low = 1127.0 * math.log(1.0 + low_freq / 700.0)
    mel_high = 1127.0 * math.log(1.0 + high_freq / 700.0)
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins).unsqueeze(1)  # int64, promoted to float32 below, as in torchaudio
    left, center, right = mel_low + b * delta, mel_low + (b + 1.0) * delta, mel_low + (b + 2.0) * delta
    freqs = fft_bin_width * torch.arange(padded_window_size // 2, dtype=torch.float32)
    mel = (1127.0 * (1.0 + freqs / 700.0).log()).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.max(torch.zeros(1), torch.min(up, down))
    return torch.nn.functional.pad(banks, (0, 1))


@functools.lru_cache(maxsize=32)
def _cached_mel_t(config: FbankConfig, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(padded // 2 + 1, num_mel_bins) transposed mel matrix; treat as read-only."""
    banks = kaldi_mel_banks(
        config.num_mel_bins, config.padded_window_size, config.sample_rate, config.low_freq, config.high_freq
    )
    return banks.to(dtype).t().contiguous().to(device)


@functools.lru_cache(maxsize=32)
def _cached_window(window_type: str, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(size,) symmetric analysis window built exactly as torchaudio builds it; treat as read-only."""
    if window_type == "hanning":
        return torch.hann_window(size, periodic=False, device=device, dtype=dtype)
    if window_type == "povey":
        return torch.hann_window(size, periodic=False, device=device, dtype=dtype).pow(0.85)
    if window_type == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46, device=device, dtype=dtype)
    return torch.ones(size, device=device, dtype=dtype)


def remove_mean_rows(waveforms: torch.Tensor) -> torch.Tensor:
    """(B, S) -> each row minus its own mean, the mean taken as a full reduction of that row.

    ``x - x.mean(dim=-1, keepdim=True)`` rounds differently from the authors' per-clip ``wave - wave.mean()`` (a
    row-wise reduction sums in another order), and that last-bit difference is visible in mel bins near the fp32
    floor; one full reduction per row reproduces the per-clip result exactly.
    """
    means = torch.stack([row.mean() for row in waveforms.reshape(-1, waveforms.shape[-1])])
    return waveforms - means.reshape(*waveforms.shape[:-1], 1)


def kaldi_fbank(
    waveforms: torch.Tensor, config: FbankConfig | None = None, remove_mean: bool = True
) -> torch.Tensor:
    """Log-mel filterbank of a batch of waveforms.

    Args:
        waveforms: (B, S) or (S,) samples at ``config.sample_rate`` (any float dtype; fp16/bf16 computed in fp32).
        config: filterbank options; default :class:`FbankConfig` (128 bins, 10 ms shift, 25 ms Hanning window).
        remove_mean: subtract each waveform's own mean first (what the STG-CMA loaders do before calling
            torchaudio; see :func:`remove_mean_rows`). A constant offset is removed again by the per-frame DC
            removal, so this only changes rounding.

    Returns:
        (B, frames, num_mel_bins) (or (frames, num_mel_bins) for a 1-D input), float32 (float64 for float64 input),
        with ``frames = 1 + (S - window_size) // window_shift``.
    """
    config = config or FbankConfig()
    if waveforms.dim() not in (1, 2):
        raise ValueError(f"expected waveforms of shape (B, S) or (S,), got {tuple(waveforms.shape)}")
    if not waveforms.is_floating_point():
        raise ValueError(f"expected floating-point waveforms, got dtype {waveforms.dtype}")
    squeeze = waveforms.dim() == 1
    x = waveforms.unsqueeze(0) if squeeze else waveforms
    if x.shape[-1] < config.window_size:
        raise ValueError(
            f"expected at least {config.window_size} samples per waveform (one {config.frame_length_ms} ms frame), "
            f"got shape {tuple(waveforms.shape)}"
        )
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(dtype)
    if remove_mean:
        x = remove_mean_rows(x)

    frames = x.unfold(-1, config.window_size, config.window_shift)  # (B, m, window_size), a strided view
    if config.remove_dc_offset:
        frames = frames - frames.mean(dim=-1, keepdim=True)
    if config.preemphasis != 0.0:
        previous = torch.cat((frames[..., :1], frames[..., :-1]), dim=-1)
        frames = frames - config.preemphasis * previous
    frames = frames * _cached_window(config.window_type, config.window_size, x.device, dtype)
    if config.padded_window_size != config.window_size:
        frames = torch.nn.functional.pad(frames, (0, config.padded_window_size - config.window_size))

    power = torch.fft.rfft(frames).abs().pow(2.0)  # (B, m, padded // 2 + 1)
    batch, num_frames, num_bins = power.shape
    mel = torch.mm(power.reshape(batch * num_frames, num_bins), _cached_mel_t(config, x.device, dtype))
    out = torch.clamp_min(mel, EPSILON).log().reshape(batch, num_frames, config.num_mel_bins)
    return out[0] if squeeze else out
