"""scripts/gpu_check.py (behind scripts/gpu_session.sh), the GPU test-and-benchmark run, on a machine without a GPU:
its phase plan under a budget, its stopping of a step at its limit, its reading of pytest's junit XML, that the tests
and benchmark cases it names exist, and that without CUDA it stops after the environment check."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check")
warm = _load("warm_triton_cache")


def test_phases_run_in_priority_order_and_unknown_ones_are_named():
    names = [p.name for p in gpu_check.PHASES]
    assert names[:3] == ["parity-train", "model-b16", "kernels-b16"]
    assert [p.name for p in gpu_check.select(["kernels-b16", "parity-train"])] == ["parity-train", "kernels-b16"]
    assert gpu_check.select([]) == list(gpu_check.PHASES)
    with pytest.raises(ValueError, match="unknown phase 'parity'; expected some of: parity-train"):
        gpu_check.select(["parity"])


def test_a_phase_never_takes_the_minimum_of_an_essential_phase_after_it():
    phases = list(gpu_check.PHASES)
    essential_after = sum(p.minimum for p in phases[3:] if p.essential)  # none: the essential ones come first
    assert essential_after == 0
    # parity-train with 300 s left: the reserve, model-b16's and kernels-b16's minimums are kept, then its cap
    reserved = gpu_check.FINAL_RESERVE + phases[1].minimum + phases[2].minimum
    assert gpu_check.phase_limit(phases, 0, 300) == min(300 - reserved, phases[0].cap)
    assert gpu_check.phase_limit(phases, 0, 10_000) == phases[0].cap
    # too little left for the later minimums: an essential phase still gets its own first, else it is skipped (0)
    assert gpu_check.phase_limit(phases, 0, reserved) == phases[0].minimum
    assert gpu_check.phase_limit(phases, 0, gpu_check.FINAL_RESERVE + phases[0].minimum - 1) == 0
    rest_then_model = [phases[3], phases[1]]  # a phase that is not essential yields to an essential one after it
    assert gpu_check.phase_limit(rest_then_model, 0, gpu_check.FINAL_RESERVE + phases[1].minimum + 29) == 0
    assert gpu_check.phase_limit(rest_then_model, 0, gpu_check.FINAL_RESERVE + phases[1].minimum + 30) == 30
    assert gpu_check.phase_limit(phases, 3, 200) == 200 - gpu_check.FINAL_RESERVE
    # a later phase gets everything but the final reserve
    assert gpu_check.phase_limit(phases, 8, 100) == 100 - gpu_check.FINAL_RESERVE


@pytest.mark.parametrize("budget", [180, 300, 600, 900])
def test_the_plan_fits_the_budget_and_keeps_the_first_three_phases(budget):
    plan = gpu_check.plan(list(gpu_check.PHASES), budget)
    ran = [(phase, limit, start) for phase, limit, start in plan if limit]
    essential = ["parity-train", "model-b16", "kernels-b16"]
    assert [phase.name for phase, _, _ in ran if phase.essential] == (essential if budget >= 300 else essential[:2])
    assert [phase.name for phase, _, _ in ran[:2]] == essential[:2]
    for phase, limit, start in ran:
        assert start + limit <= budget - gpu_check.FINAL_RESERVE, (phase.name, start, limit)
    if budget >= 600:  # the three essential phases fit at their estimates, with room for the next
        assert all(limit >= phase.estimate for phase, limit, _ in ran[:3])
        assert ran[3][0].name == "parity-rest"


def test_dry_run_prints_the_plan_and_a_usage_mistake_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, "scripts/gpu_check.py", "--dry-run", "--budget", "600"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    order = [next(i for i, line in enumerate(lines) if f" {name} " in line) for name in gpu_check.PHASE_NAMES[:3]]
    assert order == sorted(order)
    assert "STGCMA_FAST_AUTOTUNE=0" in res.stdout and "'gpu and train_mix'" in res.stdout
    assert gpu_check.B16_TRAIN[1] in res.stdout
    for args, needle in ((["--budget", "5"], "expected --budget to be more than 25 seconds, got 5"),
                         (["modle-b16"], "unknown phase 'modle-b16'"),
                         (["--wheels", str(tmp_path / "none")], "expected --wheels to be a folder")):  # fmt: skip
        res = subprocess.run([sys.executable, "scripts/gpu_check.py", "--dry-run", *args], cwd=REPO,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert res.returncode == 2 and res.stdout == ""
        assert len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr, res.stderr


def test_a_step_is_stopped_at_its_limit(tmp_path):
    log = tmp_path / "log"
    rc, seconds = gpu_check.run_step([sys.executable, "-c", "import time; time.sleep(60)"], {}, 1, log)
    assert rc is None and seconds < 30
    assert "stopped at its limit" in log.read_text()
    rc, _ = gpu_check.run_step([sys.executable, "-c", "raise SystemExit(3)"], {}, 30, log)
    assert rc == 3 and "exit code 3" in log.read_text()


def test_junit_counts(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text("""<?xml version="1.0"?><testsuites><testsuite>
    <testcase classname="tests.kernels.test_av_adapter" name="test_a[x]"/>
    <testcase classname="tests.kernels.test_av_adapter" name="test_b">
      <failure message="AssertionError: out_v off by 3e-2&#10;second line">trace</failure></testcase>
    <testcase classname="tests.kernels.test_t_adapter" name="test_c"><skipped message="no"/></testcase>
    <testcase classname="tests.kernels.test_t_adapter" name="test_d"><error message="fixture"/></testcase>
    </testsuite></testsuites>""")
    counts = gpu_check.junit_counts(xml)
    assert {k: counts[k] for k in ("passed", "failed", "errors", "skipped")} == dict(passed=1, failed=1, errors=1,
                                                                                       skipped=1)  # fmt: skip
    assert counts["failed_tests"] == ["tests/kernels/test_av_adapter.py::test_b: AssertionError: out_v off by 3e-2",
                                      "tests/kernels/test_t_adapter.py::test_d: fixture"]  # fmt: skip
    assert gpu_check.junit_counts(tmp_path / "missing.xml") == {}
    (tmp_path / "cut.xml").write_text("<testsuites><testsu")
    assert gpu_check.junit_counts(tmp_path / "cut.xml") == {}


def test_the_named_cases_exist_and_the_first_phase_selects_the_training_mix():
    """A wrong node id or marker would lose a phase's results on the GPU without a word: collect them here."""
    ids = gpu_check.B16_TRAIN + gpu_check.B16_TRAIN_COMPILE
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *ids],
                         cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert [line for line in res.stdout.splitlines() if "::" in line] == ids
    step = gpu_check.PHASES[0].steps[0]
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          *step.args], cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    selected = [line for line in res.stdout.splitlines() if "::" in line]
    files = {line.split("::")[0] for line in selected}
    assert len(selected) >= 40 and files == {f"tests/kernels/test_{op}.py" for op in warm.OPS}, res.stdout[-3000:]


