"""Whole runs on top of :class:`~stgcma_fast.train.trainer.Trainer`: several seeds, the single-branch comparison,
synthetic data, the printed summary, and evaluating a saved checkpoint."""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from stgcma_fast.checkpoint import load_checkpoint, read_checkpoint
from stgcma_fast.tasks import get_task
from stgcma_fast.train.config import RunConfig, build_run_config
from stgcma_fast.train.distributed import DistInfo, all_reduce_sum, barrier
from stgcma_fast.train.runlog import environment, write_json
from stgcma_fast.train.trainer import Trainer, amp_dtype, build_task_model, frozen_fingerprint

BRANCH_RUNS = {"audio-visual": "audio-visual", "video": "video only", "audio": "audio only"}


def cache_dir() -> Path:
    """``$STGCMA_FAST_CACHE`` or ``~/.cache/stgcma_fast``."""
    return Path(os.environ.get("STGCMA_FAST_CACHE", Path.home() / ".cache" / "stgcma_fast"))


def synthetic_root(task: str, dist: DistInfo, stream=None) -> Path:
    """Generate (once, on rank 0) the task's synthetic dataset in the cache; every rank gets its folder."""
    task_obj = get_task(task)()
    base = cache_dir() / "synthetic" / task
    if dist.is_main:
        print(f"synthetic {task} data: {base} (generated once, then reused)", file=stream or sys.stdout, flush=True)
        root = task_obj.make_synthetic(base, seed=0, small=True)
    barrier(dist)
    if not dist.is_main:
        root = task_obj.make_synthetic(base, seed=0, small=True)  # finds the completed set: no writing
    return Path(root)


def train_one(cfg: RunConfig, out: Path, data_root: Path, dist: DistInfo, resume: bool, stream) -> dict[str, Any]:
    trainer = Trainer(cfg, out, data_root, dist, stream=stream)
    if resume and (out / "checkpoints" / "last.pt").is_file():
        trainer.resume()
    return trainer.fit()


def run_training(cfg: RunConfig, out: Path, data_root: Path, dist: DistInfo, resume: bool = False,
                 stream=None) -> dict[str, Any]:
    """Train ``cfg`` into ``out``; with ``run.compare_branches`` also the video-only and audio-only runs (under
    ``out/baselines/``), reported beside it. Returns the main run's report (with ``baselines`` added)."""
    stream = stream or sys.stdout
    report = train_one(cfg, out, data_root, dist, resume, stream)
    if cfg.run.compare_branches and cfg.model.stgcma_config().branches == "audio-visual":
        report["baselines"] = {}
        for branch in ("video", "audio"):
            if dist.is_main:
                print(f"\n--- the same run with branches={branch} (baseline) ---", file=stream, flush=True)
            sub = cfg.replace(**{"model.config.branches": branch, "run.compare_branches": False})
            sub_report = train_one(sub, out / "baselines" / branch, data_root, dist, resume, stream)
            report["baselines"][branch] = {"val": sub_report["val"], "test": sub_report["test"]}
        if dist.is_main:
            write_json(out / "report.json", report)
    if dist.is_main:
        print("\n" + summary_table(report, get_task(cfg.task).primary_metric), file=stream, flush=True)
    return report


def summary_table(report: dict[str, Any], metric: str) -> str:
    """The printed result: the run (and its single-branch baselines) on val and test, and the majority class."""
    rows = [("audio-visual" if "baselines" in report else "this run", report)]
    rows += [(BRANCH_RUNS[b], r) for b, r in report.get("baselines", {}).items()]
    lines = [f"{report['task']} results (selected on {report['select_on']}, seed {report['seed']})",
             f"| {'model':<22} | {'val ' + metric:>14} | {'test ' + metric:>14} |",
             f"|{'-' * 24}|{'-' * 16}|{'-' * 16}|"]
    for name, r in rows:
        lines.append(f"| {name:<22} | {r['val'][metric]:>14.4f} | {r['test'][metric]:>14.4f} |")
    majority = report["test"].get("majority_accuracy")
    if majority is not None:
        lines.append(f"| {'majority class':<22} | {report['val'].get('majority_accuracy', float('nan')):>14.4f} | "
                     f"{majority:>14.4f} |")
    if report["select_on"] == "test":
        lines.append("(selected on TEST, the authors' protocol: the test numbers are optimistic)")
    return "\n".join(lines)


