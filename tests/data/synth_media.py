"""Synthetic media shared by the video / loader / DALI / synth / timing tests, built once per test session.

The test modules import :func:`synth_dataset` and call it from their own fixtures with pytest's session-scoped
``tmp_path_factory``; the datasets are cached here by their parameters, so each is encoded once per process however
many modules use it. Clips are tiny (64 px, 4 fps, 10 s) to keep the suite fast on a 2-core CPU machine.

Timed clips (:func:`write_timed_clip`) encode the time in their content: every frame is a solid colour that names
the second of the video timeline it is shown in (:func:`second_colour`, read back by :func:`second_of_frame`), and
the audio plays a tone per second of that timeline (:func:`second_tone`, read back by :func:`second_of_segment`).
Frame times, the audio's start against the video and the display rotation are set through the timestamps and the
display matrix, as real files carry them.
"""

from __future__ import annotations

import colorsys
import shutil
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from stgcma_fast.data.ave import read_ave_annotations
from stgcma_fast.data.synth import SynthAveClip, ave_clip_media, synth_ave, write_av_clip

SIZE = 64
FPS = 4
_CACHE: dict[tuple, tuple[Path, list[SynthAveClip]]] = {}
_DAMAGED: dict[str, tuple[Path, dict[str, str], list[str]]] = {}


def synth_dataset(factory: pytest.TempPathFactory, codec: str = "vp9", clips: int = 6, seed: int = 0,
                  num_classes: int = 28) -> tuple[Path, list[SynthAveClip]]:
    """(root, clips) of a synthetic AVE set; do not modify it (copy it with :func:`copy_dataset` first)."""
    key = (codec, clips, seed, num_classes)
    if key not in _CACHE:
        root = factory.mktemp(f"ave_{codec}_{clips}_{seed}")
        _CACHE[key] = (root, synth_ave(root, clips, codec=codec, seed=seed, size=SIZE, fps=FPS,
                                       num_classes=num_classes))
    return _CACHE[key]


def copy_dataset(root: Path, dest: Path) -> Path:
    """A private copy of a synthetic dataset that a test may damage."""
    shutil.copytree(root, dest)
    return dest


def corrupt_middle(path: Path) -> None:
    """Overwrite a third of the file from its middle with a constant byte (the demuxer loses sync there)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    data[start: start + len(data) // 3] = bytes([7]) * (len(data) // 3)
    path.write_bytes(bytes(data))


def truncate(path: Path, fraction: float = 0.5) -> None:
    """Keep only the first ``fraction`` of the file's bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def garbage(path: Path, size: int = 4000) -> None:
    """Replace the file by random bytes (no container can open it)."""
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())


def damaged_dataset(factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], list[str]]:
    """A copy of the 6-clip VP9 set with 4 bad clips: missing, garbage, truncated, too short (4 s).

    Returns (root, {bad id: expected reason fragment}, good ids in annotation order).
    """
    if "vp9" not in _DAMAGED:
        root = copy_dataset(synth_dataset(factory, "vp9", clips=6)[0], factory.mktemp("damaged") / "ave")
        clips = read_ave_annotations(root / "Annotations.txt")
        video = {c.video_id: root / "AVE" / f"{c.video_id}.mkv" for c in clips}
        bad = {clips[0].video_id: "file not found", clips[2].video_id: "cannot open video",
               clips[3].video_id: "truncated or corrupt", clips[5].video_id: "too short"}
        video[clips[0].video_id].unlink()
        garbage(video[clips[2].video_id])
        truncate(video[clips[3].video_id])
        frame, _, audio, _, _ = ave_clip_media(1, 0, 4, np.random.default_rng(0), size=SIZE, fps=FPS, seconds=4)
        write_av_clip(video[clips[5].video_id], frame, 4 * FPS, audio, fps=FPS, codec="vp9")
        _DAMAGED["vp9"] = (root, bad, [c.video_id for c in clips if c.video_id not in bad])
    return _DAMAGED["vp9"]


# ----------------------------------------------------------------------------------------------- timed clips
TIMED_RATE = 16000  # audio sample rate of the timed clips (AAC and Opus both take it)
TIMED_CODECS: dict[str, tuple[str, str, str]] = {"h264": ("libx264", "aac", ".mp4"),
                                                  "vp9": ("libvpx-vp9", "libopus", ".mkv")}
_SECONDS = range(-1, 12)  # second -1: time before the video starts (early audio); 10, 11: after it ends


def second_colour(second: int) -> np.ndarray:
    """The RGB uint8 colour of a frame shown in ``second`` (-1 .. 11): 13 hues 27.7 degrees apart, far apart after
    YUV 4:2:0 coding."""
    r, g, b = colorsys.hsv_to_rgb(((second + 1) % 13) / 13, 1.0, 0.9)
    return np.array([round(255 * r), round(255 * g), round(255 * b)], np.uint8)


def second_of_frame(frame: np.ndarray | torch.Tensor) -> int:
    """The second whose colour is nearest to the median colour of an (H, W, 3) RGB frame."""
    median = np.median(np.asarray(frame).reshape(-1, 3).astype(np.float64), axis=0)
    return min(_SECONDS, key=lambda s: float(np.abs(second_colour(s) - median).sum()))


