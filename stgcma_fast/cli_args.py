"""Command-line conventions of ``stgcma-fast``, as reusable pieces, and the argument checks the Python API shares.

Every subcommand follows the same rules:

- Values are checked while parsing, by the ``type=`` validators here (:func:`positive_int`, :func:`probability`,
  :func:`existing_dir`, :func:`writable_dir`, :func:`output_file`, ...). Each raises
  ``argparse.ArgumentTypeError("expected ..., got ...")``, which argparse prefixes with the option's name.
- Checks that need several arguments (or an argument and the file system) run at the top of the command's handler,
  before any work, and raise :class:`UsageError`.
- A user mistake ends with ONE line on stderr, ``stgcma-fast <command>: error: <message>``, and exit code 2:
  :class:`ArgumentParser` does so for parse errors, :func:`run_cli` for :class:`UsageError`, ``ValueError``,
  ``OSError`` (missing, unreadable or unwritable paths) and ``MediaError`` raised by the handler. ``--debug``
  (accepted before or after the subcommand) re-raises them with their traceback. Ctrl-C exits 130 with one line.
  Other exceptions are bugs and keep their traceback.
- Nothing is created before the checks have passed: the path validators only look, never create.

A new subcommand gets all of this by being added with ``subparsers.add_parser(...)`` under a parser built with
:class:`ArgumentParser` and dispatched by :func:`run_cli` (``stgcma_fast.cli.main`` does both); its handler takes
the parsed namespace and returns the exit code.

The ``check_*`` functions are the same checks for Python callers: they raise ``ValueError`` (or, for paths,
``FileNotFoundError`` / ``NotADirectoryError`` / ``IsADirectoryError`` / ``PermissionError``) naming the argument,
the expected and the received value: ``expected fps to be an int >= 1, got 0 (int)``.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn


class UsageError(ValueError):
    """A command-line mistake found by a check that needs several arguments (or an argument and the file system).

    Its message says what was expected and what came, naming the options: ``run_cli`` prints it as one line and
    exits with code 2."""


# ----------------------------------------------------------------------------------------------- value checks


def _bounds(kind: str, lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    """``"an int >= 1"``, ``"a float in [0, 1]"``, ``"a float > 0"``: the phrase after "expected"."""
    article = "an" if kind[0] in "aeiou" else "a"
    if lo is not None and hi is not None:
        return f"{article} {kind} in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{article} {kind} {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{article} {kind} {'<' if hi_open else '<='} {hi}"
    return f"{article} {kind}"


def _int_ok(value: int, lo: int | None, hi: int | None, even: bool) -> bool:
    return (lo is None or value >= lo) and (hi is None or value <= hi) and (not even or value % 2 == 0)


def _float_ok(value: float, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool:
    if not math.isfinite(value):
        return False
    if lo is not None and (value <= lo if lo_open else value < lo):
        return False
    return hi is None or (value < hi if hi_open else value <= hi)


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None, *, even: bool = False) -> int:
    """``value`` as an int in [lo, hi] (and even); otherwise ``ValueError`` naming ``name`` and the value.

    Python and numpy integers pass; bools, floats and strings do not (``"3"`` is a mistake at an API boundary)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and _int_ok(int(value), lo, hi, even):
        return int(value)
    kind = "even int" if even else "int"
    raise ValueError(f"expected {name} to be {_bounds(kind, lo, hi)}, got {value!r} ({type(value).__name__})")


def check_float(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a finite float in the interval (closed unless ``lo_open`` / ``hi_open``); otherwise
    ``ValueError`` naming ``name`` and the value. Ints pass; bools and strings do not."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and _float_ok(float(value), lo, hi, lo_open,
                                                                                     hi_open):
        return float(value)
    raise ValueError(f"expected {name} to be {_bounds('float', lo, hi, lo_open, hi_open)}, got {value!r} "
                     f"({type(value).__name__})")


# ----------------------------------------------------------------------------------------------- path checks


def _path_kind(path: Path) -> str:
    if path.is_dir():
        return "a folder"
    if path.exists():
        return "a file" if path.is_file() else "not a regular file"
    return "no such file or folder"


def _writable_problem(path: Path, it: str = "it") -> tuple[type[OSError], str] | None:
    """Why ``path`` cannot be (or become) a writable folder, or None (``it``: how the reason names ``path``).
    Looks only: creates nothing."""
    if path.exists():
        if not path.is_dir():
            return NotADirectoryError, f"{it} is {_path_kind(path)}"
        if not os.access(path, os.W_OK | os.X_OK):
            return PermissionError, f"{it} is not writable"
        return None
    for parent in path.absolute().parents:  # the nearest existing one decides
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return NotADirectoryError, f"'{parent}' is {_path_kind(parent)}, not a folder"
            if not os.access(parent, os.W_OK | os.X_OK):
                return PermissionError, f"'{parent}' is not writable"
            return None
    return FileNotFoundError, "no existing parent folder"