def run_seeds(cfg: RunConfig, seeds: list[int], out: Path, data_root: Path, dist: DistInfo, resume: bool = False,
              stream=None) -> dict[str, Any]:
    """One run per seed under ``out/seed_<s>``; ``out/report.json`` gets every seed's report and the mean and
    (sample) std of each scalar test and val metric."""
    stream = stream or sys.stdout
    reports = []
    for seed in seeds:
        if dist.is_main:
            print(f"\n=== seed {seed} ===", file=stream, flush=True)
        reports.append(run_training(cfg.replace(**{"run.seed": seed}), out / f"seed_{seed}", data_root, dist,
                                    resume, stream))
    summary: dict[str, Any] = {"task": cfg.task, "select_on": cfg.run.select_on, "seeds": seeds,
                               "runs": {str(s): {"val": r["val"], "test": r["test"]} for s, r in zip(seeds, reports)}}
    for split in ("val", "test"):
        keys = [k for k, v in reports[0][split].items() if isinstance(v, float)]
        summary[split] = {k: _mean_std([r[split][k] for r in reports]) for k in keys}
    summary.update(environment())
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "report.json", summary)
        metric = get_task(cfg.task).primary_metric
        m = summary["test"][metric]
        print(f"\n{cfg.task}: test {metric} over seeds {seeds}: {m['mean']:.4f} +- {m['std']:.4f}", file=stream,
              flush=True)
    return summary


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


@torch.no_grad()
def evaluate_checkpoint(path: str | Path, data_root: str | Path, split: str, dist: DistInfo,
                        batch_size: int | None = None, num_workers: int | None = None) -> dict[str, Any]:
    """Metrics of the model saved in ``path`` (a run's ``selected.pt``, ``best.pt`` or ``last.pt``) on ``split``.

    The run's resolved config inside the checkpoint rebuilds the model and head (a backbone without weights from
    the same ``model.init_seed``); a checkpoint whose frozen weights differ from the rebuilt ones is refused."""
    payload = read_checkpoint(path)
    extra = payload.get("extra") or {}
    if "run_config" not in extra:
        raise ValueError(f"checkpoint {path} holds no run config: expected a checkpoint written by "
                         f"`stgcma-fast train` (checkpoints/selected.pt in a run folder)")
    cfg = build_run_config(extra["run_config"], f"{path} (run config)")
    model = build_task_model(cfg, dist.device)
    if extra.get("frozen_fingerprint") is not None and extra["frozen_fingerprint"] != frozen_fingerprint(model):
        raise ValueError(f"checkpoint {path} was trained on other frozen backbone weights than the config rebuilds "
                         f"(model.pretrained / model.checkpoint_path / model.init_seed)")
    load_checkpoint(path, model)
    task = model.task
    world = dist.world_size
    loader = task.build_loader(Path(data_root), split, train=False,
                               batch_size=max(1, (batch_size or cfg.data.eval_batch_size) // world),
                               seed=cfg.run.seed, device=dist.device, model=model.stgcma,
                               num_workers=cfg.data.num_workers if num_workers is None else num_workers,
                               rank=dist.rank, world_size=world)
    model.eval()
    amp = amp_dtype(cfg.optim.amp, dist.device)
    metrics = task.new_metrics()
    for batch in loader:
        with torch.autocast(dist.device.type, dtype=amp, enabled=amp is not None):
            result = model(batch, train=False)
        metrics.update(result.outputs, batch)
    metrics.load_state(all_reduce_sum(metrics.state(), dist))
    return {"task": cfg.task, "split": split, "checkpoint": str(path), "metrics": metrics.compute()}
