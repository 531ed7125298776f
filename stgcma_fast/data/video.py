"""Video frames for STG-CMA with PyAV: decode, sample M frames uniformly, resize, crop, normalise.

Conventions (the DALI pipeline in :mod:`stgcma_fast.data.dali` uses the same ones, and a test checks the parity):

- Frame count ``N``: the number of video packets with data (:func:`probe_video`, a demux without decoding; one
  packet is one displayed frame for H.264, HEVC, VP8/VP9 superframes and MJPEG). If decoding yields a different
  number of frames, the decoded count wins (and the sampling is redone).
- Uniform sampling: frame ``m`` of ``M`` is the frame with index ``floor((m + 0.5) * N / M)``
  (:func:`sample_indices`), i.e. the frame shown at ``t = (m + 0.5) * duration / M`` for a constant frame rate. For
  AVE's 10 s clips and M = 10 that is one frame per second, from the middle of each second, so frame m pairs with
  audio second m.
- Colour: yuv420p is converted to RGB here, in torch, exactly as DALI's decoders do it (BT.601 limited range,
  chroma upsampled bilinearly with centred siting, rounded to uint8); yuvj420p uses the full-range formula; other
  pixel formats go through FFmpeg's ``rgb24`` conversion.
- Evaluation transform: resize so the SHORTER side is ``resize_shorter`` (the longer side ``round(L * s / S)``),
  bilinear with antialiasing when shrinking (``F.interpolate(mode="bilinear", antialias=True)``, the triangle filter
  DALI's ``INTERP_LINEAR`` + ``antialias`` applies; DALI runs with ``subpixel_scale=False`` so both use
  ``in / out`` as the scale), then a centre crop of ``crop_size`` (offset ``(L - crop + 1) // 2``, DALI's
  rounding), then ``(x / 255 - mean) / std`` per channel. Output (M, 3, crop, crop) float32.
- Training transform: one random resized crop per clip (the same window for every frame; area and aspect ratio
  drawn as torchvision's ``RandomResizedCrop``) resized to ``crop_size``, and a horizontal flip with probability
  ``flip_prob``, from a ``torch.Generator`` so a (seed, epoch, index) triple fixes it whatever the worker count.
- Mean/std: CLIP's by default; :meth:`FrameSettings.from_timm` reads a backbone's from timm's ``pretrained_cfg``
  (no download). Resizing is bilinear, not the bicubic of timm's configs, because DALI's GPU path is bilinear.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from stgcma_fast.data.audio_io import MediaError

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_DECODE_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError, ValueError, EOFError, IndexError)
# Tolerance of the parity between the PyAV path and DALI's CPU path on the normalised output: the colour conversion
# matches to 1 uint8 level (rounding), the resize to float rounding; 2/255 over the smallest std.
PARITY_ATOL: float = 2.0 / 255.0 / min(CLIP_STD)


@dataclasses.dataclass(frozen=True)
class FrameSettings:
    """How a clip becomes (M, 3, crop_size, crop_size): see the module doc.

    ``min_seconds``: a video shorter than ``min_seconds - tolerance_seconds`` (N / fps) is a :class:`MediaError`
    ("too short"); None checks only that N >= M.
    """

    num_frames: int = 10
    crop_size: int = 224
    resize_shorter: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    min_seconds: float | None = None
    tolerance_seconds: float = 0.25
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.crop_size < 1 or self.resize_shorter < self.crop_size:
            raise ValueError(f"expected num_frames >= 1 and resize_shorter >= crop_size >= 1, got num_frames="
                             f"{self.num_frames}, resize_shorter={self.resize_shorter}, crop_size={self.crop_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"expected 3 means and 3 positive stds, got mean={self.mean}, std={self.std}")

    @classmethod
    def from_timm(cls, model_name: str, use_crop_pct: bool = False, **overrides: object) -> FrameSettings:
        """Mean, std and input size from timm's ``pretrained_cfg`` of ``model_name`` (e.g.
        ``"vit_base_patch16_clip_quickgelu_224.openai"``); nothing is downloaded. With ``use_crop_pct`` the shorter
        side is resized to ``floor(size / crop_pct)`` as timm's eval transform does (248 for CLIP's 0.9); by default
        to the crop size, as OpenAI's CLIP preprocessing does."""
        import timm

        cfg = timm.models.get_pretrained_cfg(model_name)
        if cfg is None:
            raise ValueError(f"timm has no pretrained_cfg for {model_name!r}")
        size = int(cfg.input_size[-1])
        resize = math.floor(size / cfg.crop_pct) if use_crop_pct and cfg.crop_pct else size
        values = {"crop_size": size, "resize_shorter": resize, "mean": tuple(cfg.mean), "std": tuple(cfg.std)}
        return cls(**{**values, **overrides})


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns without decoding: frame count (packets), rate, size, codec."""

    num_frames: int
    fps: float
    width: int
    height: int
    codec: str
    declared_seconds: float | None = None  # the stream's (else the container's) declared duration

    @property
    def seconds(self) -> float:
        """Duration as ``num_frames / fps``."""
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def sample_indices(total: int, num_frames: int) -> list[int]:
    """Indices of ``num_frames`` frames sampled uniformly from ``total``: ``floor((m + 0.5) * total / num_frames)``."""
    if total < num_frames or num_frames < 1:
        raise ValueError(f"expected total >= num_frames >= 1, got total={total}, num_frames={num_frames}")
    return [((2 * m + 1) * total) // (2 * num_frames) for m in range(num_frames)]


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise MediaError(path, "file not found")
    if path.stat().st_size == 0:
        raise MediaError(path, "empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except _DECODE_ERRORS as exc:
        raise MediaError(path, f"cannot open video ({type(exc).__name__}: {exc})") from exc
    if not container.streams.video:
        container.close()
        raise MediaError(path, "no video stream")
    return container


def _rate(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _declared_seconds(container: av.container.InputContainer) -> float | None:
    stream = container.streams.video[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration else None


def _info(container: av.container.InputContainer, num_frames: int) -> VideoInfo:
    stream = container.streams.video[0]
    ctx = stream.codec_context
    return VideoInfo(num_frames, _rate(stream), ctx.width, ctx.height, ctx.name, _declared_seconds(container))


def _demux(container: av.container.InputContainer, path: Path) -> list[av.Packet]:
    stream = container.streams.video[0]
    try:
        return [packet for packet in container.demux(stream) if packet.size > 0]
    except _DECODE_ERRORS as exc:
        raise MediaError(path, f"cannot read video packets ({type(exc).__name__}: {exc})") from exc


def probe_video(path: str | Path) -> VideoInfo:
    """Count the frames of ``path``'s first video stream by demuxing (no decoding); :class:`MediaError` if the file
    is missing, empty, unreadable or has no video stream or no frame."""
    path = Path(path)
    with _open(path) as container:
        info = _info(container, len(_demux(container, path)))
    if info.num_frames == 0:
        raise MediaError(path, "the video stream has no frames")
    return info


def check_length(info: VideoInfo, settings: FrameSettings, path: str | Path) -> None:
    """:class:`MediaError` when the video has fewer than M frames, is shorter than ``settings.min_seconds``, or its
    frames cover less than its declared duration (a truncated or corrupt file: the demuxer stops early)."""
    slack = settings.tolerance_seconds + (1.0 / info.fps if info.fps > 0 else 0.0)
    if info.declared_seconds is not None and info.seconds < info.declared_seconds - slack:
        raise MediaError(path, f"video truncated or corrupt: its frames cover {info.seconds:.2f} s ({info.num_frames} "
                               f"frames at {info.fps:g} fps), the file declares {info.declared_seconds:.2f} s")
    if info.num_frames < settings.num_frames:
        raise MediaError(path, f"video too short: {info.num_frames} frames, expected at least {settings.num_frames}")
    if settings.min_seconds is not None and info.seconds < settings.min_seconds - settings.tolerance_seconds:
        raise MediaError(path, f"video too short: {info.seconds:.2f} s ({info.num_frames} frames at {info.fps:g} fps), "
                               f"expected {settings.min_seconds:g} s (tolerance {settings.tolerance_seconds:g} s)")


def _plane(plane: av.video.plane.VideoPlane) -> np.ndarray:
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]


def _upsample2x(x: np.ndarray, axis: int) -> np.ndarray:
    """Double ``axis`` by bilinear interpolation with half-pixel centres (``align_corners=False``, edges clamped)."""
    first = np.take(x, [0], axis=axis)
    last = np.take(x, [x.shape[axis] - 1], axis=axis)
    prev = np.concatenate([first, np.take(x, range(x.shape[axis] - 1), axis=axis)], axis=axis)
    nxt = np.concatenate([np.take(x, range(1, x.shape[axis]), axis=axis), last], axis=axis)
    even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
    out = np.stack([even, odd], axis=axis + 1)
    return out.reshape(*x.shape[:axis], 2 * x.shape[axis], *x.shape[axis + 1:])


def frames_to_rgb(frames: Sequence[av.VideoFrame]) -> torch.Tensor:
    """Decoded frames (same size) -> (M, H, W, 3) uint8 RGB, converted as DALI converts (see the module doc).

    Computed in numpy (small per-clip arrays: torch's intra-op threads only add overhead here)."""
    name = frames[0].format.name
    if name not in ("yuv420p", "yuvj420p") or any(f.format.name != name for f in frames):
        return torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in frames]))
    y = np.stack([_plane(f.planes[0]) for f in frames]).astype(np.float32)
    uv = np.stack([np.stack([_plane(f.planes[1]), _plane(f.planes[2])]) for f in frames]).astype(np.float32)
    if uv.shape[-2] * 2 == y.shape[-2] and uv.shape[-1] * 2 == y.shape[-1]:  # (M, 2, H / 2, W / 2)
        uv = _upsample2x(_upsample2x(uv, 2), 3)
    else:  # odd sizes: chroma planes are ceil(H / 2) x ceil(W / 2)
        uv = F.interpolate(torch.from_numpy(uv), size=y.shape[-2:], mode="bilinear", align_corners=False).numpy()
    u, v = uv[:, 0] - np.float32(128.0), uv[:, 1] - np.float32(128.0)
    if name == "yuv420p":  # limited range
        y = (y - np.float32(16.0)) * np.float32(255.0 / 219.0)
        u, v = u * np.float32(255.0 / 224.0), v * np.float32(255.0 / 224.0)
    rgb = np.stack([y + np.float32(1.402) * v, y - np.float32(0.344136) * u - np.float32(0.714136) * v,
                    y + np.float32(1.772) * u], axis=-1)
    return torch.from_numpy(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))


