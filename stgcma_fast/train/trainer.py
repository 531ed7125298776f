"""The task-agnostic training engine: one :class:`Trainer` runs any :class:`stgcma_fast.tasks.Task`.

Per epoch: train (Adam with adapter / head parameter groups, per-iteration warm-up + cosine, AMP, accumulation,
optional clipping, EMA), evaluate on the selection split, checkpoint (``last.pt`` every epoch, ``best.pt`` for the
best selection metric), log. At the end: pick the selected model among the best epoch, the late-epoch weight
average and the EMA (whichever are enabled) by the selection split, evaluate it ONCE on test (unless the authors'
protocol ``select_on="test"`` was asked for, which the report says), save ``selected.pt`` and ``report.json``.

Determinism and resume: the model is built under ``model.init_seed`` (so a backbone without weights is the same
every time), adapters and head are initialised under ``run.seed``, the data order and augmentation are keyed by
(seed, epoch, clip), and the checkpoint holds every RNG state, so ``resume()`` after epoch ``e`` continues exactly
as the uninterrupted run would have (tested bit for bit on CPU).

DDP: under ``torchrun`` every rank builds the same model, trains on its shard (``data.batch_size`` is the global
batch), averages gradients through ``DistributedDataParallel``, and reduces metrics as sums of counts. Only rank 0
prints, logs and writes.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from stgcma_fast.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from stgcma_fast.fileio import atomic_write_text
from stgcma_fast.modules import TAdapter
from stgcma_fast.tasks import StepResult, Task, get_task
from stgcma_fast.train.averaging import EMA, EpochAverage, swapped_weights
from stgcma_fast.train.config import RunConfig
from stgcma_fast.train.distributed import DistInfo, all_reduce_sum, any_rank, barrier
from stgcma_fast.train.runlog import MetricsLog, TensorBoard, environment, plot_curves, write_json
from stgcma_fast.train.schedule import WarmupCosine


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (and no fp16 grad scaler was there to skip the step)."""


