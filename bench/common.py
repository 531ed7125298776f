"""Shared benchmark machinery: device facts, synchronised timing with peak memory, throughput bookkeeping."""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
GPU_ONLY = "full-size case: needs a CUDA device (CPU runs only the tiny cases that exercise the harness)"
CPU_ONLY = "tiny harness case: CPU only (a GPU runs the full-size cases; compiling this one would only cost time)"

# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment, for MFU. Unknown devices report no MFU.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def device_name() -> str:
    return torch.cuda.get_device_name() if HAS_CUDA else "cpu"


def peak_tflops(name: str | None = None) -> float | None:
    """Dense bf16 tensor-core peak of the device called ``name`` (default: this machine's), None if unknown."""
    name = device_name() if name is None else name
    for fragment, peak in PEAK_BF16_TFLOPS.items():
        if fragment in name:
            return peak
    return None


def git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("GIT_COMMIT", "unknown")


def versions() -> dict[str, str]:
    out = {"torch": torch.__version__, "cuda": str(torch.version.cuda)}
    for name in ("triton", "xformers", "timm", "nvidia.dali"):
        try:
            mod = __import__(name, fromlist=["__version__"])
            out[name] = getattr(mod, "__version__", "unknown")
        except Exception:  # noqa: BLE001 - absent or broken optional packages are reported as such
            out[name] = "not installed"
    return out


def results_filename() -> str:
    tag = device_name().replace(" ", "-").replace("/", "-")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{tag}_{stamp}_{git_commit()}.json"


def synchronize() -> None:
    if HAS_CUDA:
        torch.cuda.synchronize()


def out_of_memory(exc: BaseException | None) -> bool:
    """True for a CUDA out-of-memory error, also one that torch.compile re-raised inside an exception of its own."""
    for _ in range(8):  # the cause / context chain, a few levels deep
        if exc is None:
            return False
        if isinstance(exc, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_device_memory() -> None:
    """Return what the last case left to the device: unreachable tensors (gc), compiled graphs that hold on to their
    inputs' guards (torch._dynamo.reset) and the caching allocator's free blocks."""
    if HAS_CUDA:
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()


def measure(fn: Callable[[], object], warmup: int, rounds: int) -> tuple[list[float], int]:
    """Run ``fn`` ``warmup`` then ``rounds`` times with device synchronisation; returns (seconds per round, peak
    bytes allocated on the device during the timed rounds, 0 on CPU)."""
    for _ in range(warmup):
        fn()
    synchronize()
    if HAS_CUDA:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if HAS_CUDA else 0
    return times, peak


def device_time(fn: Callable[[], object]) -> tuple[float, str]:
    """(median seconds per call of ``fn`` on the CUDA device, how it was timed), without the host's launch time: the
    calls replayed from a CUDA graph (``triton.testing.do_bench_cudagraph``: "cuda-graph"), or, where ``fn`` cannot
    be captured, CUDA events around each call with the L2 cache flushed before it (``triton.testing.do_bench``:
    "cuda-events"). ``fn`` must have run before (compiled, autotuned: nothing may be chosen while capturing)."""
    import triton.testing

    try:
        return triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median") / 1e3, "cuda-graph"
    except Exception:  # noqa: BLE001 - e.g. a host synchronisation inside fn: time it with events instead
        torch.cuda.synchronize()
        return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median") / 1e3, "cuda-events"


def run_benchmark(benchmark, fn: Callable[[], object], *, warmup: int = 2, rounds: int = 5, flops: float | None = None,
                  bytes_moved: float | None = None, items: float | None = None, item_name: str = "clips",
                  device_timer: bool = False, **info: object) -> dict[str, object]:
    """Time ``fn`` under pytest-benchmark (pedantic, synchronised) and record throughput in ``extra_info``.

    flops: FLOPs per call (-> TFLOP/s and MFU); bytes_moved: bytes that must cross HBM per call (-> GB/s);
    items: clips (or other items) per call (-> items/s). ``info`` goes to extra_info as is (provider, shape...).
    ``device_timer``: on CUDA the median (``median_s``, from which every rate is computed) is timed on the device
    (:func:`device_time`; ``timer`` says how), not by the host clock with a synchronisation per call, which a kernel
    of a few microseconds would spend most of its time in (``host_median_s`` keeps the host's figure). Elsewhere,
    and without it, ``timer`` is "host".
    """
    times, peak = measure(fn, warmup=warmup, rounds=1)  # warm-up outside pytest-benchmark, peak memory of one call
    benchmark.pedantic(lambda: (fn(), synchronize()), rounds=rounds, iterations=1, warmup_rounds=0)
    median = statistics.median(benchmark.stats.stats.data) if benchmark.stats else statistics.median(times)
    extra = dict(info)
    extra["timer"] = "host"
    if device_timer and HAS_CUDA:
        extra["host_median_s"] = median
        median, extra["timer"] = device_time(fn)
    extra["median_s"] = median
    extra["peak_mem_mib"] = peak / 2**20
    if flops is not None:
        extra["tflops"] = flops / median / 1e12
        peak_tf = peak_tflops()
        if peak_tf is not None:
            extra["mfu"] = extra["tflops"] / peak_tf
    if bytes_moved is not None:
        extra["gbps"] = bytes_moved / median / 1e9
    if items is not None:
        extra[f"{item_name}_per_s"] = items / median
    benchmark.extra_info.update(extra)
    return extra


def copy_bandwidth_gbps(nbytes: int = 1 << 30) -> float:
    """Measured device copy bandwidth (read + write bytes per second) for a ``nbytes`` buffer."""
    n = nbytes // 4 if HAS_CUDA else (64 << 20) // 4
    src = torch.empty(n, dtype=torch.float32, device=DEVICE)
    dst = torch.empty_like(src)
    times, _ = measure(lambda: dst.copy_(src), warmup=3, rounds=10)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9
