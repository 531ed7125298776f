"""``sync_ranks``: under DDP every rank yields as many batches, even when one rank's batch loses all its clips.

Two gloo processes (spawned once for the module) each run a :class:`MediaLoader` over a tiny in-memory dataset
whose clips 5 and 7 (together one raw batch of rank 1) are bad; each child writes what it saw to a JSON file and the
parent asserts on it, so a child's failure is reported, never swallowed or hung on.
"""

from __future__ import annotations

import datetime
import json
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stgcma_fast.data.loader import EMPTIED_ELSEWHERE, EMPTIED_HERE, MediaLoader, SkippedClip
from stgcma_fast.data.video import FrameSettings

WORLD = 2
NUM_CLIPS = 16  # unshuffled and padded: rank r gets clips r, r + 2, ...; batches of 2 -> rank 1: [1, 3], [5, 7], ...
BATCH = 2
BAD = frozenset({5, 7, 9})  # 5 and 7: rank 1's raw batch 1 (emptied); 9: one clip of rank 1's raw batch 2
EMPTIED_STEP = 1
JOIN_SECONDS = 60


class FakeDataset:
    """The dataset protocol of :class:`MediaLoader` without media: tiny tensors, or a :class:`SkippedClip` for BAD."""

    frames = FrameSettings(num_frames=2, crop_size=4, resize_shorter=4)

    def __init__(self, num_clips: int = NUM_CLIPS, bad: frozenset[int] = BAD) -> None:
        self.num_clips, self.bad = num_clips, bad

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any] | SkippedClip:
        index, _ = key
        if index in self.bad:
            return SkippedClip(index, f"clip{index}", f"memory://clip{index}.mp4", "corrupt (test)")
        return {
            "video": torch.full((2, 3, 4, 4), float(index)),
            "waveform": torch.zeros(8),
            "labels": torch.tensor([index % 3]),
            "id": f"clip{index}",
            "index": index,
        }


def make_loader(**kwargs: Any) -> MediaLoader:
    return MediaLoader(FakeDataset(), batch_size=BATCH, shuffle=False, frontend=None, num_workers=0, **kwargs)


def summary_record(loader: MediaLoader) -> dict[str, Any]:
    summary = loader.last_summary
    return {
        "loaded": summary.loaded,
        "batches": summary.batches,
        "dropped_batches": summary.dropped_batches,
        "skipped": sorted(s.video_id for s in summary.skipped),
        "dropped": [[d.step, list(d.ids), d.reason] for d in summary.dropped],
        "text": str(summary),
    }


