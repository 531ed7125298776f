"""The AVSBench-S4 iterator: batch format, mask conventions (train: first frame only), masks on the sounding object,
bad media skipped and summarised, sharding and seeded order."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from stgcma_fast.data.audio_io import MediaError, write_audio
from stgcma_fast.data.avs import AVS_S4_CATEGORIES, s4_records
from stgcma_fast.data.avs_loader import (
    S4Dataset,
    S4Loader,
    masks_like_frames,
    read_image,
    s4_frame_settings,
    s4_frontend_settings,
)
from stgcma_fast.data.frontend import AVS_S4_SWIN_MEAN, AVS_S4_SWIN_STD
from stgcma_fast.data.synth import class_motif, synth_avs_s4
from stgcma_fast.data.video import preprocess_frames
from tests.data.synth_media import copy_dataset, garbage, truncate

SIZE = 32
KEYS = {"video", "audio", "masks", "has_mask", "category", "ids", "index"}


def frames(crop: int = SIZE):
    return s4_frame_settings(crop_size=crop, resize_shorter=crop)


@pytest.fixture(scope="module")
def s4(tmp_path_factory):
    """(Single-source folder, clips): 8 clips, 4 train / 2 val / 2 test, 32 x 32 frames."""
    out = tmp_path_factory.mktemp("s4")
    clips = synth_avs_s4(out, 8, seed=0, size=SIZE)
    assert [sum(c.split == s for c in clips) for s in ("train", "val", "test")] == [4, 2, 2]
    return out, clips


def ids_of(loader) -> list[str]:
    return [name for batch in loader for name in batch["ids"]]


def rgb(video: torch.Tensor) -> torch.Tensor:
    """Normalised (..., 3, H, W) -> 0..255 RGB with the S4 (ImageNet) mean/std."""
    s = s4_frame_settings()
    mean = torch.tensor(s.mean).view(3, 1, 1) * 255
    std = torch.tensor(s.std).view(3, 1, 1) * 255
    return video * std + mean


@pytest.mark.parametrize("split", ["train", "val"])
def test_batches_masks_and_their_convention(s4, split):
    out, clips = s4
    category = {c.name: c.category for c in clips}
    dataset = S4Dataset(out / "s4_data", split, frames=frames())
    loader = S4Loader(dataset, batch_size=4, shuffle=False)
    assert loader.frontend.settings == s4_frontend_settings()
    assert (loader.frontend.settings.segment_seconds, loader.frontend.settings.num_mel_bins) == (1.95, 224)
    assert (loader.frontend.settings.mean, loader.frontend.settings.std) == (AVS_S4_SWIN_MEAN, AVS_S4_SWIN_STD)
    (batch,) = list(loader)
    b = len(batch["ids"])
    masked = 1 if split == "train" else 5
    assert set(batch) == KEYS and batch["ids"] == [c.name for c in clips if c.split == split]
    assert batch["video"].shape == (b, 5, 3, SIZE, SIZE) and batch["video"].dtype == torch.float32
    assert batch["audio"].shape == (b, 5, 224, 224) and torch.isfinite(batch["audio"]).all()
    assert batch["masks"].shape == (b, masked, 1, SIZE, SIZE) and batch["masks"].dtype == torch.float32
    assert batch["has_mask"].dtype == torch.bool
    assert batch["has_mask"].tolist() == [[True] * masked + [False] * (5 - masked)] * b
    assert batch["category"] == [category[n] for n in batch["ids"]]
    masks = batch["masks"]
    assert set(masks.unique().tolist()) == {0.0, 1.0}, "binary masks"
    # the loss pairs pred[has_mask] with masks.flatten(0, 1), row by row
    paired = batch["video"][batch["has_mask"]]
    assert paired.shape[0] == masks.flatten(0, 1).shape[0] == b * masked
    records = {r.name: r for r in s4_records(out / "s4_data", split=split)}
    for name, clip_video, clip_masks, has in zip(batch["ids"], batch["video"], masks, batch["has_mask"]):
        png = [read_image(p, "gray") >= 128 for p in records[name].masks]
        assert torch.equal(clip_masks[:, 0].bool(), torch.from_numpy(np.stack(png))), "masks are the PNGs (no resize)"
        colour = torch.tensor(class_motif(AVS_S4_CATEGORIES.index(category[name]), 23).rgb, dtype=torch.float32)
        for frame, mask in zip(clip_video[has], clip_masks):
            inside = mask[0].bool()
            assert 0.02 < inside.float().mean() < 0.5
            pixels = rgb(frame).permute(1, 2, 0)[inside]
            assert (pixels - colour).abs().mean() < 12, f"{name}: the mask covers the sounding object's motif"


def test_resized_masks_follow_the_frames_geometry():
    # a white 10 x 20 box on black in a 40 x 64 frame: resize shorter side 40 -> 32, centre crop 32 x 32
    image = np.zeros((40, 64, 3), np.uint8)
    image[14:24, 30:50] = 255
    settings = frames(32)
    video = rgb(preprocess_frames(torch.from_numpy(image[None]), settings)[0])
    mask = masks_like_frames(torch.from_numpy(image[None, :, :, 0] >= 128).float(), settings)
    assert mask.shape == (1, 1, 32, 32) and set(mask.unique().tolist()) == {0.0, 1.0}
    inside = mask[0, 0].bool()
    assert video[:, inside].min() > 120 and video[:, ~inside].max() < 135, "box pixels are the mask's pixels"
    assert 0.9 < inside.float().sum() / (8 * 16) < 1.1, "the box keeps its area: 10 x 20 scaled by 0.8"


@pytest.fixture(scope="module")
def damaged(s4, tmp_path_factory):
    """A copy with 3 bad train clips (corrupt frame, missing wav, 2 s wav) and a truncated val mask."""
    root = copy_dataset(s4[0], tmp_path_factory.mktemp("s4_damaged") / "Single-source")
    train = s4_records(root / "s4_data", split="train")
    val = s4_records(root / "s4_data", split="val")
    garbage(train[0].frames[2])
    train[1].audio.unlink()
    write_audio(train[3].audio, np.zeros(32000, np.float32))
    truncate(val[1].masks[3])
    bad = {train[0].name: "cannot decode image", train[1].name: "file not found", train[3].name: "audio too short",
           val[1].name: "cannot decode image"}
    return root, bad, {"train": [train[2].name], "val": [val[0].name]}


def test_bad_media_are_skipped_and_summarised(damaged, caplog):
    root, bad, good = damaged
    for split in ("train", "val"):
        loader = S4Loader(S4Dataset(root / "s4_data", split, frames=frames()), batch_size=2, shuffle=False)
        with caplog.at_level(logging.WARNING, logger="stgcma_fast.data.loader"):
            batches = list(loader)
        assert ids_of(batches) == good[split]
        for batch in batches:
            assert batch["video"].shape[0] == batch["masks"].shape[0] == batch["audio"].shape[0] == 1
            assert batch["video"].flatten(1).std(dim=1).min() > 0.05, "no zero-filled clip"
        summary = loader.last_summary
        assert summary.loaded == 1 and len(summary.skipped) == (3 if split == "train" else 1)
        for skipped in summary.skipped:
            assert bad[skipped.video_id] in skipped.reason and skipped.video_id in skipped.path
            assert skipped.video_id in str(summary) and skipped.video_id in caplog.text
    with pytest.raises(MediaError, match="cannot decode image") as info:
        list(S4Loader(S4Dataset(root / "s4_data", "train", frames=frames()), 2, shuffle=False, on_error="raise"))
    first = s4_records(root / "s4_data", split="train", check_files=False)[0].name
    assert first in str(info.value)


def test_sharding_and_seeded_order(s4):
    dataset = S4Dataset(s4[0] / "s4_data", "train", frames=frames())
    names = [r.name for r in dataset.records]
    loader = S4Loader(dataset, batch_size=4, seed=1, frontend=None)
    epochs = [ids_of(loader) for _ in range(4)]
    assert "waveform" in next(iter(S4Loader(dataset, 4, frontend=None))), "frontend=None yields waveforms"
    assert all(sorted(e) == sorted(names) for e in epochs) and len({tuple(e) for e in epochs}) > 1, "reshuffled"
    again = S4Loader(dataset, batch_size=4, seed=1, frontend=None)
    assert [ids_of(again) for _ in range(4)] == epochs, "same seed, same orders"
    loader.set_epoch(2)
    assert ids_of(loader) == epochs[2]
    shards = [ids_of(S4Loader(dataset, 1, seed=1, rank=r, world_size=3, pad=False, frontend=None)) for r in range(3)]
    assert sorted(n for s in shards for n in s) == sorted(names), "the shards are disjoint and cover the split"
    assert [len(s) for s in shards] == [2, 1, 1]
    padded = [ids_of(S4Loader(dataset, 1, seed=1, rank=r, world_size=3, frontend=None)) for r in range(3)]
    assert [len(s) for s in padded] == [2, 2, 2]


def test_rejects_bad_settings(s4):
    with pytest.raises(ValueError, match="num_frames == 5"):
        S4Dataset(s4[0] / "s4_data", "val", frames=s4_frame_settings(num_frames=4))
    with pytest.raises(ValueError, match="split"):
        S4Dataset(s4[0] / "s4_data", "all")
