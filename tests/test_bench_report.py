"""bench.report renders tables and plots from pytest-benchmark JSON (numbers come only from result files)."""

from __future__ import annotations

import json

import pytest

from bench import report


def _result(device: str = "NVIDIA H100 80GB HBM3") -> dict:
    def model(provider, rate, mem, mfu=None):
        info = dict(preset="clip-b16-base", mode="train", batch=8, frames=10, provider=provider, clips_per_s=rate,
                    peak_mem_mib=mem, median_s=8 / rate)
        if mfu is not None:
            info["mfu"] = mfu
        return {"name": provider, "extra_info": info}

    def kernel(provider, median, gbps):  # the case's floor: 2.4 GB, 0.8 ms at the copy bandwidth of 3000 GB/s
        return {"name": provider, "extra_info": dict(op="av_adapter", shape="vit-b16", mode="fwd", provider=provider,
                                                     median_s=median, gbps=gbps, floor_ops=[[2.4e9, 1e9]])}

    return {
        "machine_info": {"device": device, "git_commit": "abc123", "copy_bandwidth_gbps": 3000.0,
                         "versions": {"torch": "2.14.1", "triton": "3.8.0", "xformers": "0.0.35"}},
        "benchmarks": [model("reference", 10.0, 4000), model("reference-compile", 16.0, 3500),
                       model("fast", 24.0, 2500, mfu=0.41), kernel("eager", 3e-3, 800.0),
                       kernel("triton", 1e-3, 2400.0),
                       {"name": "a", "extra_info": dict(stage="audio_front_end", setting="vit", provider="batched",
                                                        clips_per_s=120.0)},
                       {"name": "b", "extra_info": dict(stage="audio_front_end", setting="vit",
                                                        provider="torchaudio-loop", clips_per_s=8.0)}],
    }


def test_tables_compute_speedups_and_bandwidth_share(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_result()))
    text = report.render(report.load(path), "r.json")
    assert "NVIDIA H100 80GB HBM3" in text and "abc123" in text
    row = next(line for line in text.splitlines() if line.startswith("| clip-b16-base | train"))
    assert "| 2.40x | 1.50x | 41.0% | 4000 -> 2500 | - |" in row
    triton = next(line for line in text.splitlines() if "| triton |" in line)
    assert "| 1.000 | 2400.0 | 80.0 | - | 80.0 | 3.00x |" in triton  # % of floor: 0.8 ms of 1 ms
    eager = next(line for line in text.splitlines() if "| eager |" in line)
    assert "| 3.000 | 800.0 | 26.7 | - | 26.7 | 1.00x |" in eager
    assert "| audio_front_end | vit | batched | 120.00 | 15.00x |" in text


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nold\n{report.END}\noutro\n")
    report.update_readme("new table", readme)
    assert readme.read_text() == f"intro\n{report.START}\nnew table\n{report.END}\noutro\n"
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers here\n")
    with pytest.raises(ValueError, match="no <!-- bench-table:start -->"):
        report.update_readme("x", plain)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is in the dev extra")
    report.plot(_result(), tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_rejects_files_that_are_not_benchmark_json(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"foo": 1}))
    with pytest.raises(ValueError, match="not a pytest-benchmark JSON"):
        report.load(bad)


def test_merge_appends_benchmarks_and_skips_missing_files(tmp_path, capsys):
    """scripts/gpu_session.sh merges the JSON of each time-limited step into one file; a step stopped before it wrote
    its file (none, or an empty one) is skipped, and the first file's machine_info is kept."""
    first, second = _result(), _result(device="other")
    (tmp_path / "a.json").write_text(json.dumps(first))
    (tmp_path / "b.json").write_text(json.dumps(second))
    into = tmp_path / "all.json"
    (tmp_path / "empty.json").write_text("")  # what a killed run of pytest-benchmark < 5.3 leaves
    assert report.main(["--merge-into", str(into), str(tmp_path / "a.json"), str(tmp_path / "missing.json"),
                        str(tmp_path / "empty.json")]) == 0
    assert report.main(["--merge-into", str(into), str(tmp_path / "b.json")]) == 0
    merged = report.load(into)
    assert len(merged["benchmarks"]) == 2 * len(first["benchmarks"])
    assert merged["machine_info"]["device"] == "NVIDIA H100 80GB HBM3"
    assert report.merge([tmp_path / "missing.json"], tmp_path / "none.json") == 0
    assert not (tmp_path / "none.json").exists()
    assert "benchmarks added" in capsys.readouterr().out


