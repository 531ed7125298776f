"""The task interface the trainer runs: a task builds its head (and decoder), names its loaders, maps a batch to a
loss and predictions, and accumulates its metrics.

The engine (:mod:`stgcma_fast.train`) knows nothing about any one task. A task is a :class:`Task` subclass registered
under its name (``ave`` now; ``avs-s4`` and ``avqa`` plug in the same way)::

    task = get_task("ave")(options)                       # options: the task's own dataclass (config section)
    head = task.build_head(model)                         # nn.Module, trained with the head learning rate
    loader = task.build_loader(data, "train", train=True, batch_size=8, seed=0, device=device)
    result = task.step(model, head, batch, train=True, generator=g)   # StepResult(loss, outputs, ...)
    metrics = task.new_metrics(); metrics.update(result.outputs, batch)
    counts = metrics.state()      # sums of counts: the trainer all-reduces them with SUM across DDP ranks
    metrics.load_state(reduced); metrics.compute()  # {"accuracy": ..., ...}; task.primary_metric selects

Metrics are reduced as SUMS OF COUNTS, never as means of means: :meth:`Metrics.state` returns tensors whose
element-wise sum over ranks (or over batches) is the state of the union of what the ranks saw.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import torch.nn as nn

from stgcma_fast.core import STGCMABase


@dataclasses.dataclass
class StepResult:
    """What :meth:`Task.step` returns for one batch.

    loss: scalar tensor to back-propagate (mean over the batch's examples, as the task defines it).
    outputs: whatever :meth:`Metrics.update` needs (detached predictions, on any device).
    num_examples: examples in the batch (clips), for sample-weighted loss logging.
    """

    loss: torch.Tensor
    outputs: Any
    num_examples: int


class Loader(Protocol):
    """What the trainer needs of a task's loader (``stgcma_fast.data`` loaders satisfy it)."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


class Metrics(abc.ABC):
    """Accumulates one task's evaluation metrics over batches (and DDP ranks) as sums of counts."""

    @abc.abstractmethod
    def update(self, outputs: Any, batch: dict[str, Any]) -> None:
        """Add one batch: ``outputs`` from :attr:`StepResult.outputs`, ``batch`` as the loader yielded it."""

    @abc.abstractmethod
    def state(self) -> dict[str, torch.Tensor]:
        """The accumulated counts (float64 / int64 CPU tensors of fixed shapes); summing two states element-wise
        gives the state of both halves together."""

    @abc.abstractmethod
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the accumulated counts (e.g. by their sum over ranks)."""

    @abc.abstractmethod
    def compute(self) -> dict[str, Any]:
        """The metrics: floats for scalars (the selection metric among them), lists for per-class values."""

    def save_artifacts(self, out_dir: Path, prefix: str) -> list[Path]:
        """Write figures (e.g. a confusion matrix PNG) into ``out_dir``; returns the files written."""
        return []


class Task(abc.ABC):
    """One audio-visual task on STG-CMA features. See the module doc for how the trainer calls it."""

    name: ClassVar[str]
    primary_metric: ClassVar[str]  # key of Metrics.compute() used to select the best epoch (higher is better)
    options_type: ClassVar[type]  # the dataclass of the task's options (the config's task section)

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.options_type()
        if not isinstance(self.options, self.options_type):
            raise TypeError(f"expected {self.options_type.__name__} options for task {self.name!r}, "
                            f"got {type(self.options).__name__}")

    @abc.abstractmethod
    def build_head(self, model: STGCMABase) -> nn.Module:
        """The task's trainable head (and decoder) for ``model`` (read its widths, e.g. ``model.embed_dim``)."""

    @abc.abstractmethod
    def build_loader(self, root: Path, split: str, *, train: bool, batch_size: int, seed: int,
                     device: torch.device, model: STGCMABase, num_workers: int = 0,
                     rank: int | None = None, world_size: int | None = None) -> Loader:
        """The loader of ``split`` under the dataset folder ``root``; ``train`` turns on shuffling and
        augmentation; frames are sized and normalised for ``model``'s backbone. Sharded over DDP ranks."""

    @abc.abstractmethod
    def step(self, model: nn.Module, head: nn.Module, batch: dict[str, Any], *, train: bool,
             generator: torch.Generator | None = None) -> StepResult:
        """Forward one batch: model features -> head -> loss and predictions. Training-time batch augmentation
        (mixup, SpecAugment) happens here, drawn from ``generator`` so runs are reproducible."""

    @abc.abstractmethod
    def new_metrics(self) -> Metrics:
        """An empty metrics accumulator."""

    @abc.abstractmethod
    def make_synthetic(self, root: Path, *, seed: int = 0, small: bool = True) -> Path:
        """Write (once) a generated dataset in the real layout under ``root`` whose labels need both pictures and
        sounds; returns the dataset folder to pass as ``root`` to :meth:`build_loader`."""

    def describe(self, metrics: dict[str, Any]) -> str:
        """A short human-readable table of ``metrics`` for the console."""
        return "\n".join(f"  {k:<24}{v:.4f}" for k, v in metrics.items() if isinstance(v, float))


_REGISTRY: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make ``cls`` available as ``get_task(cls.name)``."""
    _REGISTRY[cls.name] = cls
    return cls


def task_names() -> list[str]:
    _load_builtin_tasks()
    return sorted(_REGISTRY)


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name``; a ValueError lists the known ones."""
    _load_builtin_tasks()
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def _load_builtin_tasks() -> None:
    import importlib

    for module in BUILTIN_TASK_MODULES:
        importlib.import_module(module)


BUILTIN_TASK_MODULES: Iterable[str] = ("stgcma_fast.tasks.ave",)
