"""`stgcma-fast demo`: the README's main job, on a small CLIP-shaped ViT."""

from __future__ import annotations

import os
import re

import pytest

from stgcma_fast.cli import main


def test_demo_trains_and_reports(capsys):
    assert main(["demo", "--steps", "24", "--size", "small", "--frames", "2", "--no-progress", "--lr", "3e-3"]) == 0
    out = capsys.readouterr().out
    assert "trainable" in out and "frozen" in out and "backends:" in out
    m = re.search(r"done: 24 steps, batch 2, loss ([0-9.]+) -> ([0-9.]+), ([0-9.]+) clips/s", out)
    assert m, out
    first, last, rate = map(float, m.groups())
    assert last < first, f"the demo should learn its generated patterns: loss {first} -> {last}"
    assert rate > 0


def test_unknown_command_is_one_line_and_exit_code_2(capsys):
    assert main(["fly"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stgcma-fast: error: ") and "invalid choice: 'fly'" in err


def test_readme_parameter_table_is_generated_by_the_code():
    from pathlib import Path

    from stgcma_fast.cli import params_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("<!-- params-table:start -->\n")[1].split("\n<!-- params-table:end -->")[0]
    assert block == params_table()


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the CPU self-test needs the Triton interpreter (tests/conftest.py sets it without a GPU)")
def test_selftest_command_checks_kernels_in_the_interpreter(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("STGCMA_FAST_CACHE", str(tmp_path))
    assert main(["selftest", "--device", "cpu", "--dtypes", "fp32", "--ops", "t_adapter,temporal_attention"]) == 0
    out = capsys.readouterr().out
    assert "ok   t_adapter" in out and "ok   temporal_attention" in out and "2 of 2 checks passed" in out
    assert main(["selftest", "--device", "cpu", "--dtypes", "int8"]) == 2
    assert "argument --dtypes: expected comma-separated names among" in capsys.readouterr().err
    assert main(["selftest", "--device", "cpu", "--ops", "flash"]) == 2
    err = capsys.readouterr().err
    assert "argument --ops: expected comma-separated names among" in err and "unknown: flash" in err
    monkeypatch.delenv("TRITON_INTERPRET")
    assert main(["selftest", "--device", "cpu", "--ops", "t_adapter"]) == 2
    assert "TRITON_INTERPRET=1" in capsys.readouterr().err
