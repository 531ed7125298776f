"""The AVE iterator (PyAV path): batch format, skip-and-report of bad media, determinism, sharding, workers."""

from __future__ import annotations

import logging

import pytest
import torch

from stgcma_fast.data import read_ave_annotations
from stgcma_fast.data.audio_io import MediaError, decode_audio
from stgcma_fast.data.loader import AveDataset, AveLoader, ShardSampler, SkippedClip
from stgcma_fast.data.prepare import prepare_audio
from stgcma_fast.data.video import FrameSettings
from tests.data.synth_media import copy_dataset, damaged_dataset

SMALL = {"num_frames": 10, "crop_size": 32, "resize_shorter": 32, "min_seconds": 10.0}


def small_frames() -> FrameSettings:
    return FrameSettings(**SMALL)


def ids_of(loader) -> list[str]:
    return [vid for batch in loader for vid in batch["ids"]]


def test_batches_have_the_documented_format(ave_vp9):
    root, clips = ave_vp9
    labels = {c.video_id: c.labels for c in read_ave_annotations(root / "Annotations.txt")}
    loader = AveLoader(AveDataset(root, "all", frames=small_frames()), batch_size=4, shuffle=False)
    batches = list(loader)
    assert [len(b["ids"]) for b in batches] == [4, 2] and len(loader) == 2
    for batch in batches:
        b = len(batch["ids"])
        assert set(batch) == {"video", "audio", "labels", "ids", "index"}
        assert batch["video"].shape == (b, 10, 3, 32, 32) and batch["video"].dtype == torch.float32
        assert batch["audio"].shape == (b, 10, 102, 128) and torch.isfinite(batch["audio"]).all()
        assert batch["labels"].shape == (b, 10) and batch["labels"].dtype == torch.long
        for vid, row in zip(batch["ids"], batch["labels"]):
            assert tuple(row.tolist()) == labels[vid]
    assert ids_of([*batches]) == [c.video_id for c in read_ave_annotations(root / "Annotations.txt")]
    summary = loader.last_summary
    assert (summary.loaded, summary.batches, summary.skipped) == (6, 2, [])


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    return damaged_dataset(tmp_path_factory)


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_media_are_skipped_and_summarised(damaged, workers, caplog):
    root, bad, good = damaged
    loader = AveLoader(AveDataset(root, "all", frames=small_frames()), batch_size=3, num_workers=workers,
                       shuffle=False)
    with caplog.at_level(logging.WARNING, logger="stgcma_fast.data.loader"):
        batches = list(loader)
    assert ids_of(batches) == good, "bad clips dropped, good ones kept in order"
    for batch in batches:
        assert batch["video"].shape[0] == len(batch["ids"]) == batch["audio"].shape[0]
        assert batch["video"].flatten(1).std(dim=1).min() > 0.05, "no zero-filled (constant) clip"
    summary = loader.last_summary
    assert {s.video_id: s for s in summary.skipped}.keys() == bad.keys()
    for skipped in summary.skipped:
        assert isinstance(skipped, SkippedClip) and bad[skipped.video_id] in skipped.reason
        assert skipped.video_id in skipped.path
    assert summary.loaded == len(good)
    text = str(summary)
    assert "4 skipped" in text and all(vid in text for vid in bad)
    assert all(vid in caplog.text for vid in bad), "the epoch summary is logged with every skipped id"


def test_on_error_raise_names_the_clip(damaged):
    root, bad, _ = damaged
    loader = AveLoader(AveDataset(root, "all", frames=small_frames()), batch_size=3, on_error="raise",
                       shuffle=False)
    with pytest.raises(MediaError) as info:
        list(loader)
    first = next(iter(bad))
    assert first in str(info.value) and bad[first] in str(info.value)


