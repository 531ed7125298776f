"""Bad input at the command line (and the Python functions behind it).

Every user mistake must end with exit code 2 and exactly one line on stderr that names the option and the value it
got, never a traceback, and must leave the file system as it was: each case snapshots the temporary tree (and runs
in it, so relative paths land there too) before and after. ``--debug`` shows the traceback instead; genuine bugs keep
theirs. One test runs the installed ``stgcma-fast`` entry point in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from stgcma_fast import cli_args
from stgcma_fast.cli import main
from stgcma_fast.cli_args import UsageError

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def snapshot(root: Path) -> dict[str, tuple[str, int, int, int]]:
    """Every entry under ``root``: kind, size, modification time (ns) and mode."""
    entries = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        entries[str(path.relative_to(root))] = (kind, st.st_size if kind == "file" else 0, st.st_mtime_ns, st.st_mode)
    return entries


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with a regular file, an empty folder and an AVE-like folder (annotations, no videos)."""
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    ave = tmp_path / "ave"
    (ave / "AVE").mkdir(parents=True)
    (ave / "Annotations.txt").write_text("Church bell&AAAAAAAAAAA&good&0&10")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_bad(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``stgcma-fast argv``; assert exit code 2 and exactly one stderr line; return that line."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, f"{argv}: exit code {code}, stdout {out!r}, stderr {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"{argv}: expected one stderr line, got {err!r}"
    assert "Traceback" not in err and out == "", (out, err)
    return lines[0]


# (argv, what the line must name: the option and the received value). "{tmp}" is the sandbox.
CASES: list[tuple[list[str], list[str]]] = [
    (["demo", "--frames", "0"], ["--frames", "'0'", "int >= 1"]),
    (["demo", "--frames", "two"], ["--frames", "'two'"]),
    (["demo", "--steps", "-3"], ["--steps", "'-3'"]),
    (["demo", "--batch-size", "-1"], ["--batch-size", "'-1'", "int >= 0"]),
    (["demo", "--lr", "0"], ["--lr", "'0'", "float > 0"]),
    (["demo", "--lr", "nan"], ["--lr", "'nan'"]),
    (["demo", "--lr", "1e-3x"], ["--lr", "'1e-3x'"]),
    (["demo", "--device", "tpu"], ["--device", "'tpu'"]),
    (["demo", "--device", "cuda:99"], ["--device", "'cuda:99'", "available"]),
    (["demo", "--seed", "-1"], ["--seed", "'-1'"]),
    (["demo", "--amp", "int8"], ["--amp", "'int8'"]),
    (["demo", "--preset", "clip-b16-huge"], ["--preset", "'clip-b16-huge'"]),
    (["params", "--rows", "3"], ["unrecognized arguments", "--rows 3"]),
    (["selftest", "--dtypes", "fp16,int8"], ["--dtypes", "'fp16,int8'", "unknown: int8"]),
    (["selftest", "--ops", "flash"], ["--ops", "'flash'"]),
    (["selftest", "--device", "tpu"], ["--device", "'tpu'"]),
    (["synth", "ave", "--out", "{tmp}/out", "--clips", "0"], ["--clips", "'0'"]),
    (["synth", "ave", "--out", "{tmp}/out", "--clips", "1.5"], ["--clips", "'1.5'"]),
    (["synth", "ave", "--out", "{tmp}/out"], ["--clips", "required"]),
    (["synth", "ave", "--out", "{tmp}/out", "--clips", "1", "--size", "17"], ["--size", "'17'", "even int"]),
    (["synth", "ave", "--out", "{tmp}/out", "--clips", "1", "--size", "8"], ["--size", "'8'", "[16, 4096]"]),
    (["synth", "ave", "--out", "{tmp}/out", "--clips", "1", "--size", "8192"], ["--size", "'8192'"]),
    (["synth", "ave", "--out", "{tmp}/out", "--clips", "1", "--fps", "0"], ["--fps", "'0'"]),
    (["synth", "ave", "--out", "{tmp}/out", "--clips", "1", "--num-classes", "0"], ["--num-classes", "'0'"]),
    (["synth", "ave", "--out", "{tmp}/out", "--clips", "1", "--num-classes", "29"], ["--num-classes", "'29'",
                                                                                     "[1, 28]"]),
    (["synth", "ave", "--out", "{tmp}/out", "--clips", "1", "--distractor-prob", "1.5"],
     ["--distractor-prob", "'1.5'", "[0, 1]"]),
    (["synth", "ave", "--out", "{tmp}/out", "--clips", "1", "--distractor-prob", "-0.1"],
     ["--distractor-prob", "'-0.1'"]),
    (["synth", "ave", "--out", "{tmp}/out", "--clips", "1", "--distractor-prob", "nan"],
     ["--distractor-prob", "'nan'"]),
    (["synth", "ave", "--out", "{tmp}/out", "--clips", "1", "--seed", "-1"], ["--seed", "'-1'"]),
    (["synth", "ave", "--out", "{tmp}/out", "--clips", "1", "--codec", "h265"], ["--codec", "'h265'"]),
    (["synth", "ave", "--out", "{tmp}/file.txt", "--clips", "1"], ["--out", "file.txt'", "it is a file"]),
    (["synth", "ave", "--out", "{tmp}/file.txt/sub/ave", "--clips", "1"],
     ["--out", "file.txt/sub/ave'", "is a file, not a folder"]),
    (["synth", "avs-s4", "--out", "{tmp}/out", "--clips", "0"], ["--clips", "'0'"]),
    (["synth", "avs-s4", "--out", "{tmp}/out", "--clips", "1", "--size", "8"], ["--size", "'8'"]),
    (["synth", "avs-s4", "--out", "{tmp}/file.txt/s4", "--clips", "1"], ["--out", "file.txt/s4'"]),
    (["synth", "avqa", "--out", "{tmp}/out", "--videos", "0"], ["--videos", "'0'"]),
    (["synth", "avqa", "--out", "{tmp}/out", "--videos", "1", "--fps", "0"], ["--fps", "'0'"]),
    (["synth", "avqa", "--out", "{tmp}/out", "--videos", "1", "--size", "31"], ["--size", "'31'"]),
    (["synth", "avqa", "--out", "{tmp}/file.txt", "--videos", "1"], ["--out", "file.txt'"]),
    (["synth", "mnist", "--out", "{tmp}/out"], ["invalid choice", "'mnist'"]),
    (["prepare", "{tmp}/missing"], ["root", "missing'", "no such file or folder"]),
    (["prepare", "{tmp}/file.txt"], ["root", "file.txt'", "a file"]),
    (["prepare", "{tmp}/empty"], ["root", "empty'", "Annotations.txt", "AVE/"]),
    (["prepare", "{tmp}/ave", "--seconds", "-1"], ["--seconds", "'-1'", "float > 0"]),
    (["prepare", "{tmp}/ave", "--seconds", "0"], ["--seconds", "'0'"]),
    (["prepare", "{tmp}/ave", "--seconds", "inf"], ["--seconds", "'inf'"]),
    (["prepare", "{tmp}/ave", "--frames", "0"], ["--frames", "'0'"]),
    (["prepare", "{tmp}/ave", "--workers", "0"], ["--workers", "'0'"]),
    (["prepare", "{tmp}/ave", "--format", "mp3"], ["--format", "'mp3'"]),
    (["prepare", "{tmp}/ave", "--out-dir", "{tmp}/file.txt/wav"], ["--out-dir", "file.txt/wav'", "is a file"]),
    (["prepare", "{tmp}/ave", "--out-dir", "{tmp}/file.txt"], ["--out-dir", "file.txt'", "it is a file"]),
    (["stats", "{tmp}/missing"], ["root", "missing'"]),
    (["stats", "{tmp}/ave", "--max-clips", "0"], ["--max-clips", "'0'"]),
    (["stats", "{tmp}/ave", "--split", "dev"], ["--split", "'dev'"]),
    (["stats", "{tmp}/ave", "--audio-dir", "{tmp}/missing"], ["--audio-dir", "missing'"]),
    (["stats", "{tmp}/ave", "--json", "{tmp}/file.txt/stats.json"], ["--json", "file.txt/stats.json'",
                                                                     "is a file"]),
    (["stats", "{tmp}/ave", "--json", "{tmp}/empty"], ["--json", "empty'", "it is a folder"]),
    (["stats", "{tmp}/ave"], ["root", "ave'", "trainSet.txt"]),  # checked by the handler, before any work
    (["stats", "{tmp}/empty", "--split", "val"], ["root", "empty'", "valSet.txt"]),
]


@pytest.mark.parametrize(("argv", "named"), CASES, ids=[" ".join(a).replace("{tmp}/", "") for a, _ in CASES])
def test_bad_argument_is_one_line_exit_2_and_touches_nothing(argv, named, sandbox, capsys):
    argv = [a.replace("{tmp}", str(sandbox)) for a in argv]
    before = snapshot(sandbox)
    line = run_bad(argv, capsys)
    kind = argv[1] if argv[0] == "synth" and argv[1] in ("ave", "avs-s4", "avqa") else None
    prog = f"stgcma-fast synth {kind}" if kind else f"stgcma-fast {argv[0]}"
    assert line.startswith(f"{prog}: error: "), line
    for part in named:
        assert part in line, f"expected {part!r} in {line!r}"
    assert snapshot(sandbox) == before


def test_read_only_output_folder(sandbox, capsys):
    """A folder the user cannot write to (root ignores permission bits, hence the skip; the next test provokes the
    same check as root)."""
    if IS_ROOT:
        pytest.skip("running as root, which may write into a read-only folder: see the os.access test below")
    locked = sandbox / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        before = snapshot(sandbox)
        line = run_bad(["synth", "ave", "--out", str(locked / "ave"), "--clips", "1"], capsys)
        assert "--out" in line and f"'{locked}' is not writable" in line
        line = run_bad(["stats", str(sandbox / "ave"), "--json", str(locked / "s.json")], capsys)
        assert "--json" in line and "not writable" in line
        assert snapshot(sandbox) == before
    finally:
        locked.chmod(0o755)


def test_unwritable_folder_as_reported_by_os_access(sandbox, capsys, monkeypatch):
    """The same check with ``os.access`` answering "not writable" for one folder, as it does for a user without
    write permission (and for anyone on a read-only file system): works whoever runs the tests."""
    locked = sandbox / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(cli_args.os, "access", lambda p, mode, **kw: Path(p) != locked and real_access(p, mode, **kw))
    before = snapshot(sandbox)
    for argv, option in (
        (["synth", "ave", "--out", str(locked / "deep" / "ave"), "--clips", "1"], "--out"),
        (["synth", "avqa", "--out", str(locked), "--videos", "1"], "--out"),
        (["prepare", str(sandbox / "ave"), "--out-dir", str(locked / "wav")], "--out-dir"),
        (["stats", str(sandbox / "ave"), "--json", str(locked / "s.json")], "--json"),
    ):
        line = run_bad(argv, capsys)
        assert f"argument {option}:" in line and "not writable" in line and str(locked) in line, line
    assert snapshot(sandbox) == before


# ----------------------------------------------------------------------------------------------- errors at run time


def _raiser(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc

    return fail


def test_os_error_during_the_command_is_one_line(sandbox, capsys, monkeypatch):
    from stgcma_fast.data import synth

    target = sandbox / "out" / "AVE" / "x.mp4"
    monkeypatch.setattr(synth, "synth_ave", _raiser(PermissionError(13, "Permission denied", str(target))))
    line = run_bad(["synth", "ave", "--out", str(sandbox / "out"), "--clips", "1"], capsys)
    assert line == f"stgcma-fast synth ave: error: Permission denied: '{target}'"


def test_media_error_during_the_command_is_one_line(sandbox, capsys, monkeypatch):
    from stgcma_fast.data import prepare
    from stgcma_fast.data.audio_io import MediaError

    bad = sandbox / "ave" / "AVE" / "x.mp4"
    monkeypatch.setattr(prepare, "prepare_audio", _raiser(MediaError(bad, "truncated: 3 of 80 frames")))
    line = run_bad(["prepare", str(sandbox / "ave")], capsys)
    assert line == f"stgcma-fast prepare: error: {bad}: truncated: 3 of 80 frames"


def test_multi_line_message_becomes_one_line(sandbox, capsys, monkeypatch):
    from stgcma_fast.data import prepare

    monkeypatch.setattr(prepare, "prepare_audio", _raiser(ValueError("no backend accepts:\n  a: x\n  b: y")))
    line = run_bad(["prepare", str(sandbox / "ave")], capsys)
    assert line == "stgcma-fast prepare: error: no backend accepts: a: x b: y"


def test_ctrl_c_exits_130_with_one_line(sandbox, capsys, monkeypatch):
    from stgcma_fast.data import prepare

    monkeypatch.setattr(prepare, "prepare_audio", _raiser(KeyboardInterrupt()))
    assert main(["prepare", str(sandbox / "ave")]) == 130
    assert capsys.readouterr().err == "stgcma-fast prepare: interrupted\n"


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where, sandbox, capsys):
    argv = ["stats", str(sandbox / "ave")]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(UsageError, match="trainSet.txt"):
        main(argv)


def test_a_bug_keeps_its_traceback(sandbox, monkeypatch):
    from stgcma_fast.data import prepare

    monkeypatch.setattr(prepare, "prepare_audio", _raiser(RuntimeError("a bug, not a usage error")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["prepare", str(sandbox / "ave")])


def test_help_exits_0(capsys):
    assert main(["prepare", "--help"]) == 0
    assert "--out-dir" in capsys.readouterr().out


def test_installed_entry_point_prints_no_traceback(sandbox):
    """The console script as a user runs it: exit code 2, one line on stderr, nothing on stdout, no traceback."""
    exe = shutil.which("stgcma-fast")
    command = [exe] if exe else [sys.executable, "-c", "import sys; from stgcma_fast.cli import main; sys.exit(main())"]
    before = snapshot(sandbox)
    result = subprocess.run([*command, "stats", str(sandbox / "empty")], capture_output=True, text=True, timeout=300,
                            cwd=sandbox)
    assert result.returncode == 2, result
    assert result.stdout == "" and "Traceback" not in result.stderr, result
    assert result.stderr.count("\n") == 1, result
    assert result.stderr.startswith("stgcma-fast stats: error: argument root:"), result
    assert f"'{sandbox / 'empty'}'" in result.stderr and "trainSet.txt" in result.stderr
    assert snapshot(sandbox) == before


# ----------------------------------------------------------------------------------------------- the validators


def test_path_validators_look_but_create_nothing(sandbox):
    before = snapshot(sandbox)
    deep = sandbox / "a" / "b" / "c"
    assert cli_args.writable_dir(str(deep)) == deep
    assert cli_args.writable_dir(str(sandbox / "empty")) == sandbox / "empty"
    assert cli_args.output_file(str(deep / "x.json")) == deep / "x.json"
    assert cli_args.output_file(str(sandbox / "file.txt")) == sandbox / "file.txt"  # replaced when written
    assert cli_args.existing_dir(str(sandbox / "ave")) == sandbox / "ave"
    assert cli_args.existing_file(str(sandbox / "file.txt")) == sandbox / "file.txt"
    assert snapshot(sandbox) == before


@pytest.mark.parametrize(("validator", "text", "expected"), [
    ("positive_int", "0", "expected an int >= 1, got '0'"),
    ("positive_int", "1.0", "expected an int >= 1, got '1.0'"),
    ("nonneg_int", "-2", "expected an int >= 0, got '-2'"),
    ("positive_float", "-inf", "expected a float > 0, got '-inf'"),
    ("probability", "1.0001", "expected a float in [0, 1], got '1.0001'"),
    ("probability", "", "expected a float in [0, 1], got ''"),
    ("existing_dir", "", "expected an existing folder, got ''"),
    ("existing_file", "{tmp}/empty", "expected an existing file, got '{tmp}/empty' (a folder)"),
    ("writable_dir", "{tmp}/file.txt", "expected a writable folder, got '{tmp}/file.txt' (it is a file)"),
    ("output_file", "{tmp}/empty", "expected a writable file path, got '{tmp}/empty' (it is a folder)"),
])
def test_validator_messages(validator, text, expected, sandbox):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError) as info:
        getattr(cli_args, validator)(text.replace("{tmp}", str(sandbox)))
    assert str(info.value) == expected.replace("{tmp}", str(sandbox))


def test_validators_accept_good_values():
    assert cli_args.positive_int(" 3 ") == 3 and cli_args.nonneg_int("0") == 0
    assert cli_args.positive_float("1e-4") == 1e-4 and cli_args.probability("1") == 1.0
    assert cli_args.int_range(16, 4096, even=True)("16") == 16
    assert cli_args.comma_list(["a", "b"])("b, a,") == ["b", "a"] and cli_args.comma_list(["a"])("") == []
    assert cli_args.torch_device("cpu") == "cpu" and cli_args.torch_device("auto") == "auto"


# ----------------------------------------------------------------------------------------------- the Python API


@pytest.mark.parametrize(("kwargs", "error", "named"), [
    ({"clips": 0}, ValueError, "expected clips to be an int >= 1, got 0 (int)"),
    ({"clips": "3"}, ValueError, "expected clips to be an int >= 1, got '3' (str)"),
    ({"clips": True}, ValueError, "got True (bool)"),
    ({"size": 17}, ValueError, "expected size to be an even int in [16, 4096], got 17 (int)"),
    ({"fps": 0}, ValueError, "expected fps to be an int >= 1, got 0"),
    ({"num_classes": 29}, ValueError, "expected num_classes to be an int in [1, 28], got 29"),
    ({"distractor_prob": 1.5}, ValueError, "expected distractor_prob to be a float in [0, 1], got 1.5 (float)"),
    ({"distractor_prob": float("nan")}, ValueError, "expected distractor_prob to be a float in [0, 1], got nan"),
    ({"seed": -1}, ValueError, "expected seed to be an int >= 0, got -1"),
    ({"codec": "h265"}, ValueError, "expected codec in"),
    ({"splits": (0.5, -0.5, 1.0)}, ValueError, "split fractions"),
    ({"out": "{tmp}/file.txt/ave"}, NotADirectoryError, "expected out to be a writable folder"),
    ({"out": "{tmp}/file.txt"}, NotADirectoryError, "(it is a file)"),
])
def test_synth_ave_checks_its_arguments_first(kwargs, error, named, sandbox):
    from stgcma_fast.data.synth import synth_ave

    args = {"out": sandbox / "out", "clips": 1, "size": 16, "fps": 1, **kwargs}
    args["out"] = str(args["out"]).replace("{tmp}", str(sandbox))
    before = snapshot(sandbox)
    with pytest.raises(error) as info:
        synth_ave(**args)
    assert named in str(info.value)
    assert snapshot(sandbox) == before


@pytest.mark.parametrize(("function", "kwargs", "named"), [
    ("synth_avs_s4", {"clips": 0}, "expected clips to be an int >= 1, got 0"),
    ("synth_avs_s4", {"clips": 1, "size": 8}, "expected size to be an int in [16, 4096], got 8"),
    ("synth_avs_s4", {"clips": 1, "distractor_prob": -1}, "expected distractor_prob to be a float in [0, 1], got -1"),
    ("synth_avqa", {"videos": 0}, "expected videos to be an int >= 1, got 0"),
    ("synth_avqa", {"videos": 1, "seconds": 1}, "expected seconds to be an int >= 2, got 1"),
    ("synth_avqa", {"videos": 1, "fps": 2.5}, "expected fps to be an int >= 1, got 2.5 (float)"),
])
def test_other_synth_writers_check_their_arguments_first(function, kwargs, named, sandbox):
    from stgcma_fast.data import synth

    before = snapshot(sandbox)
    with pytest.raises(ValueError) as info:
        getattr(synth, function)(sandbox / "out", **kwargs)
    assert named in str(info.value)
    assert snapshot(sandbox) == before


@pytest.mark.parametrize(("root", "kwargs", "error", "named"), [
    ("missing", {}, FileNotFoundError, "expected root to be an existing folder, got '{tmp}/missing'"),
    ("file.txt", {}, NotADirectoryError, "expected root to be an existing folder, got '{tmp}/file.txt' (a file)"),
    ("empty", {}, FileNotFoundError, "expected root to be an AVE folder"),
    ("ave", {"seconds": -1}, ValueError, "expected seconds to be a float > 0, got -1"),
    ("ave", {"seconds": float("inf")}, ValueError, "expected seconds to be a float > 0, got inf"),
    ("ave", {"workers": 0}, ValueError, "expected workers to be an int >= 1, got 0"),
    ("ave", {"min_frames": 0}, ValueError, "expected min_frames to be an int >= 1, got 0"),
    ("ave", {"video_ids": "AAAAAAAAAAA"}, ValueError, "expected video_ids to be a sequence of ids or None"),
    ("ave", {"out_dir": "{tmp}/file.txt/wav"}, NotADirectoryError, "expected out_dir to be a writable folder"),
])
def test_prepare_audio_checks_its_arguments_first(root, kwargs, error, named, sandbox):
    from stgcma_fast.data.prepare import prepare_audio

    kwargs = {k: v.replace("{tmp}", str(sandbox)) if isinstance(v, str) and k == "out_dir" else v
              for k, v in kwargs.items()}
    before = snapshot(sandbox)
    with pytest.raises(error) as info:
        prepare_audio(sandbox / root, **kwargs)
    assert named.replace("{tmp}", str(sandbox)) in str(info.value)
    assert snapshot(sandbox) == before


@pytest.mark.parametrize(("root", "kwargs", "error", "named"), [
    ("missing", {}, FileNotFoundError, "expected root to be an existing folder"),
    ("ave", {"max_clips": 0}, ValueError, "expected max_clips to be an int >= 1, got 0"),
    ("ave", {"audio_dir": "nowhere"}, FileNotFoundError, "expected audio_dir to be an existing folder, got 'nowhere'"),
])
def test_fbank_stats_checks_its_arguments_first(root, kwargs, error, named, sandbox):
    from stgcma_fast.data.prepare import fbank_stats

    with pytest.raises(error) as info:
        fbank_stats(sandbox / root, "all", **kwargs)
    assert named in str(info.value)
