"""``stgcma-fast train`` / ``eval`` end to end on the tiny set, and their one-line usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stgcma_fast.cli import main
from stgcma_fast.tasks.base import StepResult
from stgcma_fast.train.config import load_run_config
from stgcma_fast.train.distributed import DistInfo
from stgcma_fast.train.trainer import NonFiniteLossError, Trainer

from .conftest import TINY_OVERRIDES

ONE_EPOCH = [*TINY_OVERRIDES, "optim.epochs=1"]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_train_then_eval(tiny_ave: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["train", "ave", "--data", str(tiny_ave), "--out", str(run), *ONE_EPOCH]) == 0
    printed = capsys.readouterr().out
    assert "| majority class" in printed and "test accuracy" in printed
    report = json.loads((run / "report.json").read_text())
    assert report["task"] == "ave" and report["select_on"] == "val" and report["seed"] == 0
    assert {"accuracy", "majority_accuracy", "per_class_accuracy", "confusion"} <= set(report["test"])
    assert report["versions"]["torch"] == torch.__version__
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    assert main(["eval", "ave", "--checkpoint", str(run / "checkpoints" / "selected.pt"), "--data", str(tiny_ave),
                 "--json", str(tmp_path / "eval.json")]) == 0
    assert f"test accuracy: {report['test']['accuracy']:.4f}" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"]["accuracy"] == report["test"]["accuracy"]
    # --resume of a finished run does no more training and reports the same numbers
    before = (run / "checkpoints" / "last.pt").read_bytes()
    assert main(["train", "ave", "--out", str(run), "--resume"]) == 0
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    assert json.loads((run / "report.json").read_text())["test"] == report["test"]


def test_select_on_test_says_so(tiny_ave: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["train", "ave", "--data", str(tiny_ave), "--out", str(run), "--select-on", "test",
                 *ONE_EPOCH]) == 0
    assert "selected on TEST" in capsys.readouterr().out
    report = json.loads((run / "report.json").read_text())
    assert report["select_on"] == "test" and "authors' protocol" in report["protocol"]


def test_seeds_report_mean_and_std(tiny_ave: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "ave", "--data", str(tiny_ave), "--out", str(run), *ONE_EPOCH, "--seeds", "0", "1"]) == 0
    report = json.loads((run / "report.json").read_text())
    runs = [json.loads((run / f"seed_{s}" / "report.json").read_text()) for s in (0, 1)]
    assert [r["seed"] for r in runs] == [0, 1]
    accs = [r["test"]["accuracy"] for r in runs]
    assert report["test"]["accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
    assert report["test"]["accuracy"]["std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)


@pytest.mark.parametrize("args, names", [
    (["train", "ave", "--out", "{tmp}/r"], "--data"),
    (["train", "ave", "--data", "{tmp}/missing", "--out", "{tmp}/r"], "--data"),
    (["train", "ave", "--data", "{data}", "--out", "{tmp}/r", "optim.lr=fast"], "optim.lr"),
    (["train", "ave", "--data", "{data}", "--out", "{tmp}/r", "optim.nope=1"], "optim.nope"),
    (["train", "ave", "--data", "{data}", "--out", "{tmp}/r", "notakey"], "notakey"),
    (["train", "ave", "--data", "{data}", "--out", "{tmp}/full"], "--out"),
    (["train", "ave", "--out", "{tmp}/r", "--resume"], "config.yaml"),
    (["train", "ave", "--out", "{tmp}/full", "--resume", "optim.lr=1"], "--resume"),
    (["train", "avs", "--data", "{data}"], "avs"),
    (["train", "ave", "--data", "{data}", "--seeds", "-1"], "--seeds"),
    (["eval", "ave", "--checkpoint", "{tmp}/none.pt", "--data", "{data}"], "--checkpoint"),
    (["eval", "ave", "--checkpoint", "{tmp}/full/x", "--data", "{data}", "--synthetic"], "--synthetic"),
    (["eval", "ave", "--checkpoint", "{tmp}/full/x"], "--data"),
    (["eval", "ave", "--checkpoint", "{tmp}/full/x", "--data", "{data}"], "full/x"),
])
def test_usage_errors_are_one_line_and_change_nothing(args: list[str], names: str, tiny_ave: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"not a checkpoint")
    before = _snapshot(tmp_path)
    argv = [a.format(tmp=tmp_path, data=tiny_ave) for a in args]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert names in line, line
    assert _snapshot(tmp_path) == before


def test_non_finite_loss_stops_naming_step_and_clips(tiny_ave: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_run_config("ave", None, ONE_EPOCH)
    trainer = Trainer(cfg, tmp_path / "run", tiny_ave, DistInfo())
    real_step = trainer.task.step
    calls = {"n": 0}

    def step(*args, **kwargs) -> StepResult:
        result = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            result.loss = result.loss * float("nan")
        return result

    monkeypatch.setattr(trainer.task, "step", step)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    text = str(info.value)
    assert "epoch 1, optimizer step 1" in text and "clip ids [" in text
    train_ids = {line.split("&")[1] for line in (tiny_ave / "trainSet.txt").read_text().splitlines()}
    named = text.split("clip ids [")[1].split("]")[0].replace("'", "").split(", ")
    assert named and set(named) <= train_ids
