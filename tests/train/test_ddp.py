"""DDP equals one process: two gloo ranks with the same GLOBAL batch give the same metrics and weights as one process,
and a rank that meets corrupt clips does not hang the other."""

from __future__ import annotations

import datetime
import json
import shutil
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stgcma_fast.checkpoint import read_checkpoint
from stgcma_fast.train.config import load_run_config
from stgcma_fast.train.distributed import DistInfo, init_distributed
from stgcma_fast.train.trainer import Trainer

from .conftest import DETERMINISTIC_OVERRIDES, TINY_OVERRIDES

WORLD = 2
JOIN_SECONDS = 240


def _cfg(*extra: str):
    return load_run_config("ave", None, [*TINY_OVERRIDES, *DETERMINISTIC_OVERRIDES, *extra])


def run_rank(rank: int, init_method: str, data: str, out: str, extra: list[str]) -> None:
    record: dict = {}
    try:
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD,
                                timeout=datetime.timedelta(seconds=60))
        try:
            info = init_distributed("cpu")
            assert (info.rank, info.world_size) == (rank, WORLD)
            report = Trainer(_cfg(*extra), out, data, info).fit()
            record = {"test": report["test"], "val": report["val"]}
        finally:
            dist.destroy_process_group()
    except BaseException:
        record["error"] = traceback.format_exc()
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))


def _spawn(data: Path, out: Path, extra: list[str]) -> list[dict]:
    store = out.parent / f"{out.name}.store"
    context = mp.get_context("spawn")
    procs = [context.Process(target=run_rank, args=(r, store.resolve().as_uri(), str(data), str(out), extra))
             for r in range(WORLD)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(JOIN_SECONDS)
    hung = [r for r, proc in enumerate(procs) if proc.is_alive()]
    for r in hung:
        procs[r].kill()
        procs[r].join()
    assert not hung, f"ranks {hung} did not finish within {JOIN_SECONDS} s (a collective hung?)"
    records = []
    for r in range(WORLD):
        record = json.loads((out / f"rank{r}.json").read_text())
        assert "error" not in record, f"rank {r} failed:\n{record['error']}"
        records.append(record)
    return records


def test_two_ranks_equal_one_process(tiny_ave: Path, tmp_path: Path) -> None:
    single = Trainer(_cfg(), tmp_path / "single", tiny_ave, DistInfo()).fit()
    records = _spawn(tiny_ave, tmp_path / "ddp", [])
    for record in records:  # every rank computed the same reduced metrics
        assert record["test"]["confusion"] == single["test"]["confusion"]
        assert record["val"]["accuracy"] == single["val"]["accuracy"]
    a = read_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["state_dict"]
    assert a.keys() == b.keys()
    for key in a:  # same updates up to the order of floating-point sums (gradient all-reduce)
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if ".up." in k), "the adapters trained"


def test_a_rank_with_corrupt_clips_does_not_hang(tiny_ave: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_ave, data)
    videos = sorted((data / "AVE").iterdir())
    for video in videos[:3]:  # three damaged training or evaluation clips, wherever the shards put them
        video.write_bytes(video.read_bytes()[:200])
    records = _spawn(data, tmp_path / "ddp", ["data.batch_size=2", "optim.epochs=1"])
    assert records[0]["test"]["num_seconds"] == records[1]["test"]["num_seconds"]
    metrics = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    epoch = [r for r in metrics if r["kind"] == "epoch"][-1]
    assert epoch["epoch"] == 1
    train_ids = {line.split("&")[1] for line in (data / "trainSet.txt").read_text().splitlines()}
    damaged_train = {v.stem for v in videos[:3]} & train_ids
    reported = {s.split(" ")[0] for s in epoch["skipped"]}
    assert reported == damaged_train, "rank 0 reports every rank's skipped training clips"
