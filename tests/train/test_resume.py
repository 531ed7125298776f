"""Resume is exact: a run stopped after epoch 1 and resumed is indistinguishable from one that never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stgcma_fast.checkpoint import read_checkpoint
from stgcma_fast.train.config import load_run_config
from stgcma_fast.train.distributed import DistInfo
from stgcma_fast.train.run import evaluate_checkpoint
from stgcma_fast.train.trainer import Trainer

from .conftest import TINY_OVERRIDES


class Stop(Exception):
    pass


def _cfg(*extra: str, epochs: int = 3):
    # Everything stochastic stays ON (dropout, drop-path, audio mixup, SpecAugment, crop/flip), so resume must
    # restore every RNG for the losses to match.
    return load_run_config("ave", None, [*TINY_OVERRIDES, f"optim.epochs={epochs}", "optim.average_from_epoch=1",
                                         "optim.ema_decay=0.5", *extra])


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _drop_times(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in records]


def test_resumed_run_equals_uninterrupted(tiny_ave: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg()
    straight = Trainer(cfg, tmp_path / "straight", tiny_ave, DistInfo())
    report_a = straight.fit()

    interrupted = Trainer(cfg, tmp_path / "resumed", tiny_ave, DistInfo())
    real_train_epoch = Trainer.train_epoch
    calls = {"n": 0}

    def train_epoch_then_die(self):
        calls["n"] += 1
        if calls["n"] == 2:  # killed during epoch 2, after epoch 1's checkpoint was written
            raise Stop
        return real_train_epoch(self)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch_then_die)
    with pytest.raises(Stop):
        interrupted.fit()
    monkeypatch.setattr(Trainer, "train_epoch", real_train_epoch)
    assert read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["extra"]["epoch"] == 1

    torch.manual_seed(12345)  # a fresh process would start from other RNG states: resume must restore them all
    resumed = Trainer(cfg, tmp_path / "resumed", tiny_ave, DistInfo())
    resumed.resume()
    report_b = resumed.fit()

    assert _drop_times(_records(tmp_path / "resumed")) == _drop_times(_records(tmp_path / "straight"))
    assert report_b["val"] == report_a["val"] and report_b["test"] == report_a["test"]
    assert report_b["selected"] == report_a["selected"]
    for name in ("last.pt", "selected.pt", "best.pt"):
        a = read_checkpoint(tmp_path / "straight" / "checkpoints" / name)
        b = read_checkpoint(tmp_path / "resumed" / "checkpoints" / name)
        assert a["state_dict"].keys() == b["state_dict"].keys()
        for key in a["state_dict"]:
            assert torch.equal(a["state_dict"][key], b["state_dict"][key]), f"{name}: {key} differs after resume"
    opt_a = read_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["optimizer"]["state"]
    opt_b = read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["optimizer"]["state"]
    for key in opt_a:
        assert torch.equal(opt_a[key]["exp_avg"], opt_b[key]["exp_avg"])


def test_resume_refuses_another_config(tiny_ave: Path, tmp_path: Path) -> None:
    cfg = _cfg(epochs=1)
    Trainer(cfg, tmp_path / "run", tiny_ave, DistInfo()).fit()
    other = Trainer(_cfg("optim.lr=2e-3", epochs=1), tmp_path / "run", tiny_ave, DistInfo())
    before = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ValueError, match="another config.*optim"):
        other.resume()
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == before


def test_eval_of_selected_checkpoint_equals_the_trainers_test_number(tiny_ave: Path, tmp_path: Path) -> None:
    report = Trainer(_cfg(epochs=1), tmp_path / "run", tiny_ave, DistInfo()).fit()
    result = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "selected.pt", tiny_ave, "test", DistInfo())
    assert result["metrics"]["accuracy"] == report["test"]["accuracy"]
    assert result["metrics"]["confusion"] == report["test"]["confusion"]
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["test"]["accuracy"] == report["test"]["accuracy"]
    for key in ("task", "select_on", "seed", "val", "test"):
        assert key in saved
    assert {"accuracy", "majority_accuracy"} <= set(saved["test"])
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "curves.png").is_file()
    assert (tmp_path / "run" / "test_confusion.png").is_file()
