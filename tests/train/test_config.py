"""Run configs: overrides, strict validation before anything runs, every shipped config loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from stgcma_fast.resources import list_configs
from stgcma_fast.train.config import ConfigError, load_run_config, parse_override


def test_overrides_parse_yaml_scalars() -> None:
    assert parse_override("optim.lr=1e-4") == (["optim", "lr"], 1e-4)  # YAML 1.1 would read a string
    assert parse_override("model.config.branches=video") == (["model", "config", "branches"], "video")
    assert parse_override('model.config.adapter="0.5"') == (["model", "config", "adapter"], "0.5")
    assert parse_override("model.config.stages=[temporal, global]")[1] == ["temporal", "global"]
    assert parse_override("optim.clip_grad_norm=null")[1] is None


def test_overrides_reach_every_section() -> None:
    cfg = load_run_config("ave", None, ["optim.lr=3e-4", "model.config.branches=video", "ave.mixup_prob=0",
                                        "run.select_on=test", "data.batch_size=4"])
    assert cfg.optim.lr == 3e-4 and cfg.task_options.mixup_prob == 0.0 and cfg.run.select_on == "test"
    assert cfg.model.stgcma_config().branches == "video" and cfg.data.batch_size == 4
    again = load_run_config("ave", None, [f"{k}={v}" for k, v in [("optim.lr", 3e-4)]])
    assert again.to_dict()["optim"]["lr"] == 3e-4


@pytest.mark.parametrize("override, names", [
    ("optim.lrr=1", "optim.lrr"),
    ("optimizer.lr=1", "optimizer"),
    ("optim.lr=fast", "optim.lr"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.epochs=2.5", "optim.epochs"),
    ("optim.amp=fp8", "optim.amp"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("optim.min_lr=1", "optim.min_lr"),
    ("optim.average_from_epoch=30", "optim.average_from_epoch"),
    ("data.batch_size=0", "data.batch_size"),
    ("run.select_on=train", "run.select_on"),
    ("run.progress=yes please", "run.progress"),
    ("model.preset=clip-b99", "model.preset"),
    ('model.config.drop_path_rate="0.1"', "drop_path_rate"),
    ("model.config.colour=blue", "colour"),
    ("ave.mixup_prob=2", "mixup_prob"),
    ("ave.label_smoothing=true", "label_smoothing"),
])
def test_bad_values_name_the_key(override: str, names: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config("ave", None, [override])
    assert names in str(info.value)


def test_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: ave\noptim:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+"):
        load_run_config("ave", bad)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"task: ave\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin\.yaml: line 2: not valid UTF-8"):
        load_run_config("ave", latin)
    other = tmp_path / "other.yaml"
    other.write_text("task: avqa\n")
    with pytest.raises(ConfigError, match="for task 'avqa'"):
        load_run_config("ave", other)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("task: ave\noptimiser:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"unknown\.yaml: unknown top-level keys \['optimiser'\]"):
        load_run_config("ave", unknown)
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config("ave", tmp_path / "missing.yaml")


def test_every_shipped_config_loads_and_round_trips(tmp_path: Path) -> None:
    paths = list_configs("ave")
    names = {p.stem for p in paths}
    assert {"clip-b16-tiny", "clip-b16-base", "clip-l14-tiny", "clip-l14-base", "synthetic", "synthetic-full",
            "default"} <= names
    assert sum(name.startswith("ablation-") for name in names) >= 8
    for path in paths:
        cfg = load_run_config("ave", path)
        resolved = tmp_path / f"{path.stem}.yaml"
        resolved.write_text(cfg.to_yaml())
        assert load_run_config("ave", resolved).to_dict() == cfg.to_dict(), path.name
    ablation = load_run_config("ave", [p for p in paths if p.stem == "ablation-no-temporal"][0])
    assert ablation.model.stgcma_config().stages == ("spatial", "global")
    large = load_run_config("ave", [p for p in paths if p.stem == "clip-l14-base"][0])
    assert large.optim.lr == 5e-5 and large.model.pretrained and large.optim.average_from_epoch == 8