def _decode_selected(packets: Sequence[av.Packet], codec_context: av.CodecContext, wanted: set[int], path: Path
                     ) -> tuple[dict[int, av.VideoFrame], int]:
    """Decode ``packets`` in order; keep the frames whose index is in ``wanted``; also the decoded frame count."""
    kept: dict[int, av.VideoFrame] = {}
    count = 0
    try:
        for packet in [*packets, None]:
            for frame in codec_context.decode(packet):
                if count in wanted:
                    kept[count] = frame
                count += 1
    except _DECODE_ERRORS as exc:
        raise MediaError(path, f"cannot decode video frame {count} ({type(exc).__name__}: {exc})") from exc
    return kept, count


def decode_frames(
    path: str | Path, num_frames: int, settings: FrameSettings | None = None, threads: int = 1
) -> tuple[torch.Tensor, list[int], VideoInfo]:
    """Decode the ``num_frames`` uniformly sampled frames of ``path``.

    Args:
        settings: if given, its length checks apply (:func:`check_length`).
        threads: FFmpeg decoder threads (keep 1 inside DataLoader workers).

    Returns:
        (M, H, W, 3) uint8 RGB frames, the sampled frame indices, and the :class:`VideoInfo` (its ``num_frames`` is
        the decoded count).
    """
    path = Path(path)
    settings = settings or FrameSettings(num_frames=num_frames)
    with _open(path) as container:
        stream = container.streams.video[0]
        packets = _demux(container, path)
        info = _info(container, len(packets))
        if info.num_frames == 0:
            raise MediaError(path, "the video stream has no frames")
        check_length(info, settings, path)
        indices = sample_indices(info.num_frames, num_frames)
        stream.codec_context.thread_count = threads
        kept, decoded = _decode_selected(packets, stream.codec_context, set(indices), path)
        if decoded != info.num_frames:  # the decoder disagrees with the packet count: trust the decoded frames
            info = dataclasses.replace(info, num_frames=decoded)
            check_length(info, settings, path)
            indices = sample_indices(decoded, num_frames)
            if not set(indices) <= kept.keys():
                ctx = av.CodecContext.create(stream.codec_context.name, "r")
                ctx.extradata = stream.codec_context.extradata
                kept, _ = _decode_selected(packets, ctx, set(indices), path)
    return frames_to_rgb([kept[i] for i in indices]), indices, info


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(h, w) with the shorter side = ``shorter`` and the longer ``round(longer * shorter / shorter_in)``."""
    if height <= width:
        return shorter, max(shorter, round(width * shorter / height))
    return max(shorter, round(height * shorter / width)), shorter


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(M, 3, H, W) float -> (M, 3, *size), bilinear, antialiased when shrinking."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator | None
) -> tuple[int, int, int, int]:
    """(top, left, h, w) drawn as torchvision's ``RandomResizedCrop.get_params`` (10 tries, then a centre crop)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
        aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def preprocess_frames(
    frames: torch.Tensor, settings: FrameSettings, train: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(M, H, W, 3) uint8 RGB -> (M, 3, crop, crop) float32 normalised (see the module doc for both modes)."""
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (M, H, W, 3), got {tuple(frames.shape)}")
    x = frames.permute(0, 3, 1, 2).to(torch.float32)
    height, width = x.shape[-2:]
    crop = settings.crop_size
    if train:
        top, left, h, w = random_resized_crop_box(height, width, settings.crop_scale, settings.crop_ratio, generator)
        x = _resize(x[..., top: top + h, left: left + w], (crop, crop))
        if float(torch.rand(1, generator=generator)) < settings.flip_prob:
            x = x.flip(-1)
    else:
        x = _resize(x, resized_size(height, width, settings.resize_shorter))
        top, left = (x.shape[-2] - crop + 1) // 2, (x.shape[-1] - crop + 1) // 2  # DALI rounds 0.5 up
        x = x[..., top: top + crop, left: left + crop]
    mean = torch.tensor(settings.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(settings.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return ((x - mean) / std).contiguous()


def load_frames(
    path: str | Path,
    settings: FrameSettings,
    train: bool = False,
    generator: torch.Generator | None = None,
    threads: int = 1,
) -> torch.Tensor:
    """Decode, sample, transform: ``path`` -> (M, 3, crop, crop) float32. :class:`MediaError` for missing, corrupt
    or too-short files."""
    frames, _, _ = decode_frames(path, settings.num_frames, settings, threads=threads)
    return preprocess_frames(frames, settings, train=train, generator=generator)