class TaskModel(nn.Module):
    """The STG-CMA model and a task's head as one module (what DDP wraps and checkpoints hold).

    Parameter names: ``stgcma.*`` (the model) and ``head.*`` (the task head). ``forward(batch, train, generator)``
    runs :meth:`Task.step`."""

    def __init__(self, task: Task, stgcma: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.stgcma = stgcma
        self.head = head
        self.task = task

    @property
    def config(self):  # the STGCMAConfig, as the checkpoint layer expects
        return self.stgcma.config

    def forward(self, batch: dict[str, Any], train: bool, generator: torch.Generator | None = None) -> StepResult:
        return self.task.step(self.stgcma, self.head, batch, train=train, generator=generator)


def build_task_model(cfg: RunConfig, device: torch.device) -> TaskModel:
    """Model + head as the config says: backbone (and everything) built under ``model.init_seed``; the trainable
    adapters re-initialised and the head built under ``run.seed``."""
    from stgcma_fast.model import FastSTGCMA

    task = get_task(cfg.task)(cfg.task_options)
    m = cfg.model
    torch.manual_seed(m.init_seed)
    stgcma = FastSTGCMA(m.stgcma_config(), pretrained=m.pretrained, checkpoint_path=m.checkpoint_path,
                        backends=m.backends or None, grad_checkpointing=m.grad_checkpointing,
                        recompute=tuple(m.recompute))
    torch.manual_seed(cfg.run.seed)
    for module in stgcma.modules():
        if isinstance(module, TAdapter):
            module.reset_parameters()
    head = task.build_head(stgcma)
    model = TaskModel(task, stgcma, head).to(device)
    if m.compile:
        stgcma.compile()
    return model


def frozen_fingerprint(model: nn.Module) -> list[float]:
    """Two numbers that identify the frozen weights (sum and sum of squares in float64): a checkpoint records them
    so loading it into a model with another backbone (e.g. another random init) is an error, not silent garbage."""
    total = torch.zeros((), dtype=torch.float64)
    squares = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            if not p.requires_grad:
                q = p.detach().to("cpu", torch.float64)
                total += q.sum()
                squares += (q * q).sum()
    return [float(total), float(squares)]


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG the run draws from, as checkpoint-safe values."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
             "python": [int(x) for x in random.getstate()[1]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclasses.dataclass
class EpochStats:
    loss_sum: float = 0.0
    examples: int = 0
    steps: int = 0
    seconds: float = 0.0


class Trainer:
    """Trains and evaluates one run of ``cfg`` into ``out_dir`` (see the module doc)."""

    def __init__(self, cfg: RunConfig, out_dir: str | Path, data_root: str | Path, dist: DistInfo | None = None,
                 stream=None) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.data_root = Path(data_root)
        self.dist = dist or DistInfo()
        self.device = self.dist.device
        self.stream = stream or sys.stdout
        self.model = build_task_model(cfg, self.device)
        self.task: Task = self.model.task
        self.amp = amp_dtype(cfg.optim.amp, self.device)
        world = self.dist.world_size
        if cfg.data.batch_size % world:
            raise ValueError(f"data.batch_size: expected a multiple of the {world} processes (it is the global "
                             f"batch), got {cfg.data.batch_size}")
        common = {"seed": cfg.run.seed, "device": self.device, "model": self.model.stgcma,
                  "num_workers": cfg.data.num_workers, "rank": self.dist.rank, "world_size": world}
        self.train_loader = self.task.build_loader(self.data_root, "train", train=True,
                                                   batch_size=cfg.data.batch_size // world, **common)
        eval_batch = max(1, cfg.data.eval_batch_size // world)
        self.eval_loaders = {split: self.task.build_loader(self.data_root, split, train=False, batch_size=eval_batch,
                                                           **common) for split in ("val", "test")}
        o = cfg.optim
        head_ids = {id(p) for p in self.model.head.parameters()}
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) not in head_ids], "lr": o.lr, "name": "adapters"},
                  {"params": [p for p in trainable if id(p) in head_ids], "lr": o.lr * o.head_lr_scale,
                   "name": "head"}]
        self.optimizer = torch.optim.Adam([g for g in groups if g["params"]], betas=tuple(o.betas),
                                          weight_decay=o.weight_decay)
        self.steps_per_epoch = max(1, math.ceil(len(self.train_loader) / o.grad_accum))
        total = o.epochs * self.steps_per_epoch
        warmup = min(total - 1, round(o.warmup_epochs * self.steps_per_epoch))
        self.scheduler = WarmupCosine(self.optimizer, warmup, total, o.min_lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp is torch.float16)
        self.generator = torch.Generator().manual_seed(cfg.run.seed)
        self.average = EpochAverage(o.average_from_epoch) if o.average_from_epoch is not None else None
        self.ema = EMA(self.model, o.ema_decay) if o.ema_decay is not None else None
        self.ddp: nn.Module = self.model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None  # {"epoch", "value"}
        main = self.dist.is_main
        self.log = MetricsLog(self.out / "metrics.jsonl", enabled=main)
        self.tb = TensorBoard(self.out / "tensorboard", enabled=main and cfg.run.tensorboard)

    # ------------------------------------------------------------------------------------------- helpers

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"

    def say(self, text: str) -> None:
        if self.dist.is_main:
            print(text, file=self.stream, flush=True)

    def _autocast(self):
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _progress(self, iterable, total: int, desc: str):
        show = self.dist.is_main and self.cfg.run.progress
        return tqdm(iterable, total=total, desc=desc, unit="batch", file=sys.stderr, disable=not show,
                    leave=False, dynamic_ncols=True)

    def _extra(self) -> dict[str, Any]:
        return {"run_config": self.cfg.to_dict(), "epoch": self.epoch, "global_step": self.global_step,
                "history": self.history, "best": self.best, "rng": rng_state(self.generator),
                "average": self.average.state_dict() if self.average is not None else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "frozen_fingerprint": frozen_fingerprint(self.model), "task": self.cfg.task}

    def _save(self, name: str, full: bool) -> Path | None:
        """Write ``checkpoints/<name>`` on rank 0: with optimizer, scheduler, scaler when ``full``."""
        if not self.dist.is_main:
            return None
        path = self.checkpoint_dir / name
        if full:
            return save_checkpoint(path, self.model, self.optimizer, step=self.global_step, extra=self._extra(),
                                   scheduler=self.scheduler, scaler=self.scaler)
        return save_checkpoint(path, self.model, step=self.global_step, extra=self._extra())

    # ------------------------------------------------------------------------------------------- training

    def _check_finite(self, result: StepResult, batch: dict[str, Any]) -> bool:
        """False when the step must be skipped (fp16 scaler); raises when the loss is not finite otherwise."""
        bad = not bool(torch.isfinite(result.loss.detach()).item())
        bad_anywhere = any_rank(bad, self.dist)
        if not bad_anywhere:
            return True
        if self.scaler.is_enabled():
            return False  # the fp16 grad scaler skips the step and lowers its scale
        ids = batch.get("ids", [])
        where = f"rank {self.dist.rank}: " if self.dist.distributed else ""
        raise NonFiniteLossError(
            f"{where}non-finite training loss ({result.loss.item() if bad else 'finite here, not on another rank'}) "
            f"at epoch {self.epoch + 1}, optimizer step {self.global_step}, batch clip ids {list(ids)}; lower "
            f"optim.lr, enable optim.clip_grad_norm, or use optim.amp=bf16/off")

    def _sync_pending_grads(self) -> None:
        """All-reduce gradients accumulated under ``no_sync`` (a shortened last accumulation group)."""
        if not self.dist.distributed:
            return
        import torch.distributed as dist

        for p in self.model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.dist.world_size

    def _optimizer_step(self) -> None:
        o = self.cfg.optim
        if o.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], o.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.global_step += 1
        if self.ema is not None:
            self.ema.update(self.model)

    def train_epoch(self) -> EpochStats:
        cfg, o = self.cfg, self.cfg.optim
        loader = self.train_loader
        loader.set_epoch(self.epoch)
        self.model.train()
        stats = EpochStats()
        window = torch.zeros(2, dtype=torch.float64)  # (loss * examples, examples) since the last log line
        n = len(loader)
        pending = 0
        start = time.perf_counter()
        bar = self._progress(loader, n, f"epoch {self.epoch + 1}/{o.epochs}")
        for i, batch in enumerate(bar):
            syncs = (i + 1) % o.grad_accum == 0 or i == n - 1
            context = self.ddp.no_sync() if self.dist.distributed and not syncs else nullcontext()
            with context:
                with self._autocast():
                    result = self.ddp(batch, train=True, generator=self.generator)
                if not self._check_finite(result, batch):
                    self.optimizer.zero_grad(set_to_none=True)
                    pending = 0
                    continue
                self.scaler.scale(result.loss / o.grad_accum).backward()
            pending += 1
            loss = float(result.loss.detach())
            stats.loss_sum += loss * result.num_examples
            stats.examples += result.num_examples
            window += torch.tensor([loss * result.num_examples, result.num_examples], dtype=torch.float64)
            if syncs:
                self._optimizer_step()
                pending = 0
                stats.steps += 1
                if self.global_step % cfg.run.log_every == 0:
                    window = self._log_step(window, bar)
        if pending:
            self._sync_pending_grads()
            self._optimizer_step()
            stats.steps += 1
        stats.seconds = time.perf_counter() - start
        return stats

    def _log_step(self, window: torch.Tensor, bar) -> torch.Tensor:
        total = all_reduce_sum({"w": window}, self.dist)["w"]
        if total[1] > 0 and self.dist.is_main:
            loss = float(total[0] / total[1])
            lr = self.optimizer.param_groups[0]["lr"]
            self.log.write({"kind": "step", "epoch": self.epoch + 1, "step": self.global_step, "loss": loss,
                            "lr": lr})
            self.tb.scalars({"train/loss": loss, "train/lr": lr}, self.global_step)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        return torch.zeros(2, dtype=torch.float64)

    def _skips(self) -> dict[str, list[str]]:
        """The training pass's skipped clips and dropped batches, gathered from every rank (reported, not hidden)."""
        summary = getattr(self.train_loader, "last_summary", None)
        mine = {"skipped": [str(s) for s in summary.skipped] if summary else [],
                "dropped_batches": [str(d) for d in summary.dropped] if summary else []}
        if not self.dist.distributed:
            return mine
        import torch.distributed as dist

        everyone: list[dict[str, list[str]] | None] = [None] * self.dist.world_size
        dist.all_gather_object(everyone, mine)
        return {key: sorted({item for rank in everyone for item in rank[key]}) for key in mine}

    # ------------------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(self, split: str, artifacts: str | None = None) -> dict[str, Any]:
        """Metrics of the current weights on ``split`` (summed over ranks); figures saved under ``artifacts``."""
        loader = self.eval_loaders[split]
        loader.set_epoch(0)
        self.model.eval()
        metrics = self.task.new_metrics()
        for batch in self._progress(loader, len(loader), f"eval {split}"):
            with self._autocast():
                result = self.model(batch, train=False)
            metrics.update(result.outputs, batch)
        metrics.load_state(all_reduce_sum(metrics.state(), self.dist))
        values = metrics.compute()
        if artifacts is not None and self.dist.is_main:
            metrics.save_artifacts(self.out, artifacts)
        return values

    # ------------------------------------------------------------------------------------------- the run

    def resume(self) -> None:
        """Continue from ``checkpoints/last.pt`` (validated first; nothing changes if it does not fit)."""
        path = self.checkpoint_dir / "last.pt"
        if not path.is_file():
            raise FileNotFoundError(f"--resume: expected a checkpoint to continue from at {path}, found none")
        payload = read_checkpoint(path)
        extra = payload.get("extra") or {}
        saved = extra.get("run_config")
        if saved != self.cfg.to_dict():
            diff = sorted(k for k in set(saved or {}) | set(self.cfg.to_dict())
                          if (saved or {}).get(k) != self.cfg.to_dict().get(k))
            raise ValueError(f"--resume: {path} was written by a run with another config (sections {diff} "
                             f"differ); resume with the run folder's own config.yaml")
        fingerprint = frozen_fingerprint(self.model)
        if extra.get("frozen_fingerprint") != fingerprint:
            raise ValueError(f"--resume: {path} was trained on other frozen backbone weights "
                             f"(fingerprint {extra.get('frozen_fingerprint')} vs {fingerprint})")
        load_checkpoint(path, self.model, self.optimizer, scheduler=self.scheduler, scaler=self.scaler)
        self.epoch, self.global_step = int(extra["epoch"]), int(extra["global_step"])
        self.history, self.best = list(extra["history"]), extra["best"]
        if self.average is not None and extra.get("average") is not None:
            self.average.load_state_dict(extra["average"])
        if self.ema is not None and extra.get("ema") is not None:
            self.ema.load_state_dict(extra["ema"])
        set_rng_state(extra["rng"], self.generator)
        self.log.truncate_after(self.epoch)
        self.say(f"resumed {self.out} after epoch {self.epoch} (optimizer step {self.global_step})")

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, select, test once, write the report; returns it."""
        cfg, o = self.cfg, self.cfg.optim
        metric, select_on = self.task.primary_metric, cfg.run.select_on
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.yaml", cfg.to_yaml())
        barrier(self.dist)
        while self.epoch < o.epochs:
            stats = self.train_epoch()
            self.epoch += 1
            if self.average is not None:
                self.average.update(self.model, self.epoch)
            record: dict[str, Any] = {"kind": "epoch", "epoch": self.epoch, "step": self.global_step,
                                      "train_loss": stats.loss_sum / max(1, stats.examples),
                                      "train_seconds": stats.seconds,
                                      "lr": self.optimizer.param_groups[0]["lr"], **self._skips()}
            record[select_on] = self.evaluate(select_on)
            value = record[select_on][metric]
            if self.best is None or value > self.best["value"]:
                self.best = {"epoch": self.epoch, "value": value}
                self._save("best.pt", full=False)
            record["best_epoch"] = self.best["epoch"]
            self.history.append({"epoch": self.epoch, "train_loss": record["train_loss"], select_on: value})
            self.log.write(record)
            self.tb.scalars({"epoch/train_loss": record["train_loss"], f"epoch/{select_on}_{metric}": value},
                            self.epoch)
            self.say(f"epoch {self.epoch}/{o.epochs}: train loss {record['train_loss']:.4f}, {select_on} {metric} "
                     f"{value:.4f} (best {self.best['value']:.4f} at epoch {self.best['epoch']}), "
                     f"{stats.seconds:.0f} s")
            self._save("last.pt", full=True)
            barrier(self.dist)
        return self.finish()

    def _candidates(self) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        best = read_checkpoint(self.checkpoint_dir / "best.pt") if self.dist.is_main else None
        yield "best-epoch", self._broadcast_state(best["state_dict"] if best is not None else None)
        if self.average is not None and self.average.ready():
            yield "epoch-average", self.average.mean
        if self.ema is not None:
            yield "ema", self.ema.mean

    def _broadcast_state(self, state: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        if not self.dist.distributed:
            return state
        import torch.distributed as dist

        box = [state]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def finish(self) -> dict[str, Any]:
        """Select the model (best epoch / epoch average / EMA) on the selection split, test it once, report."""
        cfg = self.cfg
        metric, select_on = self.task.primary_metric, cfg.run.select_on
        self.say(f"selecting on {select_on} by {metric}" + (" (the authors' protocol: selection on TEST)"
                                                              if select_on == "test" else ""))
        chosen: tuple[str, dict[str, torch.Tensor], dict[str, Any]] | None = None
        candidates = {}
        for name, weights in self._candidates():
            with swapped_weights(self.model, weights):
                values = self.evaluate(select_on)
            candidates[name] = values[metric]
            if chosen is None or values[metric] > chosen[2][metric]:
                chosen = (name, weights, values)
        name, weights, select_values = chosen
        report: dict[str, Any] = {"task": cfg.task, "select_on": select_on, "seed": cfg.run.seed,
                                  "selected": {"source": name, "best_epoch": self.best["epoch"],
                                               "candidates": candidates}}
        with swapped_weights(self.model, weights):
            val = select_values if select_on == "val" else self.evaluate("val")
            test = self.evaluate("test", artifacts="test_")
            if select_on == "test":
                report["protocol"] = ("select_on=test: the model was selected on the TEST split (the authors' "
                                      "protocol); the test numbers are optimistic")
            self._save("selected.pt", full=False)
        report["val"], report["test"] = val, test
        report["epochs"] = self.epoch
        report["history"] = self.history
        report.update(environment())
        report["config"] = cfg.to_dict()
        if self.dist.is_main:
            write_json(self.out / "report.json", report)
            plot_curves(self.log.records, metric, self.out / "curves.png")
            self.tb.close()
        return report