def test_without_cuda_it_stops_after_the_environment_check(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "scripts/gpu_check.py", "--no-install", "--warm-jobs", "0", "--budget", "120",
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 3, res.stderr
    assert "torch sees no CUDA device; nothing was run" in res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "setup failed: torch sees no CUDA device" and summary["phases"] == []
    assert summary["environment"]["device"] is None and summary["environment"]["torch"]


def test_warmer_tasks_are_checked():
    assert warm.TASKS[0] == "model-b16-train:av_adapter" and len(warm.TASKS) == 3 * len(warm.OPS)
    with pytest.raises(ValueError, match="expected a task KIND:OP .* got 'model-b16:av_adapter'"):
        warm.run_task("model-b16:av_adapter")
    res = subprocess.run([sys.executable, "scripts/warm_triton_cache.py", "kernels-b16:gelu"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 2 and "kernels-b16:gelu" in res.stderr


def test_a_phase_records_tests_and_benchmarks_after_each_step(tmp_path):
    """Session.run_phase end to end on CPU, with a passing and a failing test step and a benchmark step: counts and
    failures in summary.json, the benchmarks merged into the results file and rendered, the phase failed."""
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    session = gpu_check.Session(out, budget=900, jobs=1, env=env, work=tmp_path)
    session.results = out / "cpu_results.json"
    plugins = tmp_path / "plugins"  # the second step fails: a plugin that fails every test it runs
    plugins.mkdir()
    (plugins / "failing_plugin.py").write_text("def pytest_runtest_call(item):\n    raise AssertionError('planted')\n")
    failing = gpu_check.Step("tests", ("-p", "failing_plugin", "tests/test_config.py", "-k", "explicit_widths"),
                             (("PYTHONPATH", f"{plugins}:{REPO}"),))  # fmt: skip
    phase = gpu_check.Phase("trial", (
        gpu_check.Step("tests", ("tests/test_config.py", "-k", "presets_give or explicit_widths")),
        failing,
        gpu_check.Step("bench", ("bench/test_fbank.py", "-k", "vit-batched")),
    ), estimate=60, minimum=10)  # fmt: skip
    session.run_phase([phase], 0)
    summary = json.loads((out / "summary.json").read_text())
    record = summary["phases"][0]
    passing, failing, bench = record["steps"]
    assert passing["status"] == "passed" and passing["passed"] >= 2 and passing["failed"] == 0
    assert failing["status"] == "failed" and failing["failed"] == 1
    assert failing["failed_tests"][0].startswith("tests/test_config.py::test_explicit_widths_and_ratios: ")
    assert "planted" in failing["failed_tests"][0]
    assert bench["status"] == "passed" and bench["benchmarks"] == 1
    assert record["status"] == "failed" and session.failed
    merged = json.loads(session.results.read_text())
    assert [b["extra_info"]["provider"] for b in merged["benchmarks"]] == ["batched"]
    assert "audio_front_end" in (out / "bench_table.md").read_text()
    assert "## " in (out / "tests.log").read_text() and (out / "bench.log").exists()