def run_rank(rank: int, init_method: str, out_dir: str) -> None:
    """One rank: every scenario, recorded in ``<out_dir>/rank<rank>.json`` (an exception's traceback included)."""
    record: dict[str, Any] = {}
    try:
        dist.init_process_group(
            "gloo", init_method=init_method, rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=30)
        )
        try:
            # Default: on (gloo group of 2, loader sharded over it, padded). Each yielded batch is followed by a
            # collective standing in for DDP's gradient all-reduce: the step ordinals must agree on both ranks.
            loader = make_loader()
            record["default_sync"] = loader.sync_ranks
            steps_agree = []
            ids = []
            for step, batch in enumerate(loader):
                ids.append(batch["ids"])
                ordinals = torch.tensor([step, -step])
                dist.all_reduce(ordinals, op=dist.ReduceOp.MAX)  # [max step, -min step]
                steps_agree.append(ordinals.tolist() == [step, -step])
            record["sync"] = {"ids": ids, "steps_agree": steps_agree, **summary_record(loader)}
            dist.barrier()

            # Off: the old behaviour (no collective; rank 1 yields one batch fewer).
            loader = make_loader(sync_ranks=False)
            record["nosync"] = {"ids": [batch["ids"] for batch in loader], **summary_record(loader)}
            dist.barrier()

            # Unpadded shards: off by default, refused when asked for; a loader not sharded over the group: off.
            record["unpadded_default_sync"] = make_loader(pad=False).sync_ranks
            with pytest.raises(ValueError, match="pad") as info:
                make_loader(pad=False, sync_ranks=True)
            record["unpadded_error"] = str(info.value)
            record["single_shard_default_sync"] = make_loader(rank=0, world_size=1).sync_ranks
            with pytest.raises(ValueError, match="whole process group"):
                make_loader(rank=0, world_size=1, pad=True, sync_ranks=True)

            # Unequal raw batch counts (a custom shard): an error on both ranks instead of a hang.
            loader = MediaLoader(
                FakeDataset(NUM_CLIPS + 2 * BATCH * rank, frozenset()),
                batch_size=BATCH,
                shuffle=False,
                frontend=None,
                sync_ranks=True,
            )
            with pytest.raises(RuntimeError, match="different numbers of batches") as info:
                list(loader)
            record["unequal_error"] = str(info.value)
        finally:
            dist.destroy_process_group()
    except BaseException:
        record["error"] = traceback.format_exc()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict[str, Any]]:
    """The records of both ranks (spawned processes, joined with a deadline)."""
    out = tmp_path_factory.mktemp("ddp")
    init_method = (out / "store").resolve().as_uri()
    context = mp.get_context("spawn")
    procs = [context.Process(target=run_rank, args=(rank, init_method, str(out))) for rank in range(WORLD)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(JOIN_SECONDS)
    hung = [rank for rank, proc in enumerate(procs) if proc.is_alive()]
    for rank in hung:
        procs[rank].kill()
        procs[rank].join()
    assert not hung, f"ranks {hung} did not finish within {JOIN_SECONDS} s (a collective hung?)"
    records = []
    for rank, proc in enumerate(procs):
        path = out / f"rank{rank}.json"
        assert path.is_file(), f"rank {rank} wrote no record (exit code {proc.exitcode})"
        record = json.loads(path.read_text())
        assert "error" not in record, f"rank {rank} failed:\n{record['error']}"
        records.append(record)
    return records


def test_default_is_on_under_a_padded_group(ranks):
    assert [r["default_sync"] for r in ranks] == [True, True]


def test_an_emptied_batch_is_skipped_on_every_rank(ranks):
    sync = [r["sync"] for r in ranks]
    assert [s["batches"] for s in sync] == [3, 3], "both ranks take the same number of steps"
    assert [len(s["ids"]) for s in sync] == [3, 3]
    assert all(all(s["steps_agree"]) for s in sync), "the ranks' steps line up collective for collective"
    assert [[d[0] for d in s["dropped"]] for s in sync] == [[EMPTIED_STEP], [EMPTIED_STEP]]
    assert sync[0]["dropped"] == [[EMPTIED_STEP, ["clip4", "clip6"], EMPTIED_ELSEWHERE]]
    assert sync[1]["dropped"] == [[EMPTIED_STEP, [], EMPTIED_HERE]]
    assert [s["dropped_batches"] for s in sync] == [1, 1]
    assert sync[0]["ids"] == [["clip0", "clip2"], ["clip8", "clip10"], ["clip12", "clip14"]]
    assert sync[1]["ids"] == [["clip1", "clip3"], ["clip11"], ["clip13", "clip15"]], "a partial batch is kept"
    assert [s["loaded"] for s in sync] == [6, 5]
    assert sync[0]["skipped"] == [] and sync[1]["skipped"] == ["clip5", "clip7", "clip9"]
    assert "1 batches dropped" in sync[0]["text"] and EMPTIED_ELSEWHERE in sync[0]["text"]
    assert "clip4, clip6" in sync[0]["text"]


def test_without_sync_the_ranks_fall_out_of_step(ranks):
    """What the synchronisation prevents: rank 1 yields one batch fewer (DDP would hang on its next all-reduce)."""
    nosync = [r["nosync"] for r in ranks]
    assert [s["batches"] for s in nosync] == [4, 3]
    assert [len(s["ids"]) for s in nosync] == [4, 3]
    assert nosync[0]["dropped"] == [] and "dropped" not in nosync[0]["text"]
    assert nosync[1]["dropped"] == [[EMPTIED_STEP, [], EMPTIED_HERE]]


def test_unpadded_shards_are_not_synchronised(ranks):
    for record in ranks:
        assert record["unpadded_default_sync"] is False and record["single_shard_default_sync"] is False
        assert "pad=False" in record["unpadded_error"] and "hang" in record["unpadded_error"]


def test_unequal_batch_counts_raise_instead_of_hanging(ranks):
    assert "rank 0 ended its pass" in ranks[0]["unequal_error"]
    assert "rank 1 had a raw batch" in ranks[1]["unequal_error"]


def test_sync_without_a_process_group_is_refused():
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="process group"):
        make_loader(sync_ranks=True)
    loader = make_loader()
    assert loader.sync_ranks is False
    assert sum(1 for _ in loader) == NUM_CLIPS // BATCH, "one shard of all clips: no batch loses all of them"
    assert loader.last_summary.dropped_batches == 0 and len(loader.last_summary.skipped) == len(BAD)
