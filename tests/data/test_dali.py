"""DALI path: same frames as the PyAV path (parity, also for variable frame rates: both sample by time), same skip
reports, PyAV fallback for what DALI's CPU decoder cannot read or turn. Skipped, with the reason, when
``nvidia.dali`` cannot be imported."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stgcma_fast.data.dali import DaliAveLoader, dali_status, make_ave_loader
from stgcma_fast.data.loader import AveDataset, AveLoader
from stgcma_fast.data.prepare import prepare_audio
from stgcma_fast.data.synth import write_av_clip
from stgcma_fast.data.video import PARITY_ATOL, FrameSettings
from tests.data.synth_media import (
    copy_dataset,
    damaged_dataset,
    second_of_frame,
    synth_dataset,
    vfr_times,
    write_timed_clip,
)

DALI_OK, DALI_WHY = dali_status()
pytestmark = pytest.mark.skipif(not DALI_OK, reason=f"DALI tests need nvidia.dali: {DALI_WHY}")
SMALL = FrameSettings(num_frames=10, crop_size=32, resize_shorter=32, min_seconds=10.0)


def by_id(loader) -> dict[str, dict[str, torch.Tensor]]:
    return {vid: {k: batch[k][i] for k in ("video", "audio", "waveform", "labels") if k in batch}
            for batch in loader for i, vid in enumerate(batch["ids"])}


def assert_parity(dali: torch.Tensor, pyav: torch.Tensor, what: str) -> None:
    diff = (dali.cpu() - pyav.cpu()).abs()
    assert diff.max() <= PARITY_ATOL and diff.mean() < 2e-3, (
        f"{what}: DALI vs PyAV max {diff.max():.4f} (tolerance {PARITY_ATOL:.4f}), mean {diff.mean():.5f}")


def assert_gpu_parity(dali: torch.Tensor, pyav: torch.Tensor, what: str) -> None:
    """NVDEC output goes through DALI's own YUV -> RGB conversion, not FFmpeg's swscale: pixels at sharp colour
    edges of the textured test clips may differ by more than a few levels while the frames are the same. So: PSNR of
    the normalised frames >= 35 dB (a wrong frame, crop or channel order gives < 20 dB) and a mean error below 1 %
    of the normalised range."""
    dali, pyav = dali.cpu().double(), pyav.cpu().double()
    value_range = float(pyav.max() - pyav.min())
    mse = float(((dali - pyav) ** 2).mean())
    psnr = 10 * math.log10(value_range**2 / max(mse, 1e-30))
    mean = float((dali - pyav).abs().mean())
    assert psnr >= 35 and mean < 0.01 * value_range, (
        f"{what}: DALI (GPU) vs PyAV PSNR {psnr:.1f} dB (needs >= 35), mean abs diff {mean:.4f} "
        f"(needs < {0.01 * value_range:.4f})")


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory):
    """Three VP9 clips with textured frames: upscaled, downscaled, and with an odd crop offset (373 - 224)."""
    root = tmp_path_factory.mktemp("sizes")
    rng = np.random.default_rng(0)
    lines = []
    for k, (h, w) in enumerate([(64, 64), (96, 160), (288, 384)]):
        blocks = rng.integers(0, 256, (20, h // 8, w // 8, 3)).astype(np.uint8).repeat(8, 1).repeat(8, 2)
        frames = np.clip(blocks * 0.6 + 50 + rng.normal(0, 15, blocks.shape), 0, 255).astype(np.uint8)
        vid = f"size{k}{h}x{w}"
        write_av_clip(root / "AVE" / f"{vid}.mkv", frames, 20, np.zeros(160000, np.float32), fps=2, codec="vp9")
        lines.append(f"Bark&{vid}&good&0&10")
    (root / "Annotations.txt").write_text("\n".join(lines))
    return root


def test_cpu_backend_matches_pyav_frames(mixed_sizes):
    dataset = AveDataset(mixed_sizes, "all", frames=FrameSettings(min_seconds=10.0))
    dali = DaliAveLoader(dataset, batch_size=3, dali_device="cpu", shuffle=False)
    got, want = by_id(dali), by_id(AveLoader(dataset, batch_size=3, shuffle=False))
    assert got.keys() == want.keys() and len(got) == 3
    for vid in got:
        assert got[vid]["video"].shape == (10, 3, 224, 224)
        assert_parity(got[vid]["video"], want[vid]["video"], vid)
    assert dali.fallbacks == 0, "every VP9 clip went through DALI"


def test_cpu_backend_decodes_prepared_wav_and_matches_pyav(ave_vp9, tmp_path):
    root = copy_dataset(ave_vp9[0], tmp_path / "ave")
    prepare_audio(root)
    dataset = AveDataset(root, "all", frames=SMALL)
    dali = DaliAveLoader(dataset, batch_size=4, dali_device="cpu", shuffle=False)
    assert dali.with_audio, "all clips have a prepared WAV: DALI decodes the audio"
    got, want = by_id(dali), by_id(AveLoader(dataset, batch_size=4, shuffle=False))
    assert got.keys() == want.keys() and len(got) == 6 and dali.fallbacks == 0
    for vid in got:
        assert_parity(got[vid]["video"], want[vid]["video"], vid)
        torch.testing.assert_close(got[vid]["audio"], want[vid]["audio"], atol=1e-3, rtol=0)
        assert torch.equal(got[vid]["labels"], want[vid]["labels"])


def test_dali_reports_the_same_bad_media_as_pyav(tmp_path_factory):
    root, bad, good = damaged_dataset(tmp_path_factory)
    dataset = AveDataset(root, "all", frames=SMALL)
    loader = DaliAveLoader(dataset, batch_size=3, dali_device="cpu", shuffle=False)
    assert [vid for batch in loader for vid in batch["ids"]] == good
    reasons = {s.video_id: s.reason for s in loader.last_summary.skipped}
    assert reasons.keys() == bad.keys() and all(bad[vid] in reasons[vid] for vid in bad)
    pyav = AveLoader(dataset, batch_size=3, shuffle=False)
    list(pyav)
    assert reasons == {s.video_id: s.reason for s in pyav.last_summary.skipped}
    with pytest.raises(Exception, match=next(iter(bad))):
        list(DaliAveLoader(dataset, batch_size=3, dali_device="cpu", shuffle=False, on_error="raise"))


def test_h264_falls_back_to_pyav_on_the_cpu_backend(tmp_path_factory):
    root, _ = synth_dataset(tmp_path_factory, "h264", clips=3, seed=1)
    dataset = AveDataset(root, "all", frames=SMALL)
    dali = DaliAveLoader(dataset, batch_size=3, dali_device="cpu", shuffle=False)
    got, want = by_id(dali), by_id(AveLoader(dataset, batch_size=3, shuffle=False))
    assert dali.fallbacks == 3, "DALI's CPU decoder has no H.264: PyAV decodes those clips"
    for vid in want:
        assert torch.equal(got[vid]["video"], want[vid]["video"])
    auto = make_ave_loader(dataset, 3, backend="auto")
    assert isinstance(auto, AveLoader) or torch.cuda.is_available(), "auto picks PyAV for H.264 without a GPU"


def test_train_mode_is_seeded(ave_vp9):
    dataset = AveDataset(ave_vp9[0], "all", frames=SMALL, train=True)
    runs = [by_id(DaliAveLoader(dataset, batch_size=3, dali_device="cpu", seed=4, frontend=None)) for _ in range(2)]
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) == 6
    for vid in runs[0]:
        assert runs[0][vid]["video"].shape == (10, 3, 32, 32)
        torch.testing.assert_close(runs[0][vid]["video"], runs[1][vid]["video"], atol=0, rtol=0)
    assert isinstance(make_ave_loader(dataset, 3, backend="dali", dali_device="cpu"), DaliAveLoader)


@pytest.mark.gpu
def test_gpu_backend_matches_pyav_on_h264_and_vp9(tmp_path_factory, mixed_sizes):
    root, _ = synth_dataset(tmp_path_factory, "h264", clips=3, seed=1)
    for folder in (root, mixed_sizes):
        dataset = AveDataset(folder, "all", frames=FrameSettings(min_seconds=10.0))
        dali = DaliAveLoader(dataset, batch_size=3, device="cuda", dali_device="gpu", shuffle=False)
        got = by_id(dali)
        want = by_id(AveLoader(dataset, batch_size=3, shuffle=False))
        assert dali.fallbacks == 0 and got.keys() == want.keys()
        for vid in got:
            assert got[vid]["video"].is_cuda
            assert_gpu_parity(got[vid]["video"], want[vid]["video"], f"GPU {vid}")


def test_gpu_parity_criterion_separates_conversion_noise_from_wrong_frames():
    """The GPU criterion passes small colour-conversion differences and fails a wrong frame or a shifted crop."""
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(10, 3, 32, 32, generator=g) * 4 - 2  # normalised-like values
    noisy = frames + torch.randn(frames.shape, generator=g) * 0.01
    noisy[..., 0, :5] += 0.3  # a few edge pixels off by a lot
    assert_gpu_parity(noisy, frames, "conversion noise")
    with pytest.raises(AssertionError, match="PSNR"):
        assert_gpu_parity(frames.roll(1, dims=0), frames, "wrong frame order")
    with pytest.raises(AssertionError, match="PSNR"):
        assert_gpu_parity(frames.roll(3, dims=-1), frames, "shifted crop")


@pytest.fixture(scope="module")
def timed_vp9(tmp_path_factory):
    """VP9 clips whose frames show their second: variable rate both ways, video starting 0.5 s into the file (early
    audio), and one with a display rotation; audio prepared as WAV on the video's timeline."""
    root = tmp_path_factory.mktemp("timed_dali")
    cases = {"vfr15then30": {"times": vfr_times()},
             "vfr30then15": {"times": [i / 30 for i in range(150)] + [5 + i / 15 for i in range(75)]},
             "earlyaudio0": {"times": vfr_times(), "audio": (-0.5, 10.0)},
             "rotated9000": {"rotation": 90, "size": (32, 48)}}
    for vid, kwargs in cases.items():
        write_timed_clip(root / "AVE" / vid, "vp9", **kwargs)
    (root / "Annotations.txt").write_text("\n".join(f"Bark&{vid}&good&0&10" for vid in cases))
    report = prepare_audio(root)
    assert not report.failed, str(report)
    return root


