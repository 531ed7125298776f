"""Atomic file writes and strict text reads, used by everything in stgcma-fast that writes or parses a file.

Writes (:func:`atomic_write`, :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_save`) go to a
hidden temporary file in the target's folder, ``.{name}.{host}.{pid}.{random}.tmp``, which is flushed and fsynced,
then renamed over the target (``os.replace``) and the folder fsynced: a reader sees the old file or the new one,
never a mix, and a crash mid-write never leaves a truncated target. The new file gets the permissions ``open()`` /
``torch.save`` would give it: those of the file it replaces, or ``0o666`` minus the umask for a new one. A symbolic
link at the target is replaced by the file (the file it pointed to is left alone).

Leftovers of killed writes are removed by the next write to the same target (:func:`cleanup_stale_temps`): a
temporary file whose writer (same host, by pid) is no longer alive, or that is older than :data:`STALE_AFTER_S`.

Path errors are ``OSError`` subclasses that name the target, raised before anything is written: a missing parent
folder is created; a parent that is a file gives ``NotADirectoryError``; a target that is a folder
``IsADirectoryError``; a folder we may not write to ``PermissionError``. An ``OSError`` while writing or renaming
(disk full ...) is re-raised as the same class with the target's path in front of its message; anything else the
writer raises passes through unchanged. In every case the temporary file is removed and the target is untouched.

Reads (:func:`read_text`, :func:`read_json`) decode UTF-8 (a leading byte-order mark is accepted and dropped); a
decoding error is a ``ValueError`` naming the file, the line, the column and the encoding.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

STALE_AFTER_S: float = 3600.0
"""A temporary file older than this (seconds) is a leftover even if a process with its writer's pid is alive."""

ENCODING = "UTF-8"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def _temp_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.(?:(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]+|[^/]*)\.tmp$")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def cleanup_stale_temps(path: str | Path, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove leftovers of killed writes to ``path``; returns the files removed.

    A leftover is a hidden ``.{name}.*.tmp`` file next to ``path``. It is removed when it was written on this host by
    a process that no longer exists, or is older than ``max_age_s`` seconds (any host; files of an older naming
    scheme, without a pid, only by age). Files that vanish meanwhile or cannot be removed are skipped.
    """
    path = Path(path)
    pattern = _temp_pattern(path.name)
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []
    removed: list[Path] = []
    host, now = _host(), time.time()
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        dead_writer = match["pid"] is not None and match["host"] == host and not _pid_alive(int(match["pid"]))
        if dead_writer or now - info.st_mtime > max_age_s:
            try:
                os.unlink(entry.path)
            except OSError:
                continue
            removed.append(Path(entry.path))
    return removed


def _path_error(cls: type[OSError], path: Path, what: str, cause: OSError | None = None) -> OSError:
    err = cls(f"cannot write {path}: {what}")
    if cause is not None:
        err.errno = cause.errno  # (not filename: str() would then show only errno, strerror and filename)
    return err


def _prepare_parent(path: Path) -> None:
    """Create the parent folders; refuse a target that is a folder or a parent that is a file (named)."""
    if path.is_dir():
        raise _path_error(IsADirectoryError, path, "it is a folder, expected a file path")
    for parent in (path.parent, *path.parent.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise _path_error(NotADirectoryError, path, f"{parent} is not a folder")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except PermissionError as exc:
        raise _path_error(PermissionError, path, f"cannot create its folder {path.parent} ({exc.strerror})",
                          exc) from exc
    except OSError as exc:
        raise _path_error(type(exc), path, f"cannot create its folder {path.parent} ({exc.strerror or exc})",
                          exc) from exc


def _mode_for(path: Path) -> int | None:
    """The mode an ``open(path, "w")`` would leave: the existing file's, else None (0o666 minus the umask)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return stat.S_IMODE(info.st_mode) if stat.S_ISREG(info.st_mode) else None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _reraise_with_path(exc: OSError, path: Path) -> OSError:
    if str(path) in str(exc):
        return exc
    cls = type(exc) if type(exc).__module__ == "builtins" else OSError
    return _path_error(cls, path, str(exc), exc)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` atomically: ``write(fh)`` fills a temporary binary file, which then replaces ``path``.

    Returns ``path``. See the module doc for permissions, leftovers and errors.
    """
    path = Path(path)
    _prepare_parent(path)
    cleanup_stale_temps(path)
    tmp = path.parent / f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    mode = _mode_for(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    except PermissionError as exc:
        raise _path_error(PermissionError, path, f"the folder {path.parent} is not writable", exc) from exc
    except OSError as exc:
        raise _reraise_with_path(exc, path) from exc
    try:
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, path)
        except OSError as exc:
            raise _reraise_with_path(exc, path) from exc
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected data to be bytes, got {type(data).__name__}")
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically in ``encoding`` (newlines as given); returns ``path``."""
    if not isinstance(text, str):
        raise TypeError(f"expected text to be a str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; returns ``path``."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


# ------------------------------------------------------------------------------------------------------ reading


def _check_readable(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, f"{what} {path} does not exist", str(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{what} {path} is a folder, expected a file", str(path))


def read_text(path: str | Path, what: str = "file") -> str:
    """The text of ``path`` decoded as UTF-8 (a leading BOM dropped), newlines as in the file.

    Raises ``FileNotFoundError`` / ``IsADirectoryError`` naming ``what`` and the path, and ``ValueError`` naming the
    file, line, column and encoding for bytes that are not UTF-8 (chained from the ``UnicodeDecodeError``).
    """
    path = Path(path)
    _check_readable(path, what)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
        pos = exc.start + bom
        line = data.count(b"\n", 0, pos) + 1
        column = pos - (data.rfind(b"\n", 0, pos) + 1) + 1
        raise ValueError(
            f"{path}:{line}: cannot decode byte(s) {data[pos:pos + exc.end - exc.start]!r} at column {column} as "
            f"{ENCODING} ({exc.reason}); expected a {ENCODING} text file (save it as UTF-8)"
        ) from exc


def read_lines(path: str | Path, what: str = "file") -> io.StringIO:
    """:func:`read_text` as an iterable of lines (universal newlines, as ``open()`` reads them)."""
    return io.StringIO(read_text(path, what), newline=None)


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parse a UTF-8 JSON file; ``ValueError`` naming the file, line and column for invalid JSON."""
    path = Path(path)
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from exc
