"""End-to-end training throughput: does the input pipeline keep the model fed?

One training epoch of the AVE task through :class:`stgcma_fast.train.trainer.Trainer` (decode in DataLoader workers,
audio front end, model step) against the same epoch with every batch already decoded and in memory (the model step
alone, the same code path). ``pipeline_ratio`` = end-to-end clips/s / model-step clips/s; the goal is >= 0.8 on a CPU
(where decoding competes with the model for the same cores) and >= 0.95 on a GPU with DALI. CPU sizes are small:
the main job's model and data format (32 px VP9, prepared WAVs) on about 20 training clips.
"""

from __future__ import annotations

import statistics
import time

import pytest

pytest.importorskip("av", reason="PyAV writes the synthetic clips and decodes media (pip install av)")

from stgcma_fast.data.prepare import prepare_audio  # noqa: E402
from stgcma_fast.data.synth import synth_ave  # noqa: E402
from stgcma_fast.resources import config_path  # noqa: E402
from stgcma_fast.train.config import load_run_config  # noqa: E402
from stgcma_fast.train.distributed import DistInfo  # noqa: E402
from stgcma_fast.train.trainer import Trainer  # noqa: E402

from .common import DEVICE, HAS_CUDA, run_benchmark, synchronize  # noqa: E402

CLIPS = 64 if HAS_CUDA else 24  # about 80% of them in the training split
WORKERS = 4 if HAS_CUDA else 2


class InMemory:
    """A loader over batches that were already decoded (what a perfectly fast input pipeline would hand over)."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_train")
    synth_ave(root, CLIPS, codec="vp9", seed=0, size=32, fps=2, num_classes=4)
    prepare_audio(root)  # the prepared WAVs, as the synthetic main job has them
    return root


@pytest.mark.parametrize("size", ["small"] + (["full"] if HAS_CUDA else []))
def test_training_pipeline(benchmark, data, tmp_path, size):
    # The main job's model and recipe (configs/ave/synthetic.yaml on a CPU, synthetic-full.yaml on a GPU).
    config = config_path("ave", "synthetic" if size == "small" else "synthetic-full")
    overrides = ["optim.epochs=1", f"data.num_workers={WORKERS}", "run.progress=false", "run.tensorboard=false",
                 f"run.device={DEVICE.type}", "run.compare_branches=false"]
    trainer = Trainer(load_run_config("ave", config, overrides), tmp_path / "run", data, DistInfo(device=DEVICE))
    pipeline = trainer.train_loader
    clips = len(pipeline.dataset)
    batches = list(pipeline)  # decoded once, kept on the device
    trainer.train_loader = InMemory(batches)
    trainer.train_epoch()  # warm-up (first-call costs, autotuning)
    model_times = []
    for _ in range(2):
        synchronize()
        start = time.perf_counter()
        trainer.train_epoch()
        synchronize()
        model_times.append(time.perf_counter() - start)
    model_step = clips / statistics.median(model_times)
    trainer.train_loader = pipeline
    extra = run_benchmark(benchmark, trainer.train_epoch, warmup=0, rounds=2, items=clips, provider="end-to-end",
                          stage="train_epoch", setting=f"{size}-{WORKERS}workers", device=DEVICE.type)
    benchmark.extra_info["model_step_clips_per_s"] = model_step
    benchmark.extra_info["pipeline_ratio"] = extra["clips_per_s"] / model_step
