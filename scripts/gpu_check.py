"""Run stgcma-fast's GPU tests and benchmarks on a CUDA machine within a time budget, the most important first.

    scripts/gpu_session.sh [--budget SECONDS] [--out DIR] [--jobs N] [--wheels DIR] [--no-install] [--dry-run]
                           [PHASE ...]

Phases, in the order they run (PHASE arguments pick some of them; they still run in this order):

  parity-train   GPU parity of every Triton kernel in the bf16 training mix (bf16 activations, fp32 residual stream
                 and master weights) at ViT-B/16 shapes, every launch candidate forced once, autotuning off
                 (pytest -m "gpu and train_mix" tests/kernels): what decides each kernel's GPU_VALIDATED
  model-b16      the ViT-B/16 Base training step (bench/test_model.py): reference, fast-triton, then fast
  kernels-b16    the kernel rows at ViT-B/16 shapes (bench/test_kernels.py): Triton against eager / SDPA / xformers
  parity-rest    the other GPU parity tests (fp32, fp16, pure bf16, other shapes and fusions), autotuning off
  compile        torch.compile: the kernels under inductor (tests), the ViT-B/16 Base training step compiled
                 (reference-compile, fast-compile), the kernel rows' compile providers
  kernels-rest   the other kernel shapes, the joint-rows experiment (bench/test_joint_rows.py)
  model-rest     every other model case: inference, the other presets, memory options, batch and frame sweeps
  device-tests   the device-agnostic kernel tests (tests/kernels, not gpu, not slow) on CUDA tensors
  data           bench/test_fbank.py, bench/test_data_pipeline.py (PyAV; DALI cases where DALI is installed)

Budget (--budget, default 600 s, for everything from start to exit). Estimated on a 16-core machine from the test
counts, with Triton compiling a kernel variant in about 1 CPU-second:
  setup            15 s   install (--no-deps, editable), environment report; the cache warmer starts right after
  parity-train     75 s   53 tests, ~125 kernel variants across --jobs workers (pytest-xdist, one test at a time
                          per worker), fp64 references
  model-b16        90 s   3 training steps (model build, activation count, 3 warm-up + 10 timed rounds); fast-triton
                          autotunes each kernel key on variants the warmer has compiled
  kernels-b16      60 s   20 rows (5 ops x 2 providers x 2 modes; 22 with xformers), timed on the device
  parity-rest     120 s   118 tests, ~270 variants
  compile         240 s   5 inductor tests, 2 compiled model steps (~1 min of compilation each), 10 compiled rows
  kernels-rest    120 s   ~60 rows (L/14, Swin-like shapes; compiled ones) and the joint-rows experiment
  model-rest      600 s+  ~80 cases (inference, 4 presets, sweeps), compiled ones included
  device-tests    300 s+  ~390 small tests, each compiling its own variants
  data             60 s
The first three phases are the ones a 10-minute run must deliver: together about 240 s. A phase may use the time
the phases before it left, but never the minimum the phases marked essential after it need (parity-train,
model-b16, kernels-b16 reserve 45, 75 and 40 s; an essential phase still gets its own minimum before the ones after
it), and parity-train and model-b16 stop after 240 s at most. A phase
still running at its limit is stopped with SIGINT (pytest prints its summary, pytest-benchmark writes what it
measured; SIGKILL 20 s later) and the next one starts. A phase with less time than its minimum is skipped.

In the background, from the end of the install on, scripts/warm_triton_cache.py compiles the kernel variants of the
model and kernel phases into Triton's cache (--warm-jobs processes, at a lower CPU priority), so that those phases
find them there instead of compiling each autotune candidate one after another; model-b16 and kernels-b16 wait up to
90 s for the warmer's tasks of their kind (the parity phases compile in parallel themselves).

Results, in --out (default ./gpu-out), rewritten after every phase, so a run stopped at any point keeps what
finished: summary.json (environment, and per phase its status, limit, seconds, pass / fail / skip counts and the
failed tests), tests.log, bench.log, warm.log, <device>_<time>_<commit>.json (every benchmark, named as the files of
bench/results/, where it belongs), bench_table.md and speedups.png (python -m bench.report). Exit code 0 when every
phase that ran passed, 1 when a test failed or a phase was stopped, 2 on a usage error, 3 when the install or the
environment check failed (nothing else runs then).

--wheels DIR installs the wheels in DIR first (pip --no-index --no-deps, into a folder on PYTHONPATH), for machines
without a package index that lack some (xformers, PyAV). --dry-run prints the plan and the commands and runs none.
GIT_COMMIT=<sha> names the commit in the results where there is no git history.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FINAL_RESERVE = 25  # seconds kept at the end: the SIGKILL grace of a stopped step, the last merge and render
GRACE = 20  # seconds between SIGINT and SIGKILL of a stopped step
WARM_WAIT = 90  # seconds a phase waits at most for the cache warmer's tasks of its kind
DEFAULT_BUDGET = 600

# bench/test_model.py's ViT-B/16 Base training cases, in the order the goals need them.
B16_TRAIN = [f"bench/test_model.py::test_model_step[clip-b16-base-{p}-train]" for p in
             ("reference", "fast-triton", "fast")]  # fmt: skip
B16_TRAIN_COMPILE = [f"bench/test_model.py::test_model_step[clip-b16-base-{p}-train]" for p in
                     ("reference-compile", "fast-compile")]  # fmt: skip


@dataclass(frozen=True)
class Step:
    """One pytest run: ``kind`` "tests" (pass / fail, junit XML) or "bench" (pytest-benchmark JSON)."""

    kind: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()  # extra environment variables
    parallel: bool = False  # tests: spread over --jobs pytest-xdist workers, one test at a time each


@dataclass(frozen=True)
class Phase:
    name: str
    steps: tuple[Step, ...]
    estimate: int  # seconds it takes on a 16-core machine (see the module docstring)
    minimum: int  # seconds below which it is skipped (it would deliver nothing)
    essential: bool = False  # its minimum is reserved while the phases before it run
    help: str = ""
    cap: int | None = None  # seconds it may run at most, whatever is left (a hung phase leaves the rest their time)
    warm: str | None = None  # the cache warmer's task kind it waits for (at most WARM_WAIT s, out of its own time)


NO_AUTOTUNE = (("STGCMA_FAST_AUTOTUNE", "0"),)  # each launcher runs its first candidate; forced ones still run
PHASES: tuple[Phase, ...] = (
    Phase("parity-train", (Step("tests", ("-m", "gpu and train_mix", "tests/kernels"), NO_AUTOTUNE, True),),
          75, 45, True, "bf16 training-mix parity at ViT-B/16 shapes, every launch candidate", cap=240),
    Phase("model-b16", (Step("bench", tuple(B16_TRAIN)),), 90, 75, True,
          "ViT-B/16 Base training step: reference, fast-triton, fast", cap=240, warm="model-b16-train"),
    Phase("kernels-b16", (Step("bench", ("bench/test_kernels.py", "-k", "vit-b16 and not compile")),), 60, 40, True,
          "kernel rows at ViT-B/16 shapes", warm="kernels-b16"),
    Phase("parity-rest", (Step("tests", ("-m", "gpu and not train_mix", "-k", "not inductor", "tests/kernels"),
                               NO_AUTOTUNE, True),), 120, 30, help="the other GPU parity tests"),
    Phase("compile", (Step("tests", ("-m", "gpu", "-k", "inductor", "tests/kernels"), (), True),
                      Step("bench", tuple(B16_TRAIN_COMPILE)),
                      Step("bench", ("bench/test_kernels.py", "-k", "vit-b16 and compile"))), 240, 60,
          help="torch.compile: inductor kernel tests, compiled model step, compiled kernel rows"),
    Phase("kernels-rest", (Step("bench", ("bench/test_kernels.py", "-k", "not vit-b16 and not compile")),
                           Step("bench", ("bench/test_joint_rows.py",)),
                           Step("bench", ("bench/test_kernels.py", "-k", "not vit-b16 and compile"))), 120, 30,
          help="other kernel shapes, joint rows"),
    Phase("model-rest", (Step("bench", ("bench/test_model.py", "-k", "not (clip-b16-base and train and model_step)")),),
          600, 60, help="other model cases"),
    Phase("device-tests", (Step("tests", ("-m", "not gpu and not slow", "tests/kernels"), (), True),), 300, 60,
          help="device-agnostic kernel tests on CUDA"),
    Phase("data", (Step("bench", ("bench/test_fbank.py",)), Step("bench", ("bench/test_data_pipeline.py",))), 60, 20,
          help="audio front end and input pipeline"),
)  # fmt: skip
PHASE_NAMES = tuple(p.name for p in PHASES)


def select(names: list[str]) -> list[Phase]:
    """The phases called ``names`` (all when empty), in run order. Raises ValueError naming an unknown one."""
    unknown = [n for n in names if n not in PHASE_NAMES]
    if unknown:
        raise ValueError(f"unknown phase {unknown[0]!r}; expected some of: {', '.join(PHASE_NAMES)}")
    return [p for p in PHASES if not names or p.name in names]


def phase_limit(phases: list[Phase], index: int, seconds_left: float) -> int:
    """Seconds phase ``phases[index]`` may run with ``seconds_left`` of the budget: all of it but the final reserve and
    the minimum of every essential phase after it (an essential phase still gets its own minimum first), at most its
    cap; 0 if that is below its own minimum (it is skipped)."""
    phase = phases[index]
    later = sum(p.minimum for p in phases[index + 1:] if p.essential)
    limit = int(seconds_left - FINAL_RESERVE - later)
    if phase.essential and limit < phase.minimum:  # an essential phase comes before the reserves of later ones
        limit = min(phase.minimum, int(seconds_left - FINAL_RESERVE))
    if phase.cap is not None:
        limit = min(limit, phase.cap)
    return limit if limit >= phase.minimum else 0


def plan(phases: list[Phase], budget: float, setup: float = 15) -> list[tuple[Phase, int, float]]:
    """(phase, limit, start) for each phase if every phase took its estimate (capped by its limit): what a run
    within ``budget`` seconds is expected to do, for --dry-run. A limit of 0: skipped."""
    out, now = [], float(setup)
    for i, phase in enumerate(phases):
        limit = phase_limit(phases, i, budget - now)
        out.append((phase, limit, now))
        now += min(phase.estimate, limit)
    return out


# ------------------------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------------------------


def pytest_command(step: Step, jobs: int, report: Path) -> list[str]:
    """The pytest command of ``step``, writing its junit XML (tests) or benchmark JSON (bench) to ``report``."""
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rfE", "--continue-on-collection-errors"]
    if step.kind == "tests":
        cmd += ["-q", "--durations=10", f"--junitxml={report}"]
        if step.parallel and jobs > 1:
            cmd += ["-n", str(jobs), "--dist", "load"]
    else:
        cmd += ["-q", f"--benchmark-json={report}"]
    return cmd + list(step.args)


def run_step(cmd: list[str], env: dict[str, str], limit: float, log: Path) -> tuple[int | None, float]:
    """Run ``cmd`` (its output appended to ``log``) for at most ``limit`` seconds: then SIGINT to its process group,
    SIGKILL ``GRACE`` seconds later. Returns (exit code, None if it was stopped; seconds)."""
    start = time.monotonic()
    with open(log, "a") as fh:
        fh.write(f"\n## {time.strftime('%H:%M:%S')} limit {limit:.0f}s: {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(limit, 1))
        except subprocess.TimeoutExpired:  # stopped at its limit: SIGINT, then SIGKILL
            rc = None
            _signal_group(proc, signal.SIGINT)
            try:
                proc.wait(timeout=GRACE)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        except BaseException:  # the run itself interrupted (SIGINT, SIGTERM): take the step down with it
            _signal_group(proc, signal.SIGKILL)
            raise
        seconds = time.monotonic() - start
        fh.write(f"## {'stopped at its limit' if rc is None else f'exit code {rc}'} after {seconds:.0f}s\n")
    return rc, seconds


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # it has just ended, with its group
        pass


def junit_counts(path: Path) -> dict:
    """passed / failed / errors / skipped counts and the failed tests' ids (with the first line of their message)
    of a junit XML file; {} if there is none (the run was killed before it wrote it)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failed = []
    for case in root.iter("testcase"):
        outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        key = {"failure": "failed", "error": "errors", "skipped": "skipped"}.get(getattr(outcome, "tag", ""), "passed")
        counts[key] += 1
        if key in ("failed", "errors"):
            name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            message = (outcome.get("message") or "").strip().splitlines()[:1]
            failed.append(f"{name}: {message[0][:300] if message else outcome.tag}")
    return counts | {"failed_tests": failed}


