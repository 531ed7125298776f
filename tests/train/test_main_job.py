"""The main job's configuration and a short deterministic training that beats the majority class in CI."""

from __future__ import annotations

import json
from pathlib import Path

from stgcma_fast.resources import config_path
from stgcma_fast.tasks.ave.synthetic import SYNTHETIC_SMALL, SyntheticAve, make_synthetic_ave
from stgcma_fast.train.config import load_run_config
from stgcma_fast.train.distributed import DistInfo
from stgcma_fast.train.run import run_training

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_cpu_config_is_the_tuned_one() -> None:
    """configs/ave/synthetic.yaml carries the settings the synthetic set was tuned with (no silent drift)."""
    cfg = load_run_config("ave", config_path("ave", "synthetic"))
    s = SYNTHETIC_SMALL
    model = cfg.model.stgcma_config()
    assert model == s.model_config()
    assert (cfg.data.batch_size, cfg.optim.epochs, cfg.optim.lr, cfg.optim.head_lr_scale, cfg.optim.warmup_epochs,
            cfg.optim.min_lr) == (s.batch_size, s.epochs, s.lr, s.head_lr_scale, s.warmup_epochs, s.min_lr)
    for key, value in s.task_options.items():
        assert getattr(cfg.task_options, key) == value, key
    assert cfg.data.synthetic and cfg.run.compare_branches and cfg.run.select_on == "val"


def test_short_training_beats_the_majority_class(tmp_path: Path) -> None:
    """A reduced synthetic set (fewer clips and classes) and the main job's model, a few epochs: the audio-visual
    model must clearly beat the best constant predictor on test. Deterministic (CPU, fixed seeds)."""
    settings = SyntheticAve(**{**SYNTHETIC_SMALL.__dict__, "clips": 60, "num_events": 4})
    root = make_synthetic_ave(tmp_path / "data", seed=0, settings=settings)
    cfg = load_run_config("ave", config_path("ave", "synthetic"), [
        "run.compare_branches=false", "optim.epochs=6", "data.num_workers=0", "run.progress=false",
        "run.tensorboard=false", "data.batch_size=4"])
    report = run_training(cfg, tmp_path / "run", root, DistInfo())
    test = report["test"]
    assert test["accuracy"] >= test["majority_accuracy"] + 0.15, test
    again = json.loads((tmp_path / "run" / "report.json").read_text())
    assert again["test"]["accuracy"] == test["accuracy"]


def test_readme_shows_a_recorded_run() -> None:
    """The README's recorded main job is rendered from docs/results (never typed by hand) and shows all three
    runs beating the majority class, the audio-visual one first."""
    import importlib.util

    script = README.parent / "scripts" / "record_main_job.py"
    spec = importlib.util.spec_from_file_location("record_main_job", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    record = json.loads(module.RESULT.read_text())
    assert module.render(record) in README.read_text(encoding="utf-8")
    report = record["report"]
    av, video, audio = (report["test"]["accuracy"], report["baselines"]["video"]["test"]["accuracy"],
                        report["baselines"]["audio"]["test"]["accuracy"])
    assert av > max(video, audio, report["test"]["majority_accuracy"])