def _output_problem(path: Path) -> tuple[type[OSError], str] | None:
    """Why a file cannot be written at ``path`` (its folder created if need be), or None. Creates nothing."""
    if str(path) in ("", ".") or path.name == "":
        return IsADirectoryError, "it names no file"
    if path.is_dir():
        return IsADirectoryError, "it is a folder"
    if path.exists() and not os.access(path, os.W_OK):
        return PermissionError, "it is not writable"
    return _writable_problem(path.parent, it=f"'{path.parent}'")


def check_existing_dir(name: str, path: str | os.PathLike) -> Path:
    """``path`` as a Path to an existing folder; ``FileNotFoundError`` / ``NotADirectoryError`` naming ``name``."""
    path = Path(path)
    if path.is_dir():
        return path
    error = FileNotFoundError if not path.exists() else NotADirectoryError
    raise error(f"expected {name} to be an existing folder, got '{path}' ({_path_kind(path)})")


def check_existing_file(name: str, path: str | os.PathLike) -> Path:
    """``path`` as a Path to an existing file; ``FileNotFoundError`` / ``IsADirectoryError`` naming ``name``."""
    path = Path(path)
    if path.is_file():
        return path
    error = FileNotFoundError if not path.exists() else IsADirectoryError
    raise error(f"expected {name} to be an existing file, got '{path}' ({_path_kind(path)})")


def check_writable_dir(name: str, path: str | os.PathLike) -> Path:
    """``path`` as a Path to a folder that is writable or can be created (its nearest existing parent is a writable
    folder); otherwise ``NotADirectoryError`` / ``PermissionError`` naming ``name``. Creates nothing."""
    path = Path(path)
    problem = _writable_problem(path)
    if problem is None:
        return path
    raise problem[0](f"expected {name} to be a writable folder, got '{path}' ({problem[1]})")


def check_output_file(name: str, path: str | os.PathLike) -> Path:
    """``path`` as a Path a file can be written to (not a folder; its parent as in :func:`check_writable_dir`);
    otherwise ``IsADirectoryError`` / ``NotADirectoryError`` / ``PermissionError`` naming ``name``."""
    path = Path(path)
    problem = _output_problem(path)
    if problem is None:
        return path
    raise problem[0](f"expected {name} to be a writable file path, got '{path}' ({problem[1]})")


# ----------------------------------------------------------------------------------------------- argparse types


def _typed(name: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    parse.__name__ = name  # argparse names the type by it in some messages
    return parse


def int_range(lo: int | None = None, hi: int | None = None, *, even: bool = False) -> Callable[[str], int]:
    """argparse ``type=``: an int in [lo, hi] (and even)."""
    kind = "even int" if even else "int"
    wanted = _bounds(kind, lo, hi)

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not _int_ok(value, lo, hi, even):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return _typed(kind.replace(" ", "_"), parse)


def float_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                hi_open: bool = False) -> Callable[[str], float]:
    """argparse ``type=``: a finite float in the interval (closed unless ``lo_open`` / ``hi_open``)."""
    wanted = _bounds("float", lo, hi, lo_open, hi_open)

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not _float_ok(value, lo, hi, lo_open, hi_open):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return _typed("float", parse)


positive_int = int_range(1)
"""argparse ``type=``: an int >= 1."""
nonneg_int = int_range(0)
"""argparse ``type=``: an int >= 0."""
positive_float = float_range(0, lo_open=True)
"""argparse ``type=``: a finite float > 0."""
probability = float_range(0, 1)
"""argparse ``type=``: a float in [0, 1]."""


def comma_list(choices: Sequence[str] | Callable[[], Sequence[str]]) -> Callable[[str], list[str]]:
    """argparse ``type=``: a comma-separated list of names among ``choices`` (a sequence, or a function returning
    one, for choices that need an import); empty items are dropped, so ``""`` is the empty list."""

    def parse(text: str) -> list[str]:
        allowed = list(choices() if callable(choices) else choices)
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"expected comma-separated names among {allowed}, got {text!r} "
                                             f"(unknown: {', '.join(unknown)})")
        return names

    return _typed("list", parse)


def _path_type(kind: str, problem: Callable[[Path], tuple[type[OSError], str] | None]) -> Callable[[str], Path]:
    def parse(text: str) -> Path:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
        path = Path(text).expanduser()
        found = problem(path)
        if found is not None:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r} ({found[1]})")
        return path

    return _typed("path", parse)