def second_tone(second: int) -> float:
    """The frequency (Hz) of the tone played in ``second`` (-1 .. 11): 500 Hz + 250 Hz per second."""
    return 500.0 + 250.0 * (second + 1)


def second_of_segment(segment: np.ndarray | torch.Tensor, rate: int = TIMED_RATE) -> int:
    """The second whose tone is nearest to the dominant frequency of a mono segment (S,); -100 when it is silent."""
    x = np.asarray(segment, np.float64)
    if np.abs(x).max() < 1e-3:
        return -100
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    hz = float(np.argmax(spectrum)) * rate / len(x)
    return min(_SECONDS, key=lambda s: abs(second_tone(s) - hz))


def cfr_times(fps: float, seconds: float = 10.0) -> list[float]:
    """Frame times of a constant frame rate."""
    return [i / fps for i in range(round(fps * seconds))]


def vfr_times() -> list[float]:
    """15 fps for 5 s, then 30 fps for 5 s (225 frames): frames by index would land on the wrong seconds."""
    return [i / 15 for i in range(75)] + [5 + i / 30 for i in range(150)]


def write_timed_clip(
    path: Path,
    codec: str = "h264",
    times: Sequence[float] | None = None,
    size: tuple[int, int] = (32, 32),
    audio: tuple[float, float] | None = (0.0, 10.0),
    video_start: float = 0.0,
    rotation: float | None = None,
    hflip: bool = False,
    rotate_tag: str | None = None,
    marker: bool = False,
    audio_jump: float = 0.0,
) -> Path:
    """A clip whose content encodes the time (see the module doc).

    Args:
        codec: ``"h264"`` (H.264 + AAC in mp4) or ``"vp9"`` (VP9 + Opus in Matroska); the suffix follows it.
        times: presentation time of every frame on the video timeline (default 8 fps over 10 s); each frame shows
            the colour of its second. Timestamps in 1/90000 s.
        size: (H, W), even.
        audio: (start, end) of the audio track on the video timeline (start < 0: the audio starts before the video,
            written by starting the VIDEO at ``-start`` in the file, since mp4 drops negative audio times); each
            sample plays the tone of its second. None: no audio.
        video_start: the file time of the first video frame.
        rotation, hflip: display matrix (counter-clockwise degrees, mirror), as phones write it.
        rotate_tag: a legacy ``rotate`` stream tag instead (clockwise degrees).
        marker: paint the stored frame's top-left 8 x 8 pixels white (to see where a rotation moves it).
        audio_jump: shift the timestamps of the audio's second half by this many seconds (a gap, as lost packets
            leave).
    """
    vcodec, acodec, suffix = TIMED_CODECS[codec]
    path = Path(path).with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    times = cfr_times(8) if times is None else times
    if audio is not None and audio[0] < 0:
        video_start += -audio[0]
    tick = Fraction(1, 90000)
    with av.open(str(path), "w") as container:  # both streams are added before the first packet is muxed
        vstream = container.add_stream(vcodec, rate=round(1 / min(np.diff(times), default=1.0)))  # the top rate
        vstream.height, vstream.width = size
        vstream.pix_fmt, vstream.time_base, vstream.codec_context.time_base = "yuv420p", tick, tick
        vstream.options = {"g": "8", **({"deadline": "realtime", "cpu-used": "8"} if codec == "vp9" else {})}
        if rotation is not None or hflip:
            vstream.set_display_rotation(rotation or 0, hflip=hflip)
        if rotate_tag is not None:
            vstream.metadata["rotate"] = rotate_tag
        astream = container.add_stream(acodec, rate=TIMED_RATE) if audio is not None else None
        packets = []
        for t in times:
            image = np.broadcast_to(second_colour(int(np.floor(t + 1e-9))), (*size, 3)).copy()
            if marker:
                image[:8, :8] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = round((video_start + t) / tick), tick
            packets += vstream.encode(frame)
        packets += vstream.encode(None)
        if astream is not None and audio is not None:
            astream.layout = "mono"
            start, end = audio
            n = round((end - start) * TIMED_RATE)
            t = start + np.arange(n) / TIMED_RATE
            tones = np.array([second_tone(int(s)) for s in np.floor(t + 1e-9)])
            wave = (0.3 * np.sin(2 * np.pi * tones * t)).astype(np.float32)
            first = round((video_start + start) * TIMED_RATE)
            audio_packets = []
            for s in range(0, n, 1600):
                chunk = av.AudioFrame.from_ndarray(wave[None, s: s + 1600], format="flt", layout="mono")
                chunk.sample_rate, chunk.pts, chunk.time_base = TIMED_RATE, first + s, Fraction(1, TIMED_RATE)
                audio_packets += astream.encode(chunk)
            for packet in [*audio_packets, *astream.encode(None)]:
                if audio_jump and packet.pts * packet.time_base >= Fraction(first + n // 2, TIMED_RATE):
                    shift = round(audio_jump / packet.time_base)
                    packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
                packets.append(packet)
        for packet in packets:
            container.mux(packet)
    return path
