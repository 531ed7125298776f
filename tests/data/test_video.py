"""PyAV video path: uniform sampling, colour conversion, resize / crop / normalise, and media errors."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from stgcma_fast.data.audio_io import MediaError
from stgcma_fast.data.synth import write_av_clip
from stgcma_fast.data.video import (
    CLIP_MEAN,
    CLIP_STD,
    FrameSettings,
    decode_frames,
    frames_to_rgb,
    load_frames,
    preprocess_frames,
    probe_video,
    resized_size,
    sample_indices,
)
from tests.data.synth_media import FPS, corrupt_middle, garbage, truncate


def test_sample_indices_uniform_mid_interval():
    assert sample_indices(80, 10) == [4, 12, 20, 28, 36, 44, 52, 60, 68, 76], "8 fps: the middle frame of each second"
    assert sample_indices(300, 10) == [15 + 30 * m for m in range(10)]
    assert sample_indices(299, 10) == [int((m + 0.5) * 299 / 10) for m in range(10)]
    assert sample_indices(10, 10) == list(range(10))
    assert sample_indices(7, 1) == [3]
    with pytest.raises(ValueError, match="total >= num_frames"):
        sample_indices(9, 10)


@pytest.mark.parametrize("codec", ["vp9", "h264"])
def test_decode_frames_picks_the_sampled_frames(codec, ave_vp9, ave_h264):
    root, clips = ave_vp9 if codec == "vp9" else ave_h264
    path = clips[0].path
    info = probe_video(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (10 * FPS, FPS, 64, 64)
    assert info.codec == codec and abs(info.seconds - 10.0) < 1e-6
    frames, indices, decoded = decode_frames(path, 10)
    assert frames.shape == (10, 64, 64, 3) and frames.dtype == torch.uint8
    assert indices == sample_indices(40, 10) == [2 + 4 * m for m in range(10)]
    assert decoded.num_frames == 40
    with av.open(str(path)) as container:
        ffmpeg = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    ours = frames.numpy().astype(np.int16)
    for m, i in enumerate(indices):
        diff = np.abs(ours[m] - ffmpeg[i].astype(np.int16))
        # Same frame; the conversions differ only in chroma upsampling (FFmpeg: nearest-ish, ours: DALI's bilinear).
        assert diff.mean() < 2.0, f"frame {m} (index {i}) differs from FFmpeg's frame {i} by {diff.mean():.2f} mean"
        if m + 1 < len(indices):
            assert np.abs(ours[m] - ffmpeg[indices[m + 1]].astype(np.int16)).mean() > diff.mean()


def test_yuv_conversion_is_bt601_limited_range():
    grey = av.VideoFrame.from_ndarray(np.full((8, 8, 3), 128, np.uint8), format="rgb24").reformat(format="yuv420p")
    out = frames_to_rgb([grey])
    assert out.shape == (1, 8, 8, 3) and (out.int() - 128).abs().max() <= 1
    red = av.VideoFrame.from_ndarray(np.tile(np.array([230, 20, 20], np.uint8), (8, 8, 1)), format="rgb24")
    out = frames_to_rgb([red.reformat(format="yuv420p")])
    assert (out.int() - torch.tensor([230, 20, 20])).abs().max() <= 3


def test_eval_transform_shapes_and_normalisation():
    settings = FrameSettings(num_frames=3)
    frames = torch.full((3, 96, 160, 3), 200, dtype=torch.uint8)
    out = preprocess_frames(frames, settings)
    assert out.shape == (3, 3, 224, 224) and out.dtype == torch.float32
    want = (200 / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), want, atol=1e-5, rtol=0)
    assert resized_size(96, 160, 224) == (224, 373) and resized_size(640, 360, 224) == (398, 224)
    # Centre crop: a bright column at the centre of the frame stays at the centre of the crop.
    frames = torch.zeros((1, 224, 400, 3), dtype=torch.uint8)
    frames[:, :, 199:201] = 255
    out = preprocess_frames(frames, FrameSettings(num_frames=1))
    cols = out[0, 0].mean(0)
    assert set(cols.topk(2).indices.tolist()) == {111, 112}, "crop offset (400 - 224 + 1) // 2 = 88"


def test_train_transform_is_seeded():
    settings = FrameSettings(num_frames=2, crop_size=32, resize_shorter=32)
    frames = torch.randint(0, 256, (2, 48, 64, 3), dtype=torch.uint8)
    a = preprocess_frames(frames, settings, train=True, generator=torch.Generator().manual_seed(1))
    b = preprocess_frames(frames, settings, train=True, generator=torch.Generator().manual_seed(1))
    c = preprocess_frames(frames, settings, train=True, generator=torch.Generator().manual_seed(2))
    assert a.shape == (2, 3, 32, 32)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, c)


def test_load_frames_end_to_end(ave_vp9):
    _, clips = ave_vp9
    out = load_frames(clips[0].path, FrameSettings(min_seconds=10.0))
    assert out.shape == (10, 3, 224, 224) and torch.isfinite(out).all()


def test_from_timm_reads_clip_statistics():
    settings = FrameSettings.from_timm("vit_base_patch16_clip_quickgelu_224.openai")
    assert settings.mean == CLIP_MEAN and settings.std == CLIP_STD
    assert (settings.crop_size, settings.resize_shorter) == (224, 224)
    timm_eval = FrameSettings.from_timm("vit_base_patch16_clip_quickgelu_224.openai", use_crop_pct=True)
    assert timm_eval.resize_shorter == 248, "floor(224 / 0.9), timm's eval resize"


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("missing", "file not found"),
        ("empty", "empty file"),
        ("garbage", "cannot open video"),
        ("truncated", "truncated or corrupt"),
        ("corrupt", "truncated or corrupt"),
    ],
)
def test_bad_media_raise_media_error_with_reason(damage, reason, ave_vp9, tmp_path):
    path = tmp_path / "clip.mkv"
    path.write_bytes(ave_vp9[1][0].path.read_bytes())
    if damage == "missing":
        path.unlink()
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        garbage(path)
    elif damage == "truncated":
        truncate(path)
    else:
        corrupt_middle(path)
    with pytest.raises(MediaError, match=reason) as info:
        load_frames(path, FrameSettings(num_frames=10, crop_size=32, resize_shorter=32, min_seconds=10.0))
    assert info.value.path == path


def test_too_short_video_is_reported(tmp_path):
    path = write_av_clip(tmp_path / "short.mkv", np.zeros((8, 32, 32, 3), np.uint8), 8, None, fps=2, codec="vp9")
    with pytest.raises(MediaError, match=r"too short: 4.00 s .* expected 10 s"):
        load_frames(path, FrameSettings(num_frames=4, crop_size=32, resize_shorter=32, min_seconds=10.0))
    with pytest.raises(MediaError, match="8 frames, expected at least 10"):
        load_frames(path, FrameSettings(num_frames=10, crop_size=32, resize_shorter=32))
    assert load_frames(path, FrameSettings(num_frames=8, crop_size=32, resize_shorter=32)).shape == (8, 3, 32, 32)


@pytest.mark.parametrize("value", [0, -0.5, "0.5", True])
def test_max_gap_seconds_is_checked(value):
    with pytest.raises(ValueError, match=rf"expected max_gap_seconds to be a number > 0 or None, got {value!r} "
                                         rf"\({type(value).__name__}\)"):
        FrameSettings(max_gap_seconds=value)
    assert FrameSettings(max_gap_seconds=None).max_gap_seconds is None
