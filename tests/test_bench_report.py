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

    def kernel(provider, median, gbps):
        return {"name": provider, "extra_info": dict(op="av_adapter", shape="vit-b16", mode="fwd", provider=provider,
                                                     median_s=median, gbps=gbps)}

    return {
        "machine_info": {"device": device, "git_commit": "abc123", "copy_bandwidth_gbps": 3000.0,
                         "versions": {"torch": "2.14.1", "triton": "3.8.0", "xformers": "0.0.35"}},
        "benchmarks": [model("reference", 10.0, 4000), model("reference-compile", 16.0, 3500),
                       model("fast", 24.0, 2500, mfu=0.41), kernel("eager", 3e-3, 500.0),
                       kernel("triton", 1e-3, 1500.0),
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
    assert "| 1.000 | 1500.0 | 50.0 | - | 3.00x |" in triton
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