def _existing(want_dir: bool) -> Callable[[Path], tuple[type[OSError], str] | None]:
    def problem(path: Path) -> tuple[type[OSError], str] | None:
        ok = path.is_dir() if want_dir else path.is_file()
        if ok and os.access(path, os.R_OK | (os.X_OK if want_dir else 0)):
            return None
        return (OSError, "it is not readable") if ok else (OSError, _path_kind(path))

    return problem


existing_dir = _path_type("an existing folder", _existing(want_dir=True))
"""argparse ``type=``: a readable existing folder, as a Path."""
existing_file = _path_type("an existing file", _existing(want_dir=False))
"""argparse ``type=``: a readable existing file, as a Path."""
writable_dir = _path_type("a writable folder", _writable_problem)
"""argparse ``type=``: a writable folder, or one that can be created (its nearest existing parent is a writable
folder); nothing is created while checking."""
output_file = _path_type("a writable file path", _output_problem)
"""argparse ``type=``: a file path whose folder is as :data:`writable_dir` accepts (an existing file is replaced)."""


def torch_device(text: str) -> str:
    """argparse ``type=``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and available on this machine."""
    import torch  # here, not at import: building a parser costs nothing

    wanted = "auto, cpu, cuda, cuda:N or mps"
    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"expected an available device, got {text!r} (no CUDA device here)")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"expected an available device, got {text!r} (this machine has "
                                             f"{count} CUDA device(s): cuda:0 .. cuda:{count - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"expected an available device, got {text!r} (MPS is not available)")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return text


# ----------------------------------------------------------------------------------------------- parser and runner


def one_line(message: object) -> str:
    """``message`` on one line: line breaks and runs of spaces become single spaces."""
    return " ".join(str(message).split())


class ArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr, ``<prog>: error: <message> (see --help)``,
    and exit code 2 (no usage block), with a ``--debug`` flag on every (sub)parser, and whose subparsers are of
    the same class. The parsed namespace records the innermost command's ``prog`` as ``command_prog``."""

    def __init__(self, *args: Any, debug_flag: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if debug_flag:  # SUPPRESS: a subcommand's absent flag never hides one given before the subcommand
            self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                              help="on an error, show the Python traceback instead of one line")

    def add_subparsers(self, **kwargs: Any) -> argparse._SubParsersAction:
        kwargs.setdefault("parser_class", type(self))
        return super().add_subparsers(**kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        if not hasattr(namespace, "command_prog"):  # the innermost subparser returns first
            namespace.command_prog = self.prog
        return namespace, extras

    def parse_args(self, args: Sequence[str] | None = None,
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        namespace, extras = self.parse_known_args(args, namespace)
        if extras and isinstance(getattr(namespace, "overrides", None), list):
            # `key=value` overrides may follow options (argparse binds a trailing nargs="*" positional early)
            namespace.overrides += [e for e in extras if "=" in e and not e.startswith("-")]
            extras = [e for e in extras if "=" not in e or e.startswith("-")]
        if extras:  # reported by the subcommand they were given to
            self._fail(getattr(namespace, "command_prog", self.prog), f"unrecognized arguments: {' '.join(extras)}")
        return namespace

    def error(self, message: str) -> NoReturn:
        self._fail(self.prog, message)

    def _fail(self, prog: str, message: str) -> NoReturn:
        self.exit(2, f"{prog}: error: {one_line(message)} (see --help)\n")


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` reports a problem with the user's input (arguments, paths, files, media) rather than a bug."""
    if isinstance(exc, (ValueError, OSError)):  # UsageError is a ValueError; path errors are OSErrors
        return True
    audio_io = sys.modules.get("stgcma_fast.data.audio_io")  # not imported: no MediaError can have been raised
    return audio_io is not None and isinstance(exc, audio_io.MediaError)


def error_message(exc: BaseException) -> str:
    """One line for ``exc``: OSErrors with a file name as ``<reason>: '<file>'``, the others as ``str(exc)``."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        files = f"'{exc.filename}'" + (f" -> '{exc.filename2}'" if exc.filename2 is not None else "")
        return one_line(f"{exc.strerror}: {files}")
    return one_line(str(exc) or type(exc).__name__)


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the chosen handler (``args.func(args)``) and return the exit
    code: the handler's (0 if it returns None), 2 after one line on stderr for a usage error (module doc), 130 for
    Ctrl-C. With ``--debug`` anywhere in the command, errors are re-raised with their traceback."""
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a parse error, already reported on one line (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    prog = getattr(args, "command_prog", parser.prog)
    debug = bool(getattr(args, "debug", False))
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug or not is_user_error(exc):
            raise
        print(f"{prog}: error: {error_message(exc)}", file=sys.stderr)
        return 2
    return 0 if code is None else int(code)