def phase_status(steps: list[dict]) -> str:
    """"failed" if a step failed, else "stopped" if one was stopped or skipped for lack of time, else "passed"."""
    statuses = [step["status"] for step in steps]
    if "failed" in statuses:
        return "failed"
    return "passed" if all(status == "passed" for status in statuses) else "stopped"


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


ENV_REPORT = r"""
import importlib, json, os, sys
out = {"python": sys.version.split()[0], "cpus": len(os.sched_getaffinity(0))}
for name in ("torch", "triton", "timm", "pytest", "xdist", "pytest_benchmark", "xformers", "av", "nvidia.dali",
             "matplotlib", "stgcma_fast", "stgcma_fast.kernels.av_adapter"):
    try:
        out[name] = getattr(importlib.import_module(name), "__version__", "imported")
    except Exception as exc:
        out[name] = f"NOT IMPORTABLE: {type(exc).__name__}: {exc}"[:300]
import torch
out["cuda"] = torch.version.cuda
out["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
sys.path.insert(0, os.getcwd())
from bench.common import results_filename
out["results_file"] = results_filename()
print(json.dumps(out))
"""


class Session:
    """One run: the output folder, the summary written after each phase, the benchmark JSON merged so far."""

    def __init__(self, out: Path, budget: float, jobs: int, env: dict[str, str], work: Path) -> None:
        self.out, self.budget, self.jobs, self.env, self.work = out, budget, jobs, env, work
        self.start = time.monotonic()
        self.summary: dict = {"budget_s": budget, "jobs": jobs, "phases": []}
        self.results: Path | None = None  # the merged benchmark JSON in out
        self.failed = False
        self.warmer: subprocess.Popen | None = None  # scripts/warm_triton_cache.py, once started

    def wait_for_warmer(self, kind: str, timeout: float) -> float:
        """Wait until the warmer has finished (done or failed) every task of ``kind``, has exited, or ``timeout``
        seconds have passed: a benchmark that starts earlier compiles the same variants itself, one after another,
        while the warmer compiles them in parallel. Returns the seconds waited."""
        from importlib import import_module

        sys.path.insert(0, str(REPO / "scripts"))
        tasks = [t for t in import_module("warm_triton_cache").TASKS if t.startswith(kind + ":")]
        start = time.monotonic()
        while time.monotonic() - start < timeout and self.warmer.poll() is None:
            log = (self.out / "warm.log").read_text(errors="replace") if (self.out / "warm.log").exists() else ""
            if all(f"warm {task}: " in log for task in tasks):
                break
            time.sleep(1)
        return time.monotonic() - start

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def save(self) -> None:
        self.summary["elapsed_s"] = round(time.monotonic() - self.start, 1)
        write_json(self.out / "summary.json", self.summary)

    def setup(self, install: bool, wheels: Path | None, installed: Callable[[], None] = lambda: None) -> str | None:
        """Install (``installed`` is called once that is done) and check the environment; the reason it failed, or
        None."""
        log = self.out / "tests.log"
        if wheels is not None:
            site = self.work / "site"
            found = sorted(str(w) for w in wheels.glob("*.whl"))
            if not found:
                return f"no wheels in {wheels}"
            rc, _ = run_step([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                              "--upgrade", "--target", str(site), *found], self.env, 300, log)  # fmt: skip
            if rc != 0:
                return f"installing the wheels of {wheels} failed (exit code {rc}): see tests.log"
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(site), self.env.get("PYTHONPATH"))))
        if install:
            rc, _ = run_step([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "-e", "."], self.env, 300, log)  # fmt: skip
            if rc != 0:
                return f"pip install -e . failed (exit code {rc}): see tests.log"
        installed()
        res = subprocess.run([sys.executable, "-c", ENV_REPORT], cwd=REPO, env=self.env, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        if res.returncode != 0:
            return f"the environment check failed: {res.stderr.strip()[-2000:]}"
        environment = json.loads(res.stdout.strip().splitlines()[-1])
        self.summary["environment"] = environment
        self.results = self.out / environment["results_file"]
        if not environment.get("device"):
            return "torch sees no CUDA device"
        if str(environment.get("xdist", "")).startswith("NOT IMPORTABLE"):
            self.jobs = 1  # no pytest-xdist: the test phases run in one process
        broken = [k for k, v in environment.items() if str(v).startswith("NOT IMPORTABLE") and k in
                  ("torch", "triton", "timm", "pytest", "pytest_benchmark", "stgcma_fast",
                   "stgcma_fast.kernels.av_adapter")]  # fmt: skip
        return f"required packages do not import: {broken}" if broken else None

    def run_phase(self, phases: list[Phase], index: int) -> None:
        phase = phases[index]
        limit = phase_limit(phases, index, self.left())
        record = {"name": phase.name, "limit_s": limit, "steps": []}
        self.summary["phases"].append(record)
        if limit == 0:
            record["status"] = f"skipped: {self.left():.0f}s of the budget left, it needs {phase.minimum}s"
            self.save()
            return
        end = time.monotonic() + limit
        if phase.warm and self.warmer is not None:
            record["warm_wait_s"] = round(self.wait_for_warmer(phase.warm, min(WARM_WAIT, limit / 3)), 1)
        for n, step in enumerate(phase.steps):
            step_limit = end - time.monotonic()
            if step_limit < 10:
                record["steps"].append({"args": list(step.args), "status": "skipped: no time left in the phase"})
                continue
            report = self.work / f"{phase.name}-{n}.{'xml' if step.kind == 'tests' else 'json'}"
            log = self.out / ("tests.log" if step.kind == "tests" else "bench.log")
            rc, seconds = run_step(pytest_command(step, self.jobs, report), self.env | dict(step.env), step_limit, log)
            result = {"args": list(step.args), "exit_code": rc, "seconds": round(seconds, 1)}
            if step.kind == "tests":
                result |= junit_counts(report)
            else:
                result["benchmarks"] = self.merge(report)
            # pytest: 0 all passed, 5 nothing selected (every case deselected or skipped on this machine)
            result["status"] = "stopped at the phase's limit" if rc is None else "passed" if rc in (0, 5) else "failed"
            record["steps"].append(result)
            record["seconds"] = round(limit - (end - time.monotonic()), 1)
            record["status"] = phase_status(record["steps"])
            self.save()
        record["status"] = phase_status(record["steps"])
        self.failed |= record["status"] != "passed"
        self.save()

    def merge(self, report: Path) -> int:
        """Append the benchmarks of ``report`` to the results file and render the tables again; how many."""
        if not report.exists() or self.results is None:
            return 0
        log = self.out / "bench.log"
        cmd = [sys.executable, "-m", "bench.report", "--merge-into", str(self.results), str(report)]
        run_step(cmd, self.env, 120, log)
        try:
            added = len(json.loads(report.read_text()).get("benchmarks", []))
        except (OSError, ValueError):
            added = 0
        if self.results.exists():
            with open(self.out / "bench_table.md", "w") as fh:
                subprocess.run([sys.executable, "-m", "bench.report", str(self.results), "--plot",
                                str(self.out / "speedups.png")], cwd=REPO, env=self.env, stdout=fh,
                               stderr=subprocess.STDOUT, timeout=120)  # fmt: skip
        return added


def start_warmer(env: dict[str, str], out: Path, jobs: int) -> subprocess.Popen | None:
    """scripts/warm_triton_cache.py in the background (its own process group, lower priority), logging to
    warm.log."""
    cmd = [sys.executable, str(REPO / "scripts" / "warm_triton_cache.py"), "--jobs", str(jobs)]
    fh = open(out / "warm.log", "a")  # noqa: SIM115 - the child keeps writing after this returns
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: os.nice(5))  # fmt: skip


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser = argparse.ArgumentParser(prog="scripts/gpu_session.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("phases", nargs="*", metavar="PHASE", help=f"some of: {', '.join(PHASE_NAMES)} (default all)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help=f"seconds for the whole run, setup to exit (default {DEFAULT_BUDGET})")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-out"),
                        help="results folder (default $OUT, else ./gpu-out)")
    parser.add_argument("--jobs", type=int, default=max(1, cores * 3 // 4),
                        help="pytest-xdist workers for the test phases (default 3/4 of the CPU cores: %(default)s)")
    parser.add_argument("--warm-jobs", type=int, default=max(1, cores // 4),
                        help="processes of the background cache warmer, 0 for none (default %(default)s)")
    parser.add_argument("--wheels", type=Path, help="install the wheels in this folder first (no package index)")
    parser.add_argument("--no-install", action="store_true", help="use the stgcma-fast already installed")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    def error(message: str) -> None:  # a usage mistake: one line on stderr, exit code 2
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)

    parser.error = error
    ns = parser.parse_args(argv)
    try:
        ns.selected = select(ns.phases)
    except ValueError as err:
        parser.error(str(err))
    if not ns.budget > FINAL_RESERVE:
        parser.error(f"expected --budget to be more than {FINAL_RESERVE} seconds, got {ns.budget:g}")
    if ns.jobs < 1 or ns.warm_jobs < 0:
        parser.error(f"expected --jobs >= 1 and --warm-jobs >= 0, got {ns.jobs} and {ns.warm_jobs}")
    if ns.wheels is not None and not ns.wheels.is_dir():
        parser.error(f"expected --wheels to be a folder, got {str(ns.wheels)!r}")
    return ns


def print_plan(phases: list[Phase], budget: float, jobs: int, echo: Callable[[str], None] = print) -> None:
    echo(f"plan for a {budget:.0f} s budget ({FINAL_RESERVE} s kept for the end), phases as estimated:")
    for phase, limit, start in plan(phases, budget):
        if limit == 0:
            echo(f"  {start:5.0f}s  {phase.name:<13} skipped: under its minimum of {phase.minimum}s left")
            continue
        echo(f"  {start:5.0f}s  {phase.name:<13} ~{phase.estimate}s (limit {limit}s){' *' if phase.essential else ''}"
             f"  {phase.help}")  # fmt: skip
        for step in phase.steps:
            env = " ".join(f"{k}={v}" for k, v in step.env)
            echo(f"           {env + ' ' if env else ''}python {shlex.join(pytest_command(step, jobs, Path('R'))[1:])}")
    echo("  (* essential: its minimum is reserved while the phases before it run)")


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    if ns.dry_run:
        print_plan(ns.selected, ns.budget, ns.jobs)
        return 0
    ns.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM ends the run like Ctrl-C: cleanly
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        session = Session(ns.out, ns.budget, ns.jobs, env, Path(work))
        session.summary["status"] = "running"  # what a run killed from outside leaves in summary.json
        try:
            def installed() -> None:  # the warmer needs the package; it starts as soon as that is installed
                if ns.warm_jobs:
                    session.warmer = start_warmer(session.env, ns.out, ns.warm_jobs)

            reason = session.setup(not ns.no_install, ns.wheels, installed)
            if reason is not None:
                session.summary["status"] = f"setup failed: {reason}"
                session.save()
                print(f"gpu_check: {reason}; nothing was run", file=sys.stderr)
                return 3
            for i, phase in enumerate(ns.selected):
                print(f"# {time.strftime('%H:%M:%S')} {phase.name} ({session.left():.0f}s of the budget left)",
                      flush=True)  # fmt: skip
                session.run_phase(ns.selected, i)
                print(f"#   {session.summary['phases'][-1]['status']}", flush=True)
        except KeyboardInterrupt:
            session.summary["status"] = "interrupted"
            raise
        finally:
            stop(session.warmer)
            if session.summary["status"] == "running":
                session.summary["status"] = "failed" if session.failed else "passed"
            session.save()
    print(json.dumps({p["name"]: p["status"] for p in session.summary["phases"]}, indent=1))
    return 1 if session.failed else 0


if __name__ == "__main__":
    sys.exit(main())
