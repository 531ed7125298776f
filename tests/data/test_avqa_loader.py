"""The MUSIC-AVQA iterator: batch format, question tokens / answers / types, too-short and corrupt videos skipped and
summarised, sharding and seeded order / augmentation; and the lazy public API of ``stgcma_fast.data``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import stgcma_fast.data as data
from stgcma_fast.data.audio_io import MediaError
from stgcma_fast.data.avqa import ANSWERS, QUESTION_TYPES, QuestionVocab, read_avqa_questions
from stgcma_fast.data.avqa_loader import AvqaDataset, AvqaLoader, avqa_frame_settings
from stgcma_fast.data.synth import synth_avqa
from tests.data.synth_media import copy_dataset, garbage

SIZE, SECONDS, M = 32, 4, 4
KEYS = {"video", "audio", "question", "answer", "qtype", "video_id", "ids", "index"}


@pytest.fixture(scope="module")
def avqa(tmp_path_factory):
    """4 synthetic videos of 4 s (2 train, 1 val, 1 test), 32 x 32 at 2 fps, VP9 + Opus."""
    root = tmp_path_factory.mktemp("avqa")
    synth_avqa(root, 4, codec="vp9", seed=0, size=SIZE, fps=2, seconds=SECONDS)
    return root


def dataset(root, split="train", **kwargs) -> AvqaDataset:
    frames = avqa_frame_settings(M, SECONDS, crop_size=SIZE, resize_shorter=SIZE)
    return AvqaDataset(root, split, frames=frames, clip_seconds=SECONDS, **kwargs)


def ids_of(loader) -> list[int]:
    return [qid for batch in loader for qid in batch["ids"]]


@pytest.mark.parametrize("split", ["train", "val"])
def test_batches_tokens_answers_and_types(avqa, split):
    questions = {q.question_id: q for q in read_avqa_questions(avqa / f"avqa-{split}.json")}
    vocab = QuestionVocab.from_questions(read_avqa_questions(avqa / "avqa-train.json"))
    ds = dataset(avqa, split)
    assert ds.vocab.itos == vocab.itos, "the default vocabulary is the train split's, in official order"
    loader = AvqaLoader(ds, batch_size=8, shuffle=False)
    assert loader.frontend.settings.num_segments == M, "K = M audio segments"
    batches = list(loader)
    assert ids_of(batches) == list(questions) and loader.last_summary.skipped == []
    for batch in batches:
        b = len(batch["ids"])
        assert set(batch) == KEYS
        assert batch["video"].shape == (b, M, 3, SIZE, SIZE) and batch["video"].dtype == torch.float32
        assert batch["audio"].shape == (b, M, 102, 128) and torch.isfinite(batch["audio"]).all()
        assert batch["question"].shape == (b, 14) and batch["question"].dtype == torch.long
        assert batch["answer"].shape == batch["qtype"].shape == (b,) and batch["answer"].dtype == torch.long
        for qid, tokens, answer, qtype, vid in zip(batch["ids"], batch["question"], batch["answer"], batch["qtype"],
                                                   batch["video_id"]):
            q = questions[qid]
            assert torch.equal(tokens, vocab.encode(q.words)) and vid == q.video_id
            assert ANSWERS[int(answer)] == q.answer and QUESTION_TYPES[int(qtype)] == q.type
            if split == "train":  # every train word is in the vocabulary: the tokens spell the question
                assert [vocab.itos[i] for i in tokens.tolist() if i] == q.words
                assert tokens[len(q.words):].eq(0).all(), "padded with <pad> = 0"
    if split == "train":
        same_video = [b["video"][i] for b in batches for i, v in enumerate(b["video_id"]) if v == "00000001"]
        assert len(same_video) > 1 and all(torch.equal(v, same_video[0]) for v in same_video), "per-video frames"


def test_defaults_are_60s_clips_with_10_frames_and_short_videos_are_reported(avqa):
    ds = AvqaDataset(avqa, "val")
    assert (ds.frames.num_frames, ds.frames.min_seconds, ds.clip_seconds) == (10, 60.0, 60.0)
    assert ds.default_frontend().settings.num_segments == 10
    loader = AvqaLoader(ds, batch_size=16, shuffle=False)
    assert list(loader) == [], "4 s synthetic videos are too short for 60 s clips: nothing is zero-filled"
    summary = loader.last_summary
    assert len(summary.skipped) == len(ds) and all("too short" in s.reason for s in summary.skipped)


@pytest.fixture(scope="module")
def damaged(avqa, tmp_path_factory):
    """A copy whose first train video is garbage: (root, its question ids, the other train question ids)."""
    root = copy_dataset(avqa, tmp_path_factory.mktemp("avqa_damaged") / "avqa")
    questions = read_avqa_questions(root / "avqa-train.json")
    bad_video = questions[0].video_id
    garbage(root / "videos" / f"{bad_video}.mkv")
    bad = [q.question_id for q in questions if q.video_id == bad_video]
    return root, bad_video, bad, [q.question_id for q in questions if q.video_id != bad_video]


def test_a_corrupt_video_skips_each_of_its_questions(damaged):
    root, bad_video, bad, good = damaged
    loader = AvqaLoader(dataset(root), batch_size=4, shuffle=False)
    assert ids_of(loader) == good
    summary = loader.last_summary
    assert [int(s.video_id) for s in summary.skipped] == bad and summary.loaded == len(good)
    assert all(bad_video in s.path and "cannot open video" in s.reason for s in summary.skipped)
    assert f"{len(bad)} skipped" in str(summary) and bad_video in str(summary)
    with pytest.raises(MediaError, match="cannot open video") as info:
        list(AvqaLoader(dataset(root), batch_size=4, shuffle=False, on_error="raise"))
    assert f"clip '{bad[0]}'" in str(info.value) and bad_video in str(info.value)


def test_sharding_seeded_order_and_augmentation(avqa):
    ds = dataset(avqa, train=True, seed=3)
    qids = [q.question_id for q in ds.questions]
    loader = AvqaLoader(ds, batch_size=len(ds), seed=2, frontend=None)
    first = next(iter(loader))  # an unfinished pass does not advance the epoch
    assert loader.epoch == 0 and sorted(first["ids"]) == sorted(qids)
    loader.set_epoch(1)
    second = ids_of(loader)
    assert sorted(second) == sorted(qids) and second != first["ids"], "a new epoch reshuffles"
    again = next(iter(AvqaLoader(ds, batch_size=len(ds), seed=2, frontend=None)))
    assert again["ids"] == first["ids"]
    torch.testing.assert_close(again["video"], first["video"], atol=0, rtol=0)  # augmentation seeded per question
    other = next(iter(AvqaLoader(dataset(avqa, train=True, seed=4), batch_size=len(ds), seed=2, frontend=None)))
    assert not torch.equal(other["video"], first["video"]), "another augmentation seed, other crops"
    shards = [ids_of(AvqaLoader(ds, 4, seed=2, rank=r, world_size=2, pad=False, frontend=None)) for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == sorted(qids)


def test_public_api_is_exported_and_import_stays_light():
    from stgcma_fast.data import avqa_loader, avs_loader, loader, synth

    assert data.AvqaLoader is avqa_loader.AvqaLoader and data.S4Dataset is avs_loader.S4Dataset
    assert data.ShardSampler is loader.ShardSampler and data.synth_avqa is synth.synth_avqa
    assert {"AveLoader", "MediaLoader", "S4Loader", "AvqaDataset", "FrameSettings", "make_ave_loader",
            "prepare_audio", "synth_avs_s4"} <= set(data.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        data.nope  # noqa: B018
    code = ("import sys, stgcma_fast.data as d; assert d.QuestionVocab; "
            "heavy = [m for m in ('av', 'nvidia.dali') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
