"""Atomic writes and strict text reads (stgcma_fast.fileio): permissions, leftovers, path errors, interrupted writes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stgcma_fast import fileio
from stgcma_fast.fileio import (
    atomic_save,
    atomic_write_bytes,
    atomic_write_text,
    cleanup_stale_temps,
    read_json,
    read_lines,
    read_text,
)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftover(target: Path, pid: int, host: str | None = None) -> Path:
    tmp = target.parent / f".{target.name}.{host or fileio._host()}.{pid}.deadbeef.tmp"
    tmp.write_bytes(b"half a checkpoint")
    return tmp


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_writes_replace_atomically_with_open_permissions(tmp_path: Path, umask_027: int) -> None:
    path = atomic_write_bytes(tmp_path / "new" / "deeper" / "a.bin", b"one")
    assert path.read_bytes() == b"one"
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask_027 == 0o640, "not mkstemp's 0600"
    reference = tmp_path / "ref.bin"
    with open(reference, "wb") as fh:
        fh.write(b"x")
    assert path.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777
    os.chmod(path, 0o604)  # an existing file keeps its mode, as open(path, "wb") would keep it
    atomic_write_text(path, "twö")
    assert path.read_bytes() == "twö".encode() and path.stat().st_mode & 0o777 == 0o604
    saved = atomic_save({"t": torch.arange(3)}, tmp_path / "t.pt")
    assert torch.equal(torch.load(saved, weights_only=True)["t"], torch.arange(3))
    assert saved.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "ref.bin", "t.pt"], "temporary file left behind"


def test_leftovers_of_dead_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    dead = _leftover(target, _dead_pid())
    alive = _leftover(target, os.getpid())  # a write in flight in this process: kept
    other_host = _leftover(target, _dead_pid(), host="another-node")  # cannot tell from here: kept until old
    old = _leftover(target, os.getpid(), host="another-node-2")
    os.utime(old, (time.time() - 2 * fileio.STALE_AFTER_S,) * 2)
    unrelated = tmp_path / ".other.pt.x.1.ab.tmp"
    unrelated.write_bytes(b"")
    atomic_write_bytes(target, b"new")
    assert not dead.exists() and not old.exists()
    assert alive.exists() and other_host.exists() and unrelated.exists()
    assert target.read_bytes() == b"new"
    assert sorted(cleanup_stale_temps(target, max_age_s=0.0)) == sorted([alive, other_host])
    assert not alive.exists() and not other_host.exists()


def test_cleanup_reports_what_it_removed(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    dead = _leftover(target, _dead_pid())
    assert cleanup_stale_temps(target) == [dead]
    assert cleanup_stale_temps(target) == []
    assert cleanup_stale_temps(tmp_path / "absent-folder" / "x.pt") == []


def test_parent_that_is_a_file_and_target_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"keep")
    with pytest.raises(NotADirectoryError, match=rf"cannot write {tmp_path}/file/sub/x.pt: {tmp_path}/file is not a"):
        atomic_write_bytes(tmp_path / "file" / "sub" / "x.pt", b"data")
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError, match=rf"cannot write {tmp_path}/folder: it is a folder"):
        atomic_write_bytes(tmp_path / "folder", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]
    assert (tmp_path / "file").read_bytes() == b"keep" and not any((tmp_path / "folder").iterdir())


def test_read_only_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated (the test may run as root, whom chmod does not stop): the temporary file cannot be created."""
    (tmp_path / "a.pt").write_bytes(b"old")
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if str(path).endswith(".tmp"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(fileio.os, "open", refusing_open)
    with pytest.raises(PermissionError, match=rf"cannot write {tmp_path}/a.pt: the folder {tmp_path} is not writable"):
        atomic_write_bytes(tmp_path / "a.pt", b"new")
    assert _listing(tmp_path) == {"a.pt": b"old"}


@pytest.mark.parametrize("stage", ["torch.save", "fsync", "os.replace"])
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   stage: str) -> None:
    path = atomic_save({"v": torch.ones(4)}, tmp_path / "c.pt")
    before = _listing(tmp_path)

    def fail(*args, **kwargs):
        if stage == "torch.save":
            args[1].write(b"partial")  # half of the payload reached the temporary file
        raise OSError(errno.ENOSPC, "No space left on device")

    target = {"torch.save": (torch, "save"), "fsync": (fileio.os, "fsync"), "os.replace": (fileio.os, "replace")}
    monkeypatch.setattr(*target[stage], fail)
    with pytest.raises(OSError, match=rf"cannot write {path}: .*No space left on device") as info:
        atomic_save({"v": torch.zeros(4)}, path)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert _listing(tmp_path) == before
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.ones(4))


def test_an_interrupt_keyboard_or_other_error_also_cleans_up(tmp_path: Path) -> None:
    def writer(fh):
        fh.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write(tmp_path / "x.bin", writer)
    assert list(tmp_path.iterdir()) == []

    def bad_writer(fh):
        raise RuntimeError("writer bug")

    with pytest.raises(RuntimeError, match="^writer bug$"):  # not an OSError: passes through unchanged
        fileio.atomic_write(tmp_path / "x.bin", bad_writer)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("data, kind", [("text", "bytes"), (b"bytes", "str")])
def test_wrong_data_types(tmp_path: Path, data, kind: str) -> None:
    write = atomic_write_bytes if kind == "bytes" else atomic_write_text
    with pytest.raises(TypeError, match=rf"expected (data|text) to be (a )?{kind}, got {type(data).__name__}"):
        write(tmp_path / "x", data)
    assert list(tmp_path.iterdir()) == []


def test_read_text_names_file_line_column_and_encoding(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"first\nsecond\nthi\xe9rd\n")  # one Latin-1 byte on line 3
    with pytest.raises(ValueError, match=rf"^{path}:3: cannot decode byte\(s\) b'\\xe9' at column 4 as UTF-8") as info:
        read_text(path)
    assert isinstance(info.value.__cause__, UnicodeDecodeError)
    path.write_bytes(b"\xef\xbb\xbfa\r\nb\n")  # BOM and CRLF: accepted
    assert read_text(path) == "a\r\nb\n" and list(read_lines(path)) == ["a\n", "b\n"]
    path.write_bytes(b"\xef\xbb\xbfok\n\xff")
    with pytest.raises(ValueError, match=rf"{path}:2: cannot decode byte\(s\) b'\\xff' at column 1 as UTF-8"):
        read_text(path)
    with pytest.raises(FileNotFoundError, match=rf"annotation file {tmp_path}/absent.txt does not exist"):
        read_text(tmp_path / "absent.txt", "annotation file")
    with pytest.raises(IsADirectoryError, match=rf"file {tmp_path} is a folder"):
        read_text(tmp_path)


def test_read_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    path.write_text('[\n  {"a": 1},\n  {"a": 2,}\n]\n')
    with pytest.raises(ValueError, match=rf"^{path}:3:11: not valid JSON"):
        read_json(path)
    path.write_text('[{"a": "x"}]')
    assert read_json(path) == [{"a": "x"}]
