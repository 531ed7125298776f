"""Synthetic datasets in the exact on-disk formats of AVE, AVSBench-S4 and MUSIC-AVQA (the default: no downloads).

Every class (an AVE event, an S4 category, an AVQA instrument) has

- a visual motif, deterministic from its index: one of 4 shapes (disc, square, triangle, cross) in one of
  ``ceil(count / 4)`` saturated hues (:func:`class_motif`), drawn over a grey, slowly varying noise background and
  moving along a small circle;
- a sound, deterministic from its index: a two-tone chord with fundamental ``180 * 2 ** (index / 8)`` Hz (180 Hz ..
  1.9 kHz for the 28 AVE classes, below 8 kHz Nyquist at 16 kHz) whose amplitude is modulated at 0, 3 or 6 Hz
  (:func:`class_sound`), over a quiet white-noise floor.

AVE (:func:`synth_ave`): an event is drawn AND heard only during its seconds ``[start, end)``; background seconds hold
neither (grey noise and the noise floor), so the per-second labels are learnable from both modalities. With
``distractor_prob > 0`` a background second may instead show the motif silently or play the sound invisibly
(AVE's definition of background: not audible AND visible), so only a model that looks and listens gets it right.
Layout, as in the released ``AVE_Dataset`` folder::

    <out>/AVE/<VideoID>.mp4 (H.264 + AAC) or .mkv (VP9 + Opus)
    <out>/Annotations.txt, trainSet.txt, valSet.txt, testSet.txt   (Category&VideoID&Quality&StartTime&EndTime)

The annotation files are written like the real ones: no header, ``\\n`` line ends, no newline after the last line,
clips grouped by category in class order. Video ids are 11 characters from YouTube's id alphabet.

AVSBench-S4 (:func:`synth_avs_s4`) and MUSIC-AVQA (:func:`synth_avqa`) are smaller: see their docstrings.
Everything is deterministic for a seed (PyAV's encoders are deterministic for fixed options).
"""

from __future__ import annotations

import colorsys
import csv
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import av
import numpy as np

from stgcma_fast.cli_args import check_float, check_int, check_writable_dir
from stgcma_fast.data.ave import AVE_CATEGORIES, CLIP_SECONDS, per_second_labels
from stgcma_fast.data.avqa import ANSWERS
from stgcma_fast.data.avs import AVS_S4_CATEGORIES, S4_NUM_FRAMES

SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "cross")
YOUTUBE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
DEFAULT_SIZE = 128
DEFAULT_FPS = 8
DEFAULT_AUDIO_RATE = 16000
NOISE_FLOOR = 0.01  # standard deviation of the background noise of every synthetic soundtrack
TONE_AMPLITUDE = 0.25


@dataclasses.dataclass(frozen=True)
class Codec:
    """A video codec / container / audio codec triple PyAV writes."""

    video: str
    suffix: str
    audio: str
    options: tuple[tuple[str, str], ...]


CODECS: dict[str, Codec] = {
    "h264": Codec("libx264", ".mp4", "aac", (("preset", "ultrafast"), ("crf", "18"), ("tune", "fastdecode"))),
    "vp9": Codec("libvpx-vp9", ".mkv", "libopus", (("deadline", "realtime"), ("cpu-used", "8"), ("crf", "20"),
                                                     ("b", "0"), ("row-mt", "1"))),
    "vp9-webm": Codec("libvpx-vp9", ".webm", "libopus", (("deadline", "realtime"), ("cpu-used", "8"), ("crf", "20"),
                                                           ("b", "0"), ("row-mt", "1"))),
}


def _codec(name: str) -> Codec:
    if name not in CODECS:
        raise ValueError(f"expected codec in {sorted(CODECS)}, got {name!r}")
    return CODECS[name]


# ----------------------------------------------------------------------------------------------- motifs and sounds


