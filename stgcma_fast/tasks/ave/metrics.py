"""AVE metrics: a confusion matrix over every evaluated second, and what the paper and a fair reading need from it.

The state is one (C, C) int64 confusion matrix (rows: true class, columns: predicted class), so states of batches
or DDP ranks add up. :meth:`AveMetrics.compute` gives

- ``accuracy``: correct seconds / all seconds, background included (the paper's metric: 4,020 test seconds);
- ``per_class_accuracy``: per true class (``None`` for a class absent from the labels) and
  ``mean_class_accuracy``, their mean over the present classes;
- ``majority_accuracy``: the accuracy of always predicting the evaluated split's most frequent class (the best
  constant predictor), the floor a model must beat;
- ``num_seconds`` and ``confusion`` (list of lists).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from stgcma_fast.data.ave import AVE_CATEGORIES
from stgcma_fast.tasks.base import Metrics

ANNOTATE_MAX_CLASSES = 12  # counts are written into the cells of confusion plots with at most this many classes


def ave_class_names(num_classes: int) -> list[str]:
    """Names of AVE's classes: the 28 events of :data:`AVE_CATEGORIES` then ``"background"`` (for 29 classes);
    other counts get ``class <i>``."""
    names = [*AVE_CATEGORIES, "background"]
    return names if num_classes == len(names) else [f"class {i}" for i in range(num_classes)]


class AveMetrics(Metrics):
    """Confusion-matrix accumulator of per-second AVE predictions (see the module doc).

    ``update(outputs, batch)`` reads ``outputs["pred"]`` and ``outputs["labels"]``, two (B, M) integer tensors.
    """

    def __init__(self, num_classes: int = len(AVE_CATEGORIES) + 1, class_names: Sequence[str] | None = None) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(f"expected num_classes to be an int >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else ave_class_names(num_classes)
        if len(self.class_names) != num_classes:
            raise ValueError(f"expected {num_classes} class names, got {len(self.class_names)}")
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any] | None = None) -> None:
        pred, labels = outputs["pred"], outputs["labels"]
        if pred.shape != labels.shape:
            raise ValueError(f"expected pred and labels of one shape, got {tuple(pred.shape)} and "
                             f"{tuple(labels.shape)}")
        pred, labels = pred.detach().reshape(-1).cpu().long(), labels.detach().reshape(-1).cpu().long()
        c = self.num_classes
        for name, x in (("pred", pred), ("labels", labels)):
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= c):
                raise ValueError(f"expected {name} in [0, {c}), got values in [{int(x.min())}, {int(x.max())}]")
        self.confusion += torch.bincount(labels * c + pred, minlength=c * c).reshape(c, c)

    def state(self) -> dict[str, torch.Tensor]:
        return {"confusion": self.confusion.clone()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        confusion = state["confusion"]
        if tuple(confusion.shape) != (self.num_classes, self.num_classes):
            raise ValueError(f"expected a confusion state of shape ({self.num_classes}, {self.num_classes}), got "
                             f"{tuple(confusion.shape)}")
        self.confusion = confusion.detach().cpu().to(torch.int64).clone()

    def compute(self) -> dict[str, Any]:
        """The metrics of the module doc; with no seconds accumulated the rates are NaN."""
        cm = self.confusion
        total = int(cm.sum())
        support = cm.sum(dim=1)
        correct = cm.diagonal()
        per_class = [float(correct[i]) / int(support[i]) if int(support[i]) else None for i in range(self.num_classes)]
        present = [a for a in per_class if a is not None]
        nan = math.nan
        return {
            "accuracy": float(correct.sum()) / total if total else nan,
            "mean_class_accuracy": sum(present) / len(present) if present else nan,
            "majority_accuracy": int(support.max()) / total if total else nan,
            "num_seconds": total,
            "per_class_accuracy": per_class,
            "confusion": cm.tolist(),
        }

    def save_artifacts(self, out_dir: Path, prefix: str) -> list[Path]:
        """``<out_dir>/<prefix>confusion.png``: the confusion matrix normalised per row (true class), with the
        counts written in the cells for small matrices; classes that neither occur nor are predicted are left out."""
        from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone (savefig uses Agg)

        cm = self.confusion
        keep = [i for i in range(self.num_classes) if int(cm[i].sum()) or int(cm[:, i].sum())]
        if not keep:
            return []
        sub = cm[keep][:, keep].to(torch.float64)
        rows = sub.sum(dim=1, keepdim=True)
        norm = torch.where(rows > 0, sub / rows.clamp(min=1), torch.zeros_like(sub))
        names = [self.class_names[i] for i in keep]
        n = len(keep)
        side = max(4.0, 0.35 * n + 2.5)
        fig = Figure(figsize=(side + 1.0, side))
        ax = fig.subplots()
        image = ax.imshow(norm.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
        ax.set_xticks(range(n), names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        total = int(cm.sum())
        accuracy = float(cm.diagonal().sum()) / total if total else math.nan
        ax.set_title(f"{prefix.rstrip('_-. ') or 'confusion'}: accuracy {accuracy:.3f} over {total} seconds",
                     fontsize=9)
        if n <= ANNOTATE_MAX_CLASSES:
            for r in range(n):
                for c in range(n):
                    if sub[r, c]:
                        ax.text(c, r, str(int(sub[r, c])), ha="center", va="center", fontsize=7,
                                color="white" if norm[r, c] > 0.5 else "black")
        fig.tight_layout()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{prefix}confusion.png"
        tmp = path.with_name(f".{path.stem}.tmp.png")
        fig.savefig(tmp, dpi=120, format="png")
        tmp.replace(path)
        return [path]
