"""Benchmark session setup: every run saves pytest-benchmark JSON under bench/results/ named with device, date and
git commit, with device name, library versions and the measured copy bandwidth in its machine_info."""

from __future__ import annotations

import os
import sys

import pytest

from .common import (
    HAS_CUDA,
    RESULTS_DIR,
    copy_bandwidth_gbps,
    device_name,
    free_device_memory,
    git_commit,
    results_filename,
    versions,
)

if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton providers run (slowly) on CPU tensors


class _LazyResultsFile(os.PathLike):
    """Where pytest-benchmark writes its JSON, created only when it writes, so a run that measures nothing leaves
    no file. pytest-benchmark >= 5.3 opens the path itself (``__fspath__``); older releases expect an open file
    they enter as a context manager."""

    def __init__(self, path) -> None:
        self.path = path
        self._fh = None

    def __fspath__(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return str(self.path)

    def __enter__(self):
        self._fh = open(self.__fspath__(), "wb")  # noqa: SIM115
        return self._fh

    def __exit__(self, *exc) -> None:
        self._fh.close()

    def __str__(self) -> str:
        return str(self.path)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "benchmark_json", None) is None and not getattr(config.option, "benchmark_disable", 0):
        config.option.benchmark_json = _LazyResultsFile(RESULTS_DIR / results_filename())


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["device"] = device_name()
    machine_info["versions"] = versions()
    machine_info["git_commit"] = git_commit()
    try:  # 2 GiB on the device: a run stopped mid-case (SIGINT) may still hold most of it, and the JSON must be written
        free_device_memory()
        machine_info["copy_bandwidth_gbps"] = copy_bandwidth_gbps()
    except RuntimeError as err:  # torch.cuda.OutOfMemoryError is one
        machine_info["copy_bandwidth_gbps"] = None
        machine_info["copy_bandwidth_error"] = str(err)[:200]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.bench)
        if not HAS_CUDA and "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device; this machine has none"))


@pytest.fixture(autouse=True)
def _fresh_device():
    """Every case builds its own model and inputs. On a GPU, drop what the last one left before the next starts: the
    traceback pytest keeps of a failed case (sys.last_*, which holds its frames and so its tensors), compiled graphs
    (each torch.compile case compiles afresh, and never runs into dynamo's recompile limit, past which it would
    silently run eager) and the allocator's cache. Otherwise one out-of-memory case of a batch-size sweep leaves its
    activations allocated and the cases after it run out of memory too."""
    yield
    if HAS_CUDA:
        for name in ("last_type", "last_value", "last_traceback", "last_exc"):
            if hasattr(sys, name):
                setattr(sys, name, None)
        free_device_memory()