@dataclasses.dataclass(frozen=True)
class Motif:
    """A class's visual motif: a filled ``shape`` in colour ``rgb`` (0..255)."""

    shape: str
    rgb: tuple[int, int, int]

    def mask(self, height: int, width: int, cx: float, cy: float, radius: float) -> np.ndarray:
        """(height, width) bool: the shape centred at pixel (cx, cy) with half-size ``radius``."""
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        dx, dy = (x + 0.5 - cx) / radius, (y + 0.5 - cy) / radius
        if self.shape == "disc":
            return dx * dx + dy * dy <= 1.0
        if self.shape == "square":
            return (np.abs(dx) <= 0.8) & (np.abs(dy) <= 0.8)
        if self.shape == "triangle":
            return (dy <= 0.8) & (dy >= -1.0 + 2.0 * np.abs(dx))
        if self.shape == "cross":
            return ((np.abs(dx) <= 0.3) & (np.abs(dy) <= 1.0)) | ((np.abs(dy) <= 0.3) & (np.abs(dx) <= 1.0))
        raise ValueError(f"expected shape in {SHAPES}, got {self.shape!r}")


def class_motif(index: int, count: int = len(AVE_CATEGORIES)) -> Motif:
    """Motif of class ``index`` of ``count``: shape ``index % 4``, hue ``(index // 4) / ceil(count / 4)``."""
    if not 0 <= index < count:
        raise ValueError(f"expected a class index in [0, {count}), got {index}")
    hues = max(1, math.ceil(count / len(SHAPES)))
    r, g, b = colorsys.hsv_to_rgb((index // len(SHAPES)) / hues, 0.9, 1.0)
    return Motif(SHAPES[index % len(SHAPES)], (round(r * 255), round(g * 255), round(b * 255)))


@dataclasses.dataclass(frozen=True)
class Sound:
    """A class's sound: a chord of ``freqs`` (Hz), amplitude-modulated at ``am_hz`` (0 = steady)."""

    freqs: tuple[float, ...]
    am_hz: float

    def render(self, num_samples: int, rate: int, amplitude: float = TONE_AMPLITUDE, offset: int = 0) -> np.ndarray:
        """(num_samples,) float32, starting at sample ``offset`` of the sound (keeps phase across calls)."""
        t = (np.arange(num_samples, dtype=np.float64) + offset) / rate
        wave = sum(np.sin(2 * np.pi * f * t) for f in self.freqs) / len(self.freqs)
        if self.am_hz > 0:
            wave = wave * (0.6 + 0.4 * np.sin(2 * np.pi * self.am_hz * t))
        return (amplitude * wave).astype(np.float32)


def class_sound(index: int) -> Sound:
    """Sound of class ``index``: fundamental ``180 * 2 ** (index / 8)`` Hz plus a fifth (odd index) or a major third
    (even index); AM at ``(0, 3, 6)[index % 3]`` Hz."""
    if index < 0:
        raise ValueError(f"expected a class index >= 0, got {index}")
    f0 = 180.0 * 2.0 ** (index / 8.0)
    return Sound((f0, f0 * (1.5 if index % 2 else 1.25)), (0.0, 3.0, 6.0)[index % 3])


def fundamental(index: int) -> float:
    """The fundamental frequency (Hz) of :func:`class_sound` ``(index)``: the strongest spectral peak."""
    return class_sound(index).freqs[0]


# ----------------------------------------------------------------------------------------------- rendering


def _fade(mask: np.ndarray, rate: int, ms: float = 10.0) -> np.ndarray:
    """Smooth a 0/1 per-sample gate with ``ms`` raised-cosine ramps (no clicks at event borders)."""
    n = max(1, int(rate * ms / 1000))
    kernel = np.hanning(2 * n + 1)
    return np.convolve(mask.astype(np.float64), kernel / kernel.sum(), mode="same")


def render_soundtrack(
    gates: Sequence[tuple[Sound, np.ndarray, float]], num_samples: int, rate: int, rng: np.random.Generator
) -> np.ndarray:
    """Sum of gated sounds over the noise floor: each gate is (sound, (num_samples,) 0/1 mask, amplitude).

    Returns (num_samples,) float32 in [-1, 1].
    """
    wave = rng.normal(0.0, NOISE_FLOOR, num_samples)
    for sound, gate, amplitude in gates:
        if gate.any():
            wave += sound.render(num_samples, rate, amplitude) * _fade(gate, rate)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def second_gate(seconds: Sequence[bool], rate: int) -> np.ndarray:
    """Per-second flags -> (len(seconds) * rate,) per-sample 0/1 mask."""
    return np.repeat(np.asarray(seconds, dtype=np.float64), rate)


class Canvas:
    """Grey background texture of one clip (smooth, deterministic) plus per-frame noise; draws motifs on it."""

    def __init__(self, height: int, width: int, rng: np.random.Generator) -> None:
        self.height, self.width, self.rng = height, width, rng
        coarse = rng.uniform(96.0, 144.0, (height // 16 + 2, width // 16 + 2))
        ys = np.linspace(0, coarse.shape[0] - 1.001, height)
        xs = np.linspace(0, coarse.shape[1] - 1.001, width)
        y0, x0 = ys.astype(int), xs.astype(int)
        wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
        c = coarse
        smooth = ((1 - wy) * (1 - wx) * c[y0][:, x0] + (1 - wy) * wx * c[y0][:, x0 + 1]
                  + wy * (1 - wx) * c[y0 + 1][:, x0] + wy * wx * c[y0 + 1][:, x0 + 1])
        self.background = np.repeat(smooth[:, :, None], 3, axis=2)

    def frame(self, motifs: Sequence[tuple[Motif, float, float, float]]) -> np.ndarray:
        """(H, W, 3) uint8: the background, mild noise, and each (motif, cx, cy, radius) in pixels."""
        img = self.background + self.rng.normal(0.0, 3.0, (self.height, self.width, 1))
        for motif, cx, cy, radius in motifs:
            img[motif.mask(self.height, self.width, cx, cy, radius)] = motif.rgb
        return np.clip(np.round(img), 0, 255).astype(np.uint8)


def orbit(t: float, cx: float, cy: float, span: float, phase: float, period: float = 5.0) -> tuple[float, float]:
    """Position at time ``t`` on a circle of radius ``span`` around (cx, cy): motifs move, like video should."""
    angle = 2 * np.pi * t / period + phase
    return cx + span * math.cos(angle), cy + span * math.sin(angle)


def write_av_clip(
    path: str | Path,
    frames: np.ndarray | Callable[[int], np.ndarray],
    num_frames: int,
    audio: np.ndarray | None,
    fps: int = DEFAULT_FPS,
    audio_rate: int = DEFAULT_AUDIO_RATE,
    codec: str = "h264",
) -> Path:
    """Encode a clip with PyAV: ``num_frames`` RGB frames (an (N, H, W, 3) uint8 array or ``i -> (H, W, 3)``) at
    ``fps`` with codec ``codec`` (see :data:`CODECS`), and, unless ``audio`` is None, a mono (S,) float32 track at
    ``audio_rate``. The container follows ``path``'s suffix. Video and audio are interleaved per second; the muxer
    runs bit-exact, so the same inputs give the same bytes."""
    spec = _codec(codec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    get = frames if callable(frames) else frames.__getitem__
    first = get(0)
    height, width = first.shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"expected even frame sizes for yuv420p, got {height} x {width}")
    with av.open(str(path), "w", container_options={"fflags": "+bitexact"}) as container:  # no random UIDs
        vstream = container.add_stream(spec.video, rate=fps)
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        vstream.options = {**dict(spec.options), "g": str(fps)}
        astream = None
        if audio is not None:
            astream = container.add_stream(spec.audio, rate=audio_rate)
            astream.layout = "mono"
        done = 0  # audio samples muxed so far
        for i in range(num_frames):
            image = first if i == 0 else get(i)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            container.mux(vstream.encode(frame))
            if astream is not None and ((i + 1) % fps == 0 or i == num_frames - 1):
                upto = len(audio) if i == num_frames - 1 else min(len(audio), (i + 1) * audio_rate // fps)
                if upto > done:
                    chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, done:upto], dtype=np.float32),
                                                       format="flt", layout="mono")
                    chunk.sample_rate = audio_rate
                    container.mux(astream.encode(chunk))
                    done = upto
        container.mux(vstream.encode(None))
        if astream is not None:
            container.mux(astream.encode(None))
    return path


# ----------------------------------------------------------------------------------------------- AVE


@dataclasses.dataclass(frozen=True)
class SynthAveClip:
    """One synthetic AVE clip: its annotation fields, split and file."""

    video_id: str
    category: str
    start: int
    end: int
    split: str
    path: Path

    @property
    def class_index(self) -> int:
        return AVE_CATEGORIES.index(self.category)

    @property
    def labels(self) -> tuple[int, ...]:
        return per_second_labels(self.class_index, self.start, self.end)

    def line(self) -> str:
        """``Category&VideoID&good&StartTime&EndTime``."""
        return f"{self.category}&{self.video_id}&good&{self.start}&{self.end}"


def video_ids(count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct 11-character YouTube-style ids (never starting with ``-``, which confuses command lines)."""
    ids: list[str] = []
    seen: set[str] = set()
    alphabet = np.array(list(YOUTUBE_ALPHABET))
    while len(ids) < count:
        chars = rng.choice(alphabet, 11)
        vid = "".join(chars)
        if vid[0] != "-" and vid not in seen:
            seen.add(vid)
            ids.append(vid)
    return ids


def split_names(count: int, fractions: tuple[float, float, float], rng: np.random.Generator) -> list[str]:
    """A shuffled assignment of ``count`` items to train / val / test (each non-empty when ``count >= 3``)."""
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"expected 3 non-negative split fractions (train, val, test), got {fractions}")
    total = sum(fractions)
    n_val = round(count * fractions[1] / total)
    n_test = round(count * fractions[2] / total)
    if count >= 3:
        n_val, n_test = max(n_val, 1 if fractions[1] else 0), max(n_test, 1 if fractions[2] else 0)
    n_val, n_test = min(n_val, count), min(n_test, count - min(n_val, count))
    names = ["val"] * n_val + ["test"] * n_test + ["train"] * (count - n_val - n_test)
    return [names[i] for i in rng.permutation(count)]


def ave_clip_media(
    class_index: int,
    start: int,
    end: int,
    rng: np.random.Generator,
    size: int = DEFAULT_SIZE,
    fps: int = DEFAULT_FPS,
    audio_rate: int = DEFAULT_AUDIO_RATE,
    seconds: int = CLIP_SECONDS,
    distractor_prob: float = 0.0,
) -> tuple[Callable[[int], np.ndarray], int, np.ndarray, tuple[bool, ...], tuple[bool, ...]]:
    """Render one AVE clip: returns (frame function ``i -> (size, size, 3) uint8``, number of frames,
    (seconds * audio_rate,) float32 audio, per-second visible flags, per-second audible flags)."""
    motif, sound = class_motif(class_index), class_sound(class_index)
    event = [start <= s < end for s in range(seconds)]
    visible, audible = list(event), list(event)
    for s in range(seconds):
        if not event[s] and rng.random() < distractor_prob:
            (visible if rng.random() < 0.5 else audible)[s] = True
    canvas = Canvas(size, size, rng)
    phase = float(rng.uniform(0, 2 * np.pi))

    def frame(i: int) -> np.ndarray:
        t = i / fps
        if not visible[min(int(t), seconds - 1)]:
            return canvas.frame([])
        cx, cy = orbit(t, size / 2, size / 2, 0.12 * size, phase)
        return canvas.frame([(motif, cx, cy, 0.25 * size)])

    audio = render_soundtrack([(sound, second_gate(audible, audio_rate), TONE_AMPLITUDE)], seconds * audio_rate,
                              audio_rate, rng)
    return frame, seconds * fps, audio, tuple(visible), tuple(audible)


def write_ave_annotations(path: str | Path, clips: Sequence[SynthAveClip]) -> Path:
    """Write clips as the real files are written: class order, no header, no newline after the last line."""
    path = Path(path)
    ordered = sorted(clips, key=lambda c: c.class_index)  # stable: keeps the generation order within a class
    path.write_text("\n".join(c.line() for c in ordered), encoding="utf-8")
    return path


def synth_ave(
    out: str | Path,
    clips: int,
    codec: str = "h264",
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    fps: int = DEFAULT_FPS,
    audio_rate: int = DEFAULT_AUDIO_RATE,
    num_classes: int = len(AVE_CATEGORIES),
    distractor_prob: float = 0.0,
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    full_event_prob: float = 0.25,
    progress: Callable[[int, int], None] | None = None,
) -> list[SynthAveClip]:
    """Write a synthetic AVE dataset to ``out`` (layout in the module doc); returns the clips in generation order.

    Args:
        clips: number of clips; classes cycle through a seeded permutation of the first ``num_classes`` categories,
            so any ``num_classes`` consecutive clips cover distinct classes.
        codec: ``"h264"`` (.mp4, AAC audio), ``"vp9"`` (.mkv, Opus) or ``"vp9-webm"`` (.webm, Opus).
        size, fps: square frame size (even) and frame rate; every clip lasts exactly 10 s (``10 * fps`` frames).
        full_event_prob: probability that an event spans all 10 s (as in about half of the real clips); otherwise
            ``start`` is uniform in 0..9 and ``end`` uniform in start+1..10.
        distractor_prob: see the module doc (0: the motif and the sound occur only in event seconds).
        progress: called as ``progress(done, total)`` after each clip.
    """
    check_int("clips", clips, 1)  # every argument before anything is written (sizes even for yuv420p)
    check_int("num_classes", num_classes, 1, len(AVE_CATEGORIES))
    check_int("seed", seed, 0)
    check_int("size", size, 16, 4096, even=True)
    check_int("fps", fps, 1)
    check_int("audio_rate", audio_rate, 8000, 192000)
    check_float("distractor_prob", distractor_prob, 0, 1)
    check_float("full_event_prob", full_event_prob, 0, 1)
    split_names(0, splits, np.random.default_rng(0))  # checks the fractions
    if progress is not None and not callable(progress):
        raise ValueError(f"expected progress to be callable or None, got {progress!r} ({type(progress).__name__})")
    spec = _codec(codec)
    out = check_writable_dir("out", out)
    (out / "AVE").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = video_ids(clips, rng)
    order = rng.permutation(num_classes)
    splits_of = split_names(clips, splits, rng)
    result: list[SynthAveClip] = []
    for i, vid in enumerate(ids):
        class_index = int(order[i % num_classes])
        if rng.random() < full_event_prob:
            start, end = 0, CLIP_SECONDS
        else:
            start = int(rng.integers(0, CLIP_SECONDS))
            end = int(rng.integers(start + 1, CLIP_SECONDS + 1))
        clip_rng = np.random.default_rng([seed, i])
        frame, n, audio, _, _ = ave_clip_media(class_index, start, end, clip_rng, size, fps, audio_rate,
                                               distractor_prob=distractor_prob)
        path = write_av_clip(out / "AVE" / f"{vid}{spec.suffix}", frame, n, audio, fps, audio_rate, codec)
        result.append(SynthAveClip(vid, AVE_CATEGORIES[class_index], start, end, splits_of[i], path))
        if progress is not None:
            progress(i + 1, clips)
    write_ave_annotations(out / "Annotations.txt", result)
    for split, name in (("train", "trainSet.txt"), ("val", "valSet.txt"), ("test", "testSet.txt")):
        write_ave_annotations(out / name, [c for c in result if c.split == split])
    return result


# ----------------------------------------------------------------------------------------------- AVSBench-S4


def _write_png(path: Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) RGB or (H, W) grey uint8 image as PNG with PyAV's encoder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "rgb24" if image.ndim == 3 else "gray"
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], fmt
        container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=fmt)))
        container.mux(stream.encode(None))


@dataclasses.dataclass(frozen=True)
class SynthS4Clip:
    """One synthetic AVSBench-S4 clip: the sounding object's category, the silent distractor's (or None), split."""

    name: str
    category: str
    distractor: str | None
    split: str


def synth_avs_s4(
    out: str | Path,
    clips: int,
    seed: int = 0,
    size: int = 64,
    audio_rate: int = DEFAULT_AUDIO_RATE,
    distractor_prob: float = 0.5,
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> list[SynthS4Clip]:
    """Write a synthetic AVSBench-S4 set under ``out`` (the ``Single-source`` folder)::

        <out>/s4_meta_data.csv                                         name,start,category,split
        <out>/s4_data/visual_frames/<split>/<category>/<name>/<name>_<k>.png   k = 1..5, RGB size x size
        <out>/s4_data/audio_wav/<split>/<category>/<name>.wav                  5 s, 16-bit, audio_rate
        <out>/s4_data/gt_masks/<split>/<category>/<name>/<name>_<k>.png        0 / 255, k = 1 (train) or 1..5

    Each clip shows the sounding object (its category's motif) and, with ``distractor_prob``, a silent object of
    another category; the mask covers the sounding object only and the wav plays only its sound, so segmenting the
    right object needs the audio. Readable with :func:`stgcma_fast.data.avs.s4_records` (``root=<out>/s4_data``).
    """
    from stgcma_fast.data.audio_io import write_audio

    check_int("clips", clips, 1)
    check_int("seed", seed, 0)
    check_int("size", size, 16, 4096)
    check_int("audio_rate", audio_rate, 8000, 192000)
    check_float("distractor_prob", distractor_prob, 0, 1)
    split_names(0, splits, np.random.default_rng(0))  # checks the fractions
    out = check_writable_dir("out", out)
    root = out / "s4_data"
    rng = np.random.default_rng(seed)
    count = len(AVS_S4_CATEGORIES)
    splits_of = split_names(clips, splits, rng)
    result: list[SynthS4Clip] = []
    for i in range(clips):
        name = "".join(video_ids(1, rng)) + f"_{i}"
        cat = int(rng.integers(count))
        other = int((cat + rng.integers(1, count)) % count) if rng.random() < distractor_prob else None
        split = splits_of[i]
        clip_rng = np.random.default_rng([seed, 1, i])
        canvas = Canvas(size, size, clip_rng)
        left = bool(clip_rng.random() < 0.5)
        xs = (0.3 * size, 0.7 * size) if left else (0.7 * size, 0.3 * size)
        category = AVS_S4_CATEGORIES[cat]
        frame_dir = root / "visual_frames" / split / category / name
        mask_dir = root / "gt_masks" / split / category / name
        for k in range(1, S4_NUM_FRAMES + 1):
            cy = size * (0.45 + 0.05 * math.sin(k))
            objects = [(class_motif(cat, count), xs[0], cy, 0.18 * size)]
            if other is not None:
                objects.append((class_motif(other, count), xs[1], size - cy, 0.18 * size))
            _write_png(frame_dir / f"{name}_{k}.png", canvas.frame(objects))
            if split != "train" or k == 1:
                mask = objects[0][0].mask(size, size, xs[0], cy, 0.18 * size).astype(np.uint8) * 255
                _write_png(mask_dir / f"{name}_{k}.png", mask)
        wave = render_soundtrack([(class_sound(cat), np.ones(S4_NUM_FRAMES * audio_rate), TONE_AMPLITUDE)],
                                 S4_NUM_FRAMES * audio_rate, audio_rate, clip_rng)
        write_audio(root / "audio_wav" / split / category / f"{name}.wav", wave, audio_rate)
        result.append(SynthS4Clip(name, category, None if other is None else AVS_S4_CATEGORIES[other], split))
    with (out / "s4_meta_data.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "start", "category", "split"])
        for clip in result:
            writer.writerow([clip.name, 0, clip.category, clip.split])
    return result


# ----------------------------------------------------------------------------------------------- MUSIC-AVQA

AVQA_INSTRUMENTS: tuple[str, ...] = (
    "accordion", "acoustic_guitar", "bagpipe", "banjo", "bassoon", "cello", "clarinet", "congas", "drum",
    "electric_bass", "erhu", "flute", "guzheng", "piano", "pipa", "saxophone", "suona", "trumpet", "tuba", "ukulele",
    "violin", "xylophone",
)
"""The 22 instruments of MUSIC-AVQA (all are answers in :data:`~stgcma_fast.data.avqa.ANSWERS`)."""
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three")


@dataclasses.dataclass(frozen=True)
class Player:
    """An instrument in a synthetic AVQA scene: where it is, when it sounds (seconds [start, end)), how loud."""

    instrument: str
    side: str  # "left" | "right"
    start: int
    end: int
    loudness: float

    @property
    def sounds(self) -> bool:
        return self.end > self.start


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def avqa_questions(players: Sequence[Player], seconds: int, rng: np.random.Generator) -> list[tuple[list[str], str,
                                                                                                    list[str], str]]:
    """Questions about a scene from real MUSIC-AVQA templates with their correct answers:
    a list of ([modality, kind], template, values, answer)."""
    names = [p.instrument for p in players]
    sounding = [p for p in players if p.sounds]
    absent = next(x for x in rng.permutation(AVQA_INSTRUMENTS) if x not in names)
    asked = str(rng.choice(names + [absent]))
    qs: list[tuple[list[str], str, list[str], str]] = [
        (["Audio", "Counting"], "Is there a <Object> sound?", [asked],
         _yes(any(p.instrument == asked and p.sounds for p in players))),
        (["Audio", "Counting"], "How many musical instruments were heard throughout the video?", [],
         NUMBER_WORDS[len({p.instrument for p in sounding})]),
        (["Visual", "Counting"], "Is there a <Object> in the entire video?", [asked], _yes(asked in names)),
        (["Visual", "Counting"], "How many types of musical instruments appeared in the entire video?", [],
         NUMBER_WORDS[len(set(names))]),
        (["Audio-Visual", "Counting"], "How many instruments are sounding in the video?", [],
         NUMBER_WORDS[len(sounding)]),
        (["Audio-Visual", "Existential"], "Is the <Object> in the video always playing?", [players[0].instrument],
         _yes(players[0].start == 0 and players[0].end == seconds)),
    ]
    if len(players) == 1:
        qs.append((["Visual", "Location"], "What kind of musical instrument is it?", [], players[0].instrument))
    else:
        a, b = players[0], players[1]
        qs.append((["Visual", "Location"], "What is the instrument on the <LR> of <Object>?",
                   [b.side, a.instrument], b.instrument))
        qs.append((["Visual", "Counting"], "Are there <Object> and <Object> instruments in the video?",
                   [a.instrument, asked], _yes(asked in names)))
        if a.sounds and b.sounds:
            qs.append((["Audio", "Comparative"], "Is the <Object> louder than the <Object>?",
                       [a.instrument, b.instrument], _yes(a.loudness > b.loudness)))
            qs.append((["Audio-Visual", "Comparative"],
                       "Is the instrument on the <LR> louder than the instrument on the <LR>?",
                       [a.side, b.side], _yes(a.loudness > b.loudness)))
            if a.start != b.start:
                first = a if a.start < b.start else b
                qs.append((["Audio-Visual", "Temporal"], "Where is the <FL> sounding instrument?", ["first"],
                           first.side))
                qs.append((["Audio-Visual", "Temporal"], "What is the <TH> instrument that comes in?", ["first"],
                           first.instrument))
            if (a.end - a.start) != (b.end - b.start):
                qs.append((["Audio", "Comparative"], "Is the <Object> playing longer than the <Object>?",
                           [a.instrument, b.instrument], _yes(a.end - a.start > b.end - b.start)))
    bad = [answer for _, _, _, answer in qs if answer not in ANSWERS]
    if bad:
        raise ValueError(f"expected answers among the 42 MUSIC-AVQA answers, got {bad}")
    return qs


def synth_avqa(
    out: str | Path,
    videos: int,
    codec: str = "h264",
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    fps: int = DEFAULT_FPS,
    seconds: int = CLIP_SECONDS,
    audio_rate: int = DEFAULT_AUDIO_RATE,
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> dict[str, list[dict]]:
    """Write a synthetic MUSIC-AVQA set: ``<out>/videos/<8-digit id>.mp4`` and ``<out>/avqa-{train,val,test}.json``.

    Each video shows one or two instruments (their motifs, left / right halves); each sounds during its own
    interval with its own loudness. Questions come from real MUSIC-AVQA templates (see :func:`avqa_questions`) with
    the correct answers, in the official JSON format (``type`` and ``templ_values`` as JSON-encoded strings, the
    answer under ``anser``). Returns the question lists per split.
    """
    check_int("videos", videos, 1)
    check_int("seed", seed, 0)
    check_int("size", size, 16, 4096, even=True)
    check_int("fps", fps, 1)
    check_int("seconds", seconds, 2)
    check_int("audio_rate", audio_rate, 8000, 192000)
    split_names(0, splits, np.random.default_rng(0))  # checks the fractions
    spec = _codec(codec)
    out = check_writable_dir("out", out)
    rng = np.random.default_rng(seed)
    count = len(AVQA_INSTRUMENTS)
    splits_of = split_names(videos, splits, rng)
    per_split: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    question_id = 0
    for i in range(videos):
        vid = f"{i + 1:08d}"
        picks = rng.choice(count, size=int(rng.integers(1, 3)), replace=False)
        sides = ["left", "right"] if rng.random() < 0.5 else ["right", "left"]
        players = []
        for j, idx in enumerate(picks):
            silent = len(picks) == 2 and rng.random() < 0.2
            start = 0 if rng.random() < 0.4 else int(rng.integers(0, seconds - 1))
            end = start if silent else (seconds if rng.random() < 0.5 else int(rng.integers(start + 1, seconds + 1)))
            players.append(Player(AVQA_INSTRUMENTS[idx], sides[j], start, end, float(rng.choice([0.1, 0.3]))))
        clip_rng = np.random.default_rng([seed, 2, i])
        canvas = Canvas(size, size, clip_rng)

        def frame(n: int, players: list[Player] = players, canvas: Canvas = canvas) -> np.ndarray:
            objects = []
            for p in players:
                cx = size * (0.27 if p.side == "left" else 0.73)
                bob = 0.05 * size * math.sin(2 * np.pi * n / fps) if p.start <= n / fps < p.end else 0.0
                objects.append((class_motif(AVQA_INSTRUMENTS.index(p.instrument), count), cx, size / 2 + bob,
                                0.2 * size))
            return canvas.frame(objects)

        gates = [(class_sound(AVQA_INSTRUMENTS.index(p.instrument)),
                  second_gate([p.start <= s < p.end for s in range(seconds)], audio_rate), p.loudness)
                 for p in players]
        audio = render_soundtrack(gates, seconds * audio_rate, audio_rate, clip_rng)
        write_av_clip(out / "videos" / f"{vid}{spec.suffix}", frame, seconds * fps, audio, fps, audio_rate, codec)
        for qtype, template, values, answer in avqa_questions(players, seconds, clip_rng):
            per_split[splits_of[i]].append({
                "video_id": vid, "question_id": question_id, "type": json.dumps(qtype),
                "question_content": template, "templ_values": json.dumps(values), "question_deleted": 0,
                "anser": answer,
            })
            question_id += 1
    for split, items in per_split.items():
        (out / f"avqa-{split}.json").write_text(json.dumps(items, indent=1), encoding="utf-8")
    return per_split

