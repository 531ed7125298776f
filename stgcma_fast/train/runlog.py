"""What a run writes besides checkpoints (rank 0 only): ``metrics.jsonl``, TensorBoard events, PNG curves, and the
environment facts every report carries (library versions, git commit)."""

from __future__ import annotations

import json
import math
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from stgcma_fast.fileio import atomic_write_text


def environment() -> dict[str, Any]:
    """Library versions, Python, the device and the git commit of the source tree (if it is a checkout)."""
    import timm

    import stgcma_fast

    versions = {"stgcma_fast": stgcma_fast.__version__, "torch": torch.__version__, "timm": timm.__version__,
                "python": platform.python_version()}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:  # pragma: no cover - triton ships with Linux torch
        pass
    commit = None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10, check=False)
        commit = out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"versions": versions, "git_commit": commit, "device": device}


def _clean(value: Any) -> Any:
    """JSON-safe: tensors to numbers/lists, non-finite floats to None."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: dict[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(_clean(data), indent=2) + "\n")


class MetricsLog:
    """``metrics.jsonl``: one JSON record per line (``{"kind": "step" | "epoch" | ..., "epoch": e, ...}``),
    flushed after each record. Resuming after epoch ``e`` first drops records of later epochs, so the file reads
    as if the run had never stopped."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []

    def truncate_after(self, epoch: int) -> None:
        """Keep only records of epochs <= ``epoch`` (0: none)."""
        if not self.enabled:
            return
        kept = []
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    record = json.loads(line)
                    if record.get("epoch", 0) <= epoch:
                        kept.append(record)
        self.records = kept
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = _clean(record)
        self.records.append(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()


class TensorBoard:
    """TensorBoard scalars when the ``tensorboard`` package is installed (``pip install stgcma-fast[tensorboard]``);
    otherwise nothing."""

    def __init__(self, log_dir: Path, enabled: bool) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the extra is not installed
            return
        self.writer = SummaryWriter(str(log_dir))

    def scalars(self, values: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(records: list[dict[str, Any]], metric: str, path: Path) -> Path | None:
    """``curves.png``: training loss and learning rate per logged step, validation ``metric`` per epoch."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a core dependency
        return None
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1)
    axes[0].set(title="training loss", xlabel="optimizer step")
    axes[1].plot([r["step"] for r in steps], [r["lr"] for r in steps], lw=1)
    axes[1].set(title="learning rate (adapters)", xlabel="optimizer step")
    for split in ("val", "test"):
        points = [(r["epoch"], r[split][metric]) for r in epochs if isinstance(r.get(split), dict)
                  and r[split].get(metric) is not None]
        if points:
            axes[2].plot(*zip(*points), marker="o", label=split)
    axes[2].set(title=f"{metric} per epoch", xlabel="epoch")
    axes[2].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path