def test_shard_sampler_disjoint_covering_and_balanced():
    for n in (10, 11, 3):
        shards = [ShardSampler(n, r, 3, shuffle=True, seed=4, pad=False).indices() for r in range(3)]
        flat = [i for s in shards for i in s]
        assert sorted(flat) == list(range(n)), f"n={n}: shards are disjoint and cover every item"
        padded = [ShardSampler(n, r, 3, shuffle=True, seed=4).indices() for r in range(3)]
        assert len({len(s) for s in padded}) == 1, "padding balances the ranks"
        assert set(i for s in padded for i in s) == set(range(n))
        assert len(ShardSampler(n, 0, 3, seed=4)) == len(padded[0])
    with pytest.raises(ValueError, match="rank < world_size"):
        ShardSampler(4, 3, 3)


def test_order_is_seeded_and_reshuffled_per_epoch():
    sampler = ShardSampler(50, seed=7)
    first = sampler.order(0)
    assert first == ShardSampler(50, seed=7).order(0), "same seed, same order"
    assert first != sampler.order(1), "a new epoch reshuffles"
    assert first != ShardSampler(50, seed=8).order(0)
    assert sorted(first) == list(range(50))
    assert ShardSampler(5, shuffle=False).order(3) == [0, 1, 2, 3, 4]


def test_loader_epochs_and_ranks(ave_vp9):
    root, _ = ave_vp9
    dataset = AveDataset(root, "all", frames=small_frames())
    loader = AveLoader(dataset, batch_size=6, seed=3, frontend=None)
    epoch0 = ids_of(loader)
    assert loader.epoch == 1, "a complete pass advances the epoch"
    epoch1 = ids_of(loader)
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1
    loader.set_epoch(0)
    assert ids_of(loader) == epoch0, "set_epoch replays an epoch"
    ranks = [ids_of(AveLoader(dataset, 2, seed=3, rank=r, world_size=2, pad=False, frontend=None)) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and sorted(ranks[0] + ranks[1]) == sorted(epoch0)


def test_two_workers_give_the_same_batches_as_one_process(ave_vp9):
    root, _ = ave_vp9
    dataset = AveDataset(root, "all", frames=small_frames(), train=True, seed=11)
    single = list(AveLoader(dataset, batch_size=2, seed=5, num_workers=0, frontend=None))
    workers = list(AveLoader(dataset, batch_size=2, seed=5, num_workers=2, frontend=None))
    assert [b["ids"] for b in single] == [b["ids"] for b in workers]
    for a, b in zip(single, workers):
        torch.testing.assert_close(a["video"], b["video"], atol=0, rtol=0)  # augmentation seeded per clip
        torch.testing.assert_close(a["waveform"], b["waveform"], atol=0, rtol=0)
    again = AveLoader(dataset, batch_size=6, seed=5, frontend=None)
    first = next(iter(again))["video"]
    second = next(iter(again))["video"]  # same epoch (the first pass was not completed): same augmentation
    torch.testing.assert_close(first, second, atol=0, rtol=0)


def test_prepared_audio_is_read_and_matches_the_video_track(ave_vp9, tmp_path):
    root = copy_dataset(ave_vp9[0], tmp_path / "ave")
    report = prepare_audio(root, audio_format="flac")
    assert len(report.written) == 6 and not report.failed
    dataset = AveDataset(root, "all", frames=small_frames())
    assert all(item.audio is not None and item.audio.suffix == ".flac" for item in dataset.items)
    item = dataset.items[0]
    prepared = dataset.load(0)["waveform"]
    from_video = decode_audio(item.video, seconds=10)
    assert prepared.shape == (160000,)
    torch.testing.assert_close(prepared, from_video, atol=2 / 32767, rtol=0)  # 16-bit quantisation only
    assert prepare_audio(root, audio_format="flac").existing == report.written, "a second run keeps the files"


def test_frames_and_audio_segments_must_agree(ave_vp9):
    dataset = AveDataset(ave_vp9[0], "all", frames=FrameSettings(num_frames=8, crop_size=32, resize_shorter=32))
    with pytest.raises(ValueError, match="K == video frames M, got K = 10 and M = 8"):
        AveLoader(dataset, batch_size=2)
    with pytest.raises(ValueError, match="on_error"):
        AveLoader(AveDataset(ave_vp9[0], "all", frames=small_frames()), batch_size=2, on_error="zero-fill")
