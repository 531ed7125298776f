"""Video frames for STG-CMA with PyAV: decode, sample M frames uniformly, resize, crop, normalise.

Conventions (the DALI pipeline in :mod:`stgcma_fast.data.dali` uses the same ones, and a test checks the parity):

- Timeline: the video's own presentation timestamps (``pts * time_base``), counted from its first frame. Frame ``i``
  (display order) is on screen during ``[times[i], times[i + 1])``; the last one for its packet duration. The
  video's length is that timeline's (:attr:`VideoInfo.seconds`), not ``frames / header rate``, so a variable frame
  rate is timed right. A stream without usable timestamps is timed by its frame rate.
- Sampling: frame ``m`` of ``M`` is the frame on screen at ``t_m = (m + 0.5) * duration / M``
  (:func:`sample_times`, :func:`frame_indices`). For AVE's 10 s clips and M = 10 that is the middle of second m,
  the second audio segment m covers (:func:`~stgcma_fast.data.audio_io.decode_audio` places the audio on the same
  timeline). For a constant rate this is the frame ``floor((m + 0.5) * N / M)`` (:func:`sample_indices`).
- Orientation: frames are turned as the display matrix says (rotations by multiples of 90 degrees and mirrors; the
  legacy ``rotate`` tag when there is no matrix), so (M, H, W, 3) is the picture as a player shows it.
- Errors: everything FFmpeg reports is a :class:`~stgcma_fast.data.audio_io.MediaError` naming the file: open and
  demux errors, packets the demuxer flags corrupt, decode errors (decoders run with ``err_detect=crccheck+explode``)
  and frames the decoder marks corrupt; so are timelines that stop short of the declared duration or have a gap
  longer than ``max_gap_seconds``. Damage a decoder cannot see (a bit flipped inside a packet of a codec without
  checksums, e.g. VP9) decodes without error: see ``docs/media.md``.
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

import bisect
import dataclasses
import math
from collections.abc import Iterator, Sequence
from fractions import Fraction
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

    ``min_seconds``: a video whose timeline is shorter than ``min_seconds - tolerance_seconds`` is a
    :class:`MediaError` ("too short"); None checks only that N >= M. ``max_gap_seconds``: the longest time with no
    new frame before the video counts as corrupt (lost packets); at 0.5 s or less, frame m of a video of M seconds
    still comes from second m. None accepts any gap.
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
    max_gap_seconds: float | None = 0.5

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.crop_size < 1 or self.resize_shorter < self.crop_size:
            raise ValueError(f"expected num_frames >= 1 and resize_shorter >= crop_size >= 1, got num_frames="
                             f"{self.num_frames}, resize_shorter={self.resize_shorter}, crop_size={self.crop_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"expected 3 means and 3 positive stds, got mean={self.mean}, std={self.std}")
        gap = self.max_gap_seconds
        if gap is not None and (isinstance(gap, bool) or not isinstance(gap, (int, float)) or not gap > 0):
            raise ValueError(f"expected max_gap_seconds to be a number > 0 or None, got {self.max_gap_seconds!r} "
                             f"({type(self.max_gap_seconds).__name__})")

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
    """What :func:`probe_video` learns by demuxing (no decoding), and :func:`decode_frames` by decoding.

    ``times``: the presentation time of each frame in display order, in exact seconds from the first frame (the
    video timeline's origin); ``duration``: that timeline's length (the last frame's end). ``declared_seconds``: the
    video stream's declared duration; ``file_seconds``: the container's; ``reach_seconds``: how far the packets of
    all streams reach; ``start``: the first frame's presentation time; all three counted from where the file's
    declared durations count (the container's start time; timestamp 0 for Matroska).
    ``orientation``: the display matrix's 2x2 part ``(a, b, c, d)``
    snapped to a rotation by a multiple of 90 degrees and/or a mirror ((1, 0, 0, 1): none), None when not read.
    ``width`` / ``height`` are the coded (stored) size, before the orientation is applied.
    """

    num_frames: int
    fps: float
    width: int
    height: int
    codec: str
    declared_seconds: float | None = None
    times: tuple[Fraction, ...] = ()
    duration: Fraction | None = None
    start: Fraction = Fraction(0)
    file_seconds: float | None = None
    reach_seconds: float | None = None
    orientation: tuple[int, int, int, int] | None = None

    @property
    def seconds(self) -> float:
        """Length of the video timeline from its timestamps (``num_frames / fps`` when there are none)."""
        if self.duration is not None:
            return float(self.duration)
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def sample_indices(total: int, num_frames: int) -> list[int]:
    """Uniform indices for a CONSTANT frame rate: ``floor((m + 0.5) * total / num_frames)``. Videos are sampled by
    time (:func:`frame_indices`); for a constant rate both give the same frames."""
    if total < num_frames or num_frames < 1:
        raise ValueError(f"expected total >= num_frames >= 1, got total={total}, num_frames={num_frames}")
    return [((2 * m + 1) * total) // (2 * num_frames) for m in range(num_frames)]


def sample_times(duration: Fraction | float, num_frames: int) -> list[Fraction]:
    """The sampling times of ``num_frames`` frames over ``duration`` seconds: ``(m + 0.5) * duration / M``."""
    if num_frames < 1 or duration <= 0:
        raise ValueError(f"expected num_frames >= 1 and duration > 0, got num_frames={num_frames}, "
                         f"duration={float(duration)}")
    duration = Fraction(duration)
    return [(2 * m + 1) * duration / (2 * num_frames) for m in range(num_frames)]


def frame_indices(info: VideoInfo, num_frames: int) -> list[int]:
    """Display-order index of the frame ON SCREEN at each sampling time (:func:`sample_times` over
    ``info.duration``): the frame whose interval ``[times[i], times[i + 1])`` contains it."""
    if info.num_frames < num_frames or not info.times or info.duration is None:
        raise ValueError(f"expected a timed video with at least {num_frames} frames, got {info.num_frames} frames")
    return [max(0, bisect.bisect_right(info.times, t) - 1) for t in sample_times(info.duration, num_frames)]


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


def _rate(stream: av.video.stream.VideoStream) -> Fraction:
    return Fraction(stream.average_rate or stream.guessed_rate or stream.base_rate or 0)


def _tag_seconds(value: str | None) -> float | None:
    """Matroska's per-track ``DURATION`` tag, ``HH:MM:SS.fffffffff``, in seconds."""
    try:
        hours, minutes, seconds = (value or "").split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _declared_seconds(stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return _tag_seconds({k.lower(): v for k, v in stream.metadata.items()}.get("duration"))


def _timeline(pts: Sequence[int | None], durations: Sequence[int], time_base: Fraction | None, rate: Fraction,
              path: Path) -> tuple[tuple[Fraction, ...], Fraction, Fraction]:
    """(times from the first frame, duration, start) in seconds, from each frame's presentation timestamp; a stream
    without usable timestamps (one missing, or repeated) is timed by its rate."""
    n = len(pts)
    if time_base and all(p is not None for p in pts) and len(set(pts)) == n:
        order = sorted(range(n), key=pts.__getitem__)
        first = pts[order[0]]
        times = tuple((pts[i] - first) * time_base for i in order)
        last = durations[order[-1]]
        tail = last * time_base if last > 0 else times[-1] - times[-2] if n > 1 else 1 / rate if rate else Fraction(0)
        if times[-1] + tail <= 0:
            raise MediaError(path, "the video's one frame has no duration and the stream no frame rate")
        return times, times[-1] + tail, first * time_base
    if not rate:
        raise MediaError(path, "the video has neither usable timestamps nor a frame rate")
    return tuple(Fraction(i) / rate for i in range(n)), n / rate, Fraction(0)


def _demux(container: av.container.InputContainer, path: Path) -> tuple[list[av.Packet], float | None]:
    """The video stream's packets with data, and how far the packets of all streams reach (seconds from
    :func:`_origin`). A packet the demuxer flags corrupt is an error."""
    stream = container.streams.video[0]
    packets: list[av.Packet] = []
    reach: Fraction | None = None
    try:
        for packet in container.demux():
            if packet.size == 0:
                continue
            if packet.is_corrupt:
                raise MediaError(path, f"the demuxer flags a packet of stream {packet.stream.index} corrupt "
                                       f"(at {float(packet.pts * packet.time_base) if packet.pts else 0:.2f} s)")
            if packet.pts is not None and packet.time_base is not None:
                end = (packet.pts + max(packet.duration or 0, 0)) * packet.time_base
                reach = end if reach is None else max(reach, end)
            if packet.stream.index == stream.index:
                packets.append(packet)
    except _DECODE_ERRORS as exc:
        raise MediaError(path, f"cannot read video packets ({type(exc).__name__}: {exc})") from exc
    return packets, float(reach - _origin(container)) if reach is not None else None


def _origin(container: av.container.InputContainer) -> Fraction:
    """Where the file's declared durations count from: Matroska / WebM's from timestamp 0 (its Duration and
    per-track DURATION tags are end times), other formats' from the container's start time (FFmpeg's convention)."""
    if "matroska" in container.format.name:
        return Fraction(0)
    return Fraction(container.start_time or 0, av.time_base)


def _info(container: av.container.InputContainer, packets: Sequence[av.Packet], reach: float | None, path: Path
          ) -> VideoInfo:
    stream = container.streams.video[0]
    ctx = stream.codec_context
    rate = _rate(stream)
    if not packets:
        raise MediaError(path, "the video stream has no frames")
    times, duration, start = _timeline([p.pts for p in packets], [p.duration or 0 for p in packets],
                                       stream.time_base, rate, path)
    file_seconds = container.duration / av.time_base if container.duration else None
    return VideoInfo(len(packets), float(rate), ctx.width, ctx.height, ctx.name, _declared_seconds(stream), times,
                     duration, start - _origin(container), file_seconds, reach)


# The 2x2 part (a, b, c, d) of FFmpeg's display matrix maps a stored pixel (x, y) to (a x + c y, b x + d y).
IDENTITY: tuple[int, int, int, int] = (1, 0, 0, 1)


def _rotation_matrix(ccw_degrees: float) -> tuple[int, int, int, int]:
    """The display matrix of a counter-clockwise rotation, rounded to a multiple of 90 degrees."""
    quarter = round(ccw_degrees / 90) % 4
    cos, sin = (1, 0, -1, 0)[quarter], (0, 1, 0, -1)[quarter]
    return cos, -sin, sin, cos


def orientation_of(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> tuple[int, int, int, int]:
    """How ``frame`` must be turned for display: its display matrix side data (rotations by multiples of 90 degrees
    and mirrors exactly; another angle is rounded to the nearest multiple of 90), else the stream's legacy
    ``rotate`` tag (clockwise degrees), else :data:`IDENTITY`."""
    for side in frame.side_data:
        if side.type.name == "DISPLAYMATRIX":
            a, b, _, c, d = (np.frombuffer(bytes(side), "<i4")[:5] / 65536.0).tolist()
            snapped = tuple(round(v) for v in (a, b, c, d))
            exact = max(abs(v - s) for v, s in zip((a, b, c, d), snapped)) < 1e-3
            if exact and abs(snapped[0] * snapped[3] - snapped[1] * snapped[2]) == 1:
                return snapped  # type: ignore[return-value]
            return _rotation_matrix(frame.rotation)
    tag = {k.lower(): v for k, v in stream.metadata.items()}.get("rotate")
    try:
        return _rotation_matrix(-float(tag)) if tag else IDENTITY
    except ValueError:
        return IDENTITY


def apply_orientation(frames: torch.Tensor, orientation: tuple[int, int, int, int]) -> torch.Tensor:
    """(M, H, W, C) stored frames -> the displayed frames ((M, W, H, C) after a quarter turn), by the display
    matrix ``(a, b, c, d)``: the stored pixel (x, y) lands at (a x + c y, b x + d y), shifted into the image."""
    a, b, c, d = orientation
    if a == 0:  # a quarter turn: rows become columns (stored x -> displayed row, y -> column)
        out = frames.transpose(1, 2)
        row_sign, col_sign = b, c
    else:
        out, row_sign, col_sign = frames, d, a
    if row_sign < 0:
        out = out.flip(1)
    if col_sign < 0:
        out = out.flip(2)
    return out.contiguous() if out is not frames else frames


def probe_video(path: str | Path, orientation: bool = False) -> VideoInfo:
    """Demux ``path`` (no decoding) and time its video frames; with ``orientation`` also decode its first frame to
    read the display orientation. :class:`MediaError` if the file is missing, empty, unreadable or has no video
    stream or no frame."""
    path = Path(path)
    with _open(path) as container:
        packets, reach = _demux(container, path)
        info = _info(container, packets, reach, path)
        if orientation:
            stream = container.streams.video[0]
            frame = _first_frame(packets, stream, path)
            info = dataclasses.replace(info, orientation=orientation_of(frame, stream))
    return info


def check_length(info: VideoInfo, settings: FrameSettings, path: str | Path) -> None:
    """:class:`MediaError` when the video has fewer than M frames, is shorter than ``settings.min_seconds``, has a
    gap between frames longer than ``settings.max_gap_seconds`` (lost packets), or its packets stop short of the
    declared duration of the video stream or of the file (a truncated or corrupt file: the demuxer stops early)."""
    slack = settings.tolerance_seconds + (1.0 / info.fps if info.fps > 0 else 0.0)
    end = float(info.start) + info.seconds
    if info.declared_seconds is not None and end < info.declared_seconds - slack:
        raise MediaError(path, f"video truncated or corrupt: its {info.num_frames} frames cover {info.seconds:.2f} s "
                               f"(to {end:.2f} s), the video stream declares {info.declared_seconds:.2f} s")
    if info.file_seconds is not None and info.reach_seconds is not None and (
            info.reach_seconds < info.file_seconds - slack):
        raise MediaError(path, f"video truncated or corrupt: its packets reach {info.reach_seconds:.2f} s, the file "
                               f"declares {info.file_seconds:.2f} s")
    if settings.max_gap_seconds is not None and len(info.times) > 1:
        gaps = [b - a for a, b in zip(info.times, info.times[1:])]
        i = max(range(len(gaps)), key=gaps.__getitem__)
        if gaps[i] > settings.max_gap_seconds:
            raise MediaError(path, f"video truncated or corrupt: no frame from {float(info.times[i]):.2f} s to "
                                   f"{float(info.times[i + 1]):.2f} s (a gap of {float(gaps[i]):.2f} s > "
                                   f"max_gap_seconds {settings.max_gap_seconds:g})")
    if info.num_frames < settings.num_frames:
        raise MediaError(path, f"video too short: {info.num_frames} frames, expected at least {settings.num_frames}")
    if settings.min_seconds is not None and info.seconds < settings.min_seconds - settings.tolerance_seconds:
        raise MediaError(path, f"video too short: {info.seconds:.2f} s ({info.num_frames} frames), expected "
                               f"{settings.min_seconds:g} s (tolerance {settings.tolerance_seconds:g} s)")


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


def _decoder(stream: av.video.stream.VideoStream, threads: int = 1) -> av.CodecContext:
    """``stream``'s decoder (it carries the stream's side data, e.g. the display matrix, onto the frames), set to
    turn the errors FFmpeg detects into exceptions (``err_detect=crccheck+explode``: checksums verified, decoding
    aborted on an error it would otherwise conceal). Call it before the stream's first decode."""
    ctx = stream.codec_context
    ctx.options = {"err_detect": "crccheck+explode"}
    ctx.thread_count = threads
    return ctx


def _decoded(packets: Sequence[av.Packet], ctx: av.CodecContext, path: Path) -> Iterator[av.VideoFrame]:
    """Decode ``packets`` in order (then flush); every error FFmpeg reports is a :class:`MediaError`: a failed
    packet, or a frame the decoder marks corrupt."""
    count = 0
    try:
        for packet in [*packets, None]:
            for frame in ctx.decode(packet):
                if frame.is_corrupt:
                    raise MediaError(path, f"the decoder reports video frame {count} corrupt")
                count += 1
                yield frame
    except _DECODE_ERRORS as exc:
        raise MediaError(path, f"cannot decode video frame {count} ({type(exc).__name__}: {exc})") from exc


def _first_frame(packets: Sequence[av.Packet], stream: av.video.stream.VideoStream, path: Path) -> av.VideoFrame:
    for frame in _decoded(packets, _decoder(stream), path):
        return frame
    raise MediaError(path, "the video stream decodes to no frames")


def _select(packets: Sequence[av.Packet], stream: av.video.stream.VideoStream, wanted: set[int], threads: int,
            path: Path) -> tuple[dict[int, av.VideoFrame], list[int | None], list[int], tuple[int, int, int, int]]:
    """Decode every packet with ``stream``'s decoder (once per opened container); keep the frames whose display
    index is in ``wanted``. Also returns every decoded frame's pts and duration, and the first frame's
    orientation."""
    kept: dict[int, av.VideoFrame] = {}
    pts: list[int | None] = []
    durations: list[int] = []
    orientation = IDENTITY
    for i, frame in enumerate(_decoded(packets, _decoder(stream, threads), path)):
        if i == 0:
            orientation = orientation_of(frame, stream)
        if i in wanted:
            kept[i] = frame
        pts.append(frame.pts)
        durations.append(frame.duration or 0)
    return kept, pts, durations, orientation


def decode_frames(
    path: str | Path, num_frames: int, settings: FrameSettings | None = None, threads: int = 1
) -> tuple[torch.Tensor, list[int], VideoInfo]:
    """Decode the frames on screen at the ``num_frames`` sampling times of ``path`` (see the module doc), turned as
    the file's display orientation says.

    Args:
        settings: if given, its length checks apply (:func:`check_length`).
        threads: FFmpeg decoder threads (keep 1 inside DataLoader workers).

    Returns:
        (M, H, W, 3) uint8 RGB frames (H, W as displayed), their display-order indices, and the :class:`VideoInfo`
        (with the orientation read; timed by the decoded frames when they disagree with the packets).
    """
    path = Path(path)
    settings = settings or FrameSettings(num_frames=num_frames)
    with _open(path) as container:
        stream = container.streams.video[0]
        packets, reach = _demux(container, path)
        info = _info(container, packets, reach, path)
        check_length(info, settings, path)
        indices = frame_indices(info, num_frames)
        kept, pts, durations, orientation = _select(packets, stream, set(indices), threads, path)
        info = dataclasses.replace(info, orientation=orientation)
        if not pts:
            raise MediaError(path, "the video stream decodes to no frames")
        times, duration, start = _timeline(pts, durations, stream.time_base, _rate(stream), path)
        if times != info.times:  # the decoder disagrees with the demuxer (a frame lost or added): trust the decoder
            info = dataclasses.replace(info, num_frames=len(pts), times=times, duration=duration, start=start)
            check_length(info, settings, path)
            indices = frame_indices(info, num_frames)
            if not set(indices) <= kept.keys():  # decode again, with a fresh decoder
                with _open(path) as again:
                    stream = again.streams.video[0]
                    kept = _select(_demux(again, path)[0], stream, set(indices), threads, path)[0]
        frames = frames_to_rgb([kept[i] for i in indices])
    return apply_orientation(frames, orientation), indices, info
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