def test_newest_result_orders_by_recorded_run_time_and_prefers_gpu(tmp_path):
    """Files are picked by the datetime pytest-benchmark records, not by mtime (a clone gives all the same one)."""
    def write(name, device, when):
        (tmp_path / name).write_text(json.dumps({**_result(device), "datetime": when}))

    assert report.newest_result(tmp_path) is None
    write("b_cpu_new.json", "cpu", "2026-11-28T10:00:00+00:00")
    write("a_cpu_old.json", "cpu", "2026-11-20T10:00:00+00:00")
    assert report.newest_result(tmp_path).name == "b_cpu_new.json"
    write("z_gpu_old.json", "NVIDIA H200", "2026-11-01T10:00:00+00:00")
    write("c_gpu_new.json", "NVIDIA H200", "2026-11-02T10:00:00+00:00")
    assert report.newest_result(tmp_path).name == "c_gpu_new.json"
    assert report.newest_result(tmp_path, prefer_gpu=False).name == "b_cpu_new.json"


def test_memory_table_compares_options_with_fast_and_reference():
    def row(provider, rate, peak, saved):
        return {"name": provider, "extra_info": dict(preset="clip-b16-base", mode="train", batch=8, frames=10,
                                                     provider=provider, clips_per_s=rate, peak_mem_mib=peak,
                                                     saved_activation_mib=saved, median_s=8 / rate)}

    data = {"machine_info": {"device": "NVIDIA H200"},
            "benchmarks": [row("reference", 10.0, 4000, 3000.0), row("fast", 20.0, 3000, 2400.0),
                           row("fast-recompute-ffn", 18.0, 2600, 1950.0)]}
    table = report.memory_table(data)
    assert "| clip-b16-base | train | 8 | 10 | fast | 20.00 | 1.00x | 3000 | 0.75x | 2400.0 | 0.80x |" in table
    assert "| fast-recompute-ffn | 18.00 | 0.90x | 2600 | 0.65x | 1950.0 | 0.65x |" in table
    assert "**Memory options**" in report.render(data, "x.json")
    assert report.memory_table(_result()) == ""  # no memory options measured: no table


def test_targets_table_states_goal_measured_and_what_the_floor_allows():
    table = report.targets_table(_result())
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:]}
    assert rows["AV-Adapter forward: share of the measured copy bandwidth"].endswith(
        "| av_adapter vit-b16 fwd | >= 70% | 80% | yes | 100% |")
    # 3 ms eager over the 1 ms fused kernel; 3 ms over the fused floor of 0.8 ms is the most any kernel could gain
    assert rows["AV-Adapter forward vs the eager op chain"].endswith("| >= 3.00x | 3.00x | yes | 3.75x |")
    assert rows["Temporal attention forward vs SDPA with permutes"].endswith(
        "| temporal_attention vit-b16 fwd | >= 2.00x | - | - | - |")
    assert rows["Training step vs the eager reference"].endswith(
        "| clip-b16-base train 8 10 | >= 2.00x | 2.40x | yes | - |")
    assert "**Targets**" in report.render(_result(), "r.json")
    # a FLOP term counts where the device's peak is known: 1 GFLOP at 989 TFLOP/s is far below 0.8 ms
    info = _result()["benchmarks"][-3]["extra_info"]
    assert report.floor_seconds(info, 3e12, 989e12) == pytest.approx(0.8e-3)
    assert report.floor_seconds(info, 3e12, 1e12) == pytest.approx(1e-3)  # compute-bound at 1 TFLOP/s
    assert report.floor_seconds({**info, "floor_ops": None}, 3e12, 1e12) is None
    cpu = {**_result("cpu"), "benchmarks": [b for b in _result()["benchmarks"] if "op" not in b["extra_info"]]}
    cpu["benchmarks"] = [b for b in cpu["benchmarks"] if b["extra_info"].get("preset") is None]
    assert report.targets_table(cpu) == ""  # nothing measured: no table