def test_cpu_backend_samples_variable_rate_video_by_time(timed_vp9):
    dataset = AveDataset(timed_vp9, "all", frames=SMALL)
    dali = DaliAveLoader(dataset, batch_size=4, dali_device="cpu", shuffle=False)
    got, want = by_id(dali), by_id(AveLoader(dataset, batch_size=4, shuffle=False))
    assert got.keys() == want.keys() and len(got) == 4
    assert dali.fallbacks == 1, "the rotated clip goes to PyAV (DALI's decoder ignores the display matrix)"
    mean, std = torch.tensor(SMALL.mean) * 255, torch.tensor(SMALL.std) * 255
    for vid in got:
        assert_parity(got[vid]["video"], want[vid]["video"], vid)
        rgb = (got[vid]["video"].permute(0, 2, 3, 1) * std + mean).round().clamp(0, 255).to(torch.uint8)
        assert [second_of_frame(f) for f in rgb.numpy()] == list(range(10)), vid
        torch.testing.assert_close(got[vid]["audio"], want[vid]["audio"], atol=1e-3, rtol=0)


@pytest.mark.gpu
def test_gpu_backend_samples_variable_rate_h264_by_time(tmp_path):
    """NVDEC reads H.264: the same timing as on the CPU backend (not yet run on a GPU when written)."""
    cases = {"vfr15then30": {"times": vfr_times()}, "earlyaudio0": {"times": vfr_times(), "audio": (-0.5, 10.0)}}
    for vid, kwargs in cases.items():
        write_timed_clip(tmp_path / "AVE" / vid, "h264", **kwargs)
    (tmp_path / "Annotations.txt").write_text("\n".join(f"Bark&{vid}&good&0&10" for vid in cases))
    assert not prepare_audio(tmp_path).failed
    dataset = AveDataset(tmp_path, "all", frames=SMALL)
    dali = DaliAveLoader(dataset, batch_size=2, device="cuda", dali_device="gpu", shuffle=False)
    got = by_id(dali)
    assert dali.fallbacks == 0 and len(got) == 2
    mean, std = torch.tensor(SMALL.mean) * 255, torch.tensor(SMALL.std) * 255
    for vid in got:
        rgb = (got[vid]["video"].cpu().permute(0, 2, 3, 1) * std + mean).round().clamp(0, 255).to(torch.uint8)
        assert [second_of_frame(f) for f in rgb.numpy()] == list(range(10)), vid
