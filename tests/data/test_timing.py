"""Media timing: every frame and every audio segment comes from the second it stands for.

The clips encode the time in their content (tests/data/synth_media.py): each frame shows the colour of the second of
the video timeline it is on screen in, and the audio plays the tone of the second it sounds in. Each test reads the
second back from every sampled frame and from every quarter of every audio segment.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from stgcma_fast.data.audio_io import MediaError, decode_audio
from stgcma_fast.data.loader import AveDataset
from stgcma_fast.data.prepare import prepare_audio
from stgcma_fast.data.synth import write_av_clip
from stgcma_fast.data.video import (
    FrameSettings,
    VideoInfo,
    apply_orientation,
    decode_frames,
    frame_indices,
    load_frames,
    probe_video,
    sample_indices,
    sample_times,
)
from tests.data.synth_media import (
    TIMED_RATE,
    cfr_times,
    second_of_frame,
    second_of_segment,
    vfr_times,
    write_timed_clip,
)

SECONDS = 10
SMALL = FrameSettings(num_frames=SECONDS, crop_size=32, resize_shorter=32, min_seconds=SECONDS)
CASES = {  # name: write_timed_clip arguments
    "cfr-8fps": {},
    "cfr-odd-12.5fps": {"times": cfr_times(12.5)},
    "vfr-15-then-30fps": {"times": vfr_times()},
    "vfr-30-then-15fps": {"times": [i / 30 for i in range(150)] + [5 + i / 15 for i in range(75)]},
    "audio-0.5s-late": {"audio": (0.5, 10.5)},
    "audio-0.5s-early": {"audio": (-0.5, 10.0)},
    "vfr-and-late-audio": {"times": vfr_times(), "audio": (0.5, 10.2)},
    "video-starts-at-1.25s": {"video_start": 1.25},
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("timed")
    return {(codec, name): write_timed_clip(root / f"{codec}-{name}".replace(".", "_"), codec, **kwargs)
            for codec in ("h264", "vp9") for name, kwargs in CASES.items()}


def frame_seconds(frames: torch.Tensor) -> list[int]:
    return [second_of_frame(f) for f in frames.numpy()]


def quarter_seconds(wave: torch.Tensor) -> list[list[int]]:
    """The second each quarter of each 1 s segment plays (-100: silent)."""
    q = TIMED_RATE // 4
    return [[second_of_segment(wave[m * TIMED_RATE + k * q: m * TIMED_RATE + (k + 1) * q]) for k in range(4)]
            for m in range(len(wave) // TIMED_RATE)]


def expected_quarters(name: str, got: list[list[int]]) -> list[list[int]]:
    """Quarter k of segment m plays second m; when the audio starts 0.5 s late, the first quarter is silent and the
    second holds the codec's start (AAC's priming frame decodes to the tone's pre-echo): either is accepted."""
    want = [[m] * 4 for m in range(SECONDS)]
    if CASES[name].get("audio", (0.0,))[0] > 0:
        want[0][:2] = [-100, got[0][1] if got[0][1] in (-100, 0) else -100]
    return want


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_every_frame_comes_from_its_second(clips, codec, name):
    path = clips[codec, name]
    frames, indices, info = decode_frames(path, SECONDS, SMALL)
    assert frames.shape == (SECONDS, 32, 32, 3)
    assert frame_seconds(frames) == list(range(SECONDS)), f"{path.name}: frames {indices} of {info.num_frames}"
    assert info.seconds == pytest.approx(SECONDS, abs=0.04), "the video's length comes from its timestamps"
    times = CASES[name].get("times", cfr_times(8))
    assert [float(t) for t in info.times] == pytest.approx(times, abs=1e-3)
    assert load_frames(path, SMALL).shape == (SECONDS, 3, 32, 32), "the loader's entry point takes the same path"


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_frames_by_index_would_miss_on_a_variable_rate(clips, codec):
    """The clip is one that picking by index gets wrong (so the test above can fail); read with FFmpeg's own
    decode of every frame in display order."""
    path = clips[codec, "vfr-15-then-30fps"]
    with av.open(str(path)) as container:
        seconds = [second_of_frame(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    info = probe_video(path)
    assert len(seconds) == info.num_frames == 225
    assert [seconds[i] for i in frame_indices(info, SECONDS)] == list(range(SECONDS))
    by_index = [seconds[i] for i in sample_indices(225, SECONDS)]
    assert by_index == [0, 2, 3, 5, 5, 6, 7, 8, 8, 9], "by index, 8 of 10 frames come from the wrong second"


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_every_audio_segment_comes_from_its_second(clips, codec, name):
    path = clips[codec, name]
    wave = decode_audio(path, seconds=SECONDS)
    assert wave.shape == (SECONDS * TIMED_RATE,)
    got = quarter_seconds(wave)
    assert got == expected_quarters(name, got), path.name
    if CASES[name].get("audio", (0.0,))[0] > 0:
        pad = round(0.4 * TIMED_RATE)  # the padding, less the codec's start (AAC: 1024 priming samples)
        assert float(wave[:pad].abs().max()) == 0.0, "the time before the audio starts is zeros"
        assert float(wave[pad:].abs().max()) > 0.25


def test_unaligned_audio_is_shifted(clips):
    """``align=False`` reads the track as it starts: the late track's segments then straddle two seconds."""
    wave = decode_audio(clips["h264", "audio-0.5s-late"], seconds=SECONDS, align=False)
    assert quarter_seconds(wave)[1] == [1, 1, 2, 2]


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_prepare_writes_audio_on_the_video_timeline(clips, codec, tmp_path):
    root = tmp_path / "ave"
    names = ["audio-0.5s-late", "audio-0.5s-early", "vfr-and-late-audio"]
    ids = [f"timed{k:06d}" for k in range(len(names))]
    for vid, name in zip(ids, names):
        (root / "AVE").mkdir(parents=True, exist_ok=True)
        (root / "AVE" / f"{vid}{clips[codec, name].suffix}").write_bytes(clips[codec, name].read_bytes())
    (root / "Annotations.txt").write_text("\n".join(f"Bark&{vid}&good&0&10" for vid in ids))
    report = prepare_audio(root)
    assert sorted(report.written) == ids and not report.failed, str(report)
    for vid, name in zip(ids, names):
        wav = decode_audio(root / "audio_wav" / f"{vid}.wav")
        assert wav.shape == (SECONDS * TIMED_RATE,)
        got = quarter_seconds(wav)
        assert got == expected_quarters(name, got), f"{vid} ({name})"
    dataset = AveDataset(root, "all", frames=SMALL)
    for k in range(len(ids)):
        item = dataset[k]
        assert frame_seconds(item["video"].permute(0, 2, 3, 1).mul(255 * torch.tensor(SMALL.std)).add(
            255 * torch.tensor(SMALL.mean)).round().clamp(0, 255).to(torch.uint8)) == list(range(SECONDS))
        got = quarter_seconds(item["waveform"])
        assert got == expected_quarters(names[k], got)


# ------------------------------------------------------------------------------------------------- orientation
@pytest.mark.parametrize("codec", ["h264", "vp9"])
@pytest.mark.parametrize(
    "kwargs, shape, corner",
    [
        ({}, (32, 48), "top-left"),
        ({"rotation": 90}, (48, 32), "bottom-left"),  # counter-clockwise: the top-left corner goes down
        ({"rotation": 180}, (32, 48), "bottom-right"),
        ({"rotation": 270}, (48, 32), "top-right"),
        ({"rotation": 0, "hflip": True}, (32, 48), "top-right"),
    ],
)
def test_display_rotation_is_applied(codec, kwargs, shape, corner, tmp_path):
    path = write_timed_clip(tmp_path / "rot", codec, size=(32, 48), marker=True, audio=None, **kwargs)
    frames, _, info = decode_frames(path, SECONDS, SMALL)
    assert frames.shape == (SECONDS, *shape, 3) and (info.width, info.height) == (48, 32)
    assert all(marker_corner(f) == corner for f in frames.numpy()), [marker_corner(f) for f in frames.numpy()]
    assert frame_seconds(frames) == list(range(SECONDS))
    assert probe_video(path, orientation=True).orientation == info.orientation


def test_legacy_rotate_tag_is_applied(tmp_path):
    """Matroska files remuxed by an old FFmpeg carry ``rotate`` as a tag (clockwise degrees), no display matrix."""
    path = write_timed_clip(tmp_path / "tag", "vp9", size=(32, 48), marker=True, audio=None, rotate_tag="90")
    frames, _, info = decode_frames(path, SECONDS, SMALL)
    assert frames.shape == (SECONDS, 48, 32, 3) and marker_corner(frames[0].numpy()) == "top-right"


def marker_corner(frame: np.ndarray) -> str:
    ys, xs = np.nonzero((frame > 235).all(-1))
    assert len(ys) > 20, "the white marker is visible"
    vertical = "top" if ys.mean() < frame.shape[0] / 2 else "bottom"
    return f"{vertical}-{'left' if xs.mean() < frame.shape[1] / 2 else 'right'}"


@pytest.mark.parametrize("orientation", [(1, 0, 0, 1), (0, -1, 1, 0), (-1, 0, 0, -1), (0, 1, -1, 0), (-1, 0, 0, 1),
                                         (1, 0, 0, -1), (0, 1, 1, 0), (0, -1, -1, 0)])
def test_apply_orientation_maps_every_pixel_as_the_display_matrix_says(orientation):
    frames = torch.arange(2 * 3 * 5 * 1).reshape(2, 3, 5, 1)
    out = apply_orientation(frames, orientation)
    a, b, c, d = orientation
    ys, xs = np.mgrid[0:3, 0:5]
    x2, y2 = a * xs + c * ys, b * xs + d * ys
    x2, y2 = x2 - x2.min(), y2 - y2.min()
    want = torch.zeros(2, y2.max() + 1, x2.max() + 1, 1, dtype=frames.dtype)
    want[:, y2, x2] = frames[:, ys, xs]
    assert torch.equal(out, want)


# ------------------------------------------------------------------------------------------------- sampling rule
@pytest.mark.parametrize("total", [10, 11, 40, 80, 299, 300, 301, 1001])
@pytest.mark.parametrize("num_frames", [1, 7, 10])
def test_time_sampling_equals_index_sampling_for_a_constant_rate(total, num_frames):
    from fractions import Fraction

    fps = Fraction(30000, 1001)
    info = VideoInfo(total, float(fps), 8, 8, "h264", times=tuple(i / fps for i in range(total)), duration=total / fps)
    assert frame_indices(info, num_frames) == sample_indices(total, num_frames)
    assert sample_times(10, 10)[0] == Fraction(1, 2) and sample_times(10, 10)[-1] == Fraction(19, 2)


# ------------------------------------------------------------------------------------------------- reported errors
def test_a_gap_between_frames_is_reported(tmp_path):
    times = [t for t in cfr_times(8) if not 3.0 <= t < 4.25]
    path = write_timed_clip(tmp_path / "gap", "vp9", times=times, audio=None)
    with pytest.raises(MediaError, match=r"no frame from 2\.88 s to 4\.25 s \(a gap of 1\.38 s > max_gap_seconds 0\.5")\
            as info:
        decode_frames(path, SECONDS, SMALL)
    assert info.value.path == path
    relaxed = FrameSettings(num_frames=SECONDS, crop_size=32, resize_shorter=32, max_gap_seconds=None)
    assert decode_frames(path, SECONDS, relaxed)[0].shape == (SECONDS, 32, 32, 3)


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_a_jump_in_audio_timestamps_is_reported(codec, tmp_path):
    path = write_timed_clip(tmp_path / "jump", codec, audio_jump=0.5)
    with pytest.raises(MediaError, match=r"audio corrupt: its timestamps jump from 5\.\d\d s to 5\.\d\d s") as info:
        decode_audio(path, seconds=SECONDS)
    assert info.value.path == path


def noisy_clip(path: Path, codec: str) -> Path:
    frames = np.random.default_rng(0).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    return write_av_clip(path, frames, 40, None, fps=4, codec=codec)


def flip_bytes(path: Path, count: int = 20, seed: int = 1) -> None:
    """XOR ``count`` bytes in the middle third of the file (inside packets: the container stays readable)."""
    data = bytearray(path.read_bytes())
    for pos in np.random.default_rng(seed).integers(len(data) // 3, 2 * len(data) // 3, count):
        data[pos] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_h264_bit_flips_are_reported_by_the_decoder(seed, tmp_path):
    path = noisy_clip(tmp_path / "flip.mp4", "h264")
    flip_bytes(path, seed=seed)
    with pytest.raises(MediaError, match=r"cannot decode video frame \d+ \(InvalidDataError|reports video frame \d+ "
                                         r"corrupt") as info:
        decode_frames(path, SECONDS, FrameSettings(num_frames=SECONDS, crop_size=32, resize_shorter=32))
    assert info.value.path == path


def test_vp9_bit_flips_decode_without_error(tmp_path):
    """The documented limit (docs/media.md): VP9 has no checksums, so damage inside a packet decodes silently."""
    path = noisy_clip(tmp_path / "flip.mkv", "vp9")
    clean = decode_frames(path, SECONDS, FrameSettings(num_frames=SECONDS, crop_size=32, resize_shorter=32))[0]
    flip_bytes(path)
    damaged = decode_frames(path, SECONDS, FrameSettings(num_frames=SECONDS, crop_size=32, resize_shorter=32))[0]
    assert damaged.shape == clean.shape and not torch.equal(damaged, clean)
