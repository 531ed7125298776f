"""Checkpoints of what STG-CMA trains: adapters, gates, temporal embeddings, final norm, head.

The frozen backbone comes from timm or its own file, so a checkpoint holds only the trainable tensors (about 11.5M
parameters for CLIP ViT-B/16 Base instead of 97M), the config they belong to and, optionally, the state of the
optimizer, the LR scheduler and the fp16 grad scaler, the step and user metadata (``extra``).

Saving. Everything in a checkpoint must read back with ``torch.load(weights_only=True)`` (tensors and plain Python
values; no code is unpickled). numpy scalars become Python numbers, numpy arrays tensors and paths strings; anything
else that would not read back is refused with a ``TypeError`` naming its place (``extra['history'][3]['loss']``) and
its type, before anything is written. The payload is serialised in memory, read back, then written atomically
(:mod:`stgcma_fast.fileio`): a crash mid-write leaves the previous file intact, the next save removes the leftover
temporary file, and the file's permissions are those ``torch.save`` would give it.

Loading. :func:`load_checkpoint` checks everything before it changes anything: the file (missing: a
``FileNotFoundError``; empty, truncated, a folder, foreign, a plain state dict: a ``ValueError`` naming the file and
what is wrong), the config, every trainable tensor's name, shape and dtype, and the optimizer, scheduler and scaler
states. Only then does it load them; if one of those loads still fails, the model, optimizer and scheduler get their
previous state back before the error propagates (the scaler too), so a failed load changes nothing.
"""

from __future__ import annotations

import copy
import io
import pickle
from collections import defaultdict
from collections.abc import Mapping
from itertools import chain
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .config import STGCMAConfig
from .fileio import atomic_save, atomic_write_bytes

__all__ = ["FORMAT", "atomic_save", "load_checkpoint", "read_checkpoint", "save_checkpoint", "trainable_state_dict"]

FORMAT = "stgcma-fast/1"

# Optimizers whose state tensors need not have their parameter's shape (factored second moments).
_FACTORED_OPTIMIZERS = frozenset({"Adafactor"})


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``model`` that require gradients, by their state-dict names, detached."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------------------------- saving


def _plain(obj: Any, where: str) -> Any:
    """``obj`` with numpy scalars / arrays and paths converted to what ``weights_only`` loading reads back."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError(f"{where} is a numpy array of Python objects, which a checkpoint cannot hold; "
                            f"expected a numeric array")
        try:
            return torch.from_numpy(np.array(obj, copy=True))
        except TypeError as exc:
            raise TypeError(f"{where} is a numpy array of dtype {obj.dtype}, which torch cannot hold ({exc})") from exc
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    if type(obj) in (dict, defaultdict) or isinstance(obj, Mapping) and type(obj).__module__ == "collections":
        out = {_plain(k, f"a key of {where}"): _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
        return type(obj)(out) if type(obj) not in (dict, defaultdict) else out
    if type(obj) in (list, tuple):
        return type(obj)(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    return obj


def _round_trip(obj: Any) -> tuple[bytes | None, BaseException | None]:
    buf = io.BytesIO()
    try:
        torch.save(obj, buf)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        return None, exc
    data = buf.getvalue()
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- whatever the unpickler refuses
        return None, exc
    return data, None


def _unloadable(obj: Any, where: str) -> tuple[str, Any, BaseException] | None:
    """The innermost part of ``obj`` that does not survive a weights-only round trip, as (where, part, error)."""
    if obj is None or type(obj) in (bool, int, float, str, bytes) or type(obj) is torch.Tensor:
        return None
    data, err = _round_trip(obj)
    if err is None:
        return None
    if isinstance(obj, Mapping):
        children = [(f"{where}[{k!r}]", v) for k, v in obj.items()] + [(f"a key of {where}", k) for k in obj]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = [(f"{where}[{i}]", v) for i, v in enumerate(obj)]
    else:
        children = []
    for child_where, child in children:
        found = _unloadable(child, child_where)
        if found is not None:
            return found
    return where, obj, err


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def _serialise(payload: dict[str, Any], path: Path) -> bytes:
    data, err = _round_trip(payload)
    if err is None:
        return data
    found = None
    for key in ("extra", "optimizer", "scheduler", "scaler", "step", "config", "state_dict"):
        found = _unloadable(payload.get(key), key)
        if found is not None:
            break
    where, obj, cause = found if found is not None else ("the checkpoint", payload, err)
    shown = repr(obj)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise TypeError(
        f"cannot save checkpoint {path}: {where} is a {type(obj).__module__}.{type(obj).__qualname__} ({shown}), which "
        f"torch.load(weights_only=True) cannot read back; expected tensors, numbers, strings, bools, None and "
        f"lists / tuples / dicts of them ({_first_line(cause)})"
    ) from cause


def _model_config(model: nn.Module, what: str) -> STGCMAConfig:
    config = getattr(model, "config", None)
    if config is None or not callable(getattr(config, "to_dict", None)):
        raise TypeError(f"expected {what} to have a .config (an STGCMAConfig), got {type(model).__name__} without one")
    return config


def _check_stateful(obj: Any, name: str) -> None:
    if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
        raise TypeError(f"expected {name} to have state_dict() and load_state_dict(), got {type(obj).__name__}")


def _optimizer_params(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[list[dict[str, Any]]]:
    """Per param group, the model name (None if not the model's) and shape of each parameter the optimizer holds."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[{"name": names.get(id(p)), "shape": list(p.shape)} for p in group["params"]]
            for group in optimizer.param_groups]


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    step: int | None = None, extra: dict[str, Any] | None = None, *, scheduler: Any = None,
                    scaler: torch.amp.GradScaler | None = None) -> Path:
    """Write the trainable tensors of ``model`` (+ optimizer, scheduler and scaler state, step, extra) atomically.

    ``model`` is anything with ``.config`` (an STGCMAConfig) and parameters; trainable = ``requires_grad``.
    ``step`` is an int (numpy ints accepted) or None; ``extra`` a dict of tensors and plain Python values (numpy
    scalars / arrays and paths are converted). Returns ``path``. Raises ``TypeError`` naming the key path and type
    of a value that could not be read back, before anything is written.
    """
    path = Path(path)
    config = _model_config(model, "model")
    if isinstance(step, np.integer):
        step = int(step)
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise TypeError(f"expected step to be an int or None, got {step!r} ({type(step).__name__})")
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"expected extra to be a dict or None, got {type(extra).__name__}")
    if optimizer is not None:
        _check_stateful(optimizer, "optimizer")
    if scheduler is not None:
        _check_stateful(scheduler, "scheduler")
    if scaler is not None:
        _check_stateful(scaler, "scaler")
    payload = {
        "format": FORMAT,
        "config": config.to_dict(),
        "state_dict": trainable_state_dict(model),
        "optimizer": _plain(optimizer.state_dict(), "optimizer") if optimizer is not None else None,
        "optimizer_class": type(optimizer).__name__ if optimizer is not None else None,
        "optimizer_params": _optimizer_params(optimizer, model) if optimizer is not None else None,
        "scheduler": _plain(scheduler.state_dict(), "scheduler") if scheduler is not None else None,
        "scheduler_class": type(scheduler).__name__ if scheduler is not None else None,
        "scaler": _plain(scaler.state_dict(), "scaler") if scaler is not None else None,
        "step": int(step) if step is not None else None,
        "extra": _plain(dict(extra), "extra") if extra is not None else {},
    }
    return atomic_write_bytes(path, _serialise(payload, path))


# ------------------------------------------------------------------------------------------------------ reading


def _describe_damage(path: Path, head: bytes, size: int, refused: bool) -> str:
    """What is wrong with a file ``torch.load`` failed on, judged by its structure (``refused``: weights-only)."""
    import zipfile

    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            return "a zip archive without its end (truncated: was the write cut short?)"
        with zipfile.ZipFile(path) as zf:
            if not any(n.endswith("data.pkl") for n in zf.namelist()):
                return "a zip archive that is not a torch file (no data.pkl)"
        if refused:
            return ("a torch file holding objects other than tensors and plain Python values "
                    "(refused: no code is unpickled)")
        return "a torch file that could not be read (damaged?)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle (or legacy torch file), not a file written by save_checkpoint"
    return f"not a torch file ({size} bytes starting {head[:8]!r})"


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint written by :func:`save_checkpoint` (tensors only, no code is unpickled).

    Returns the payload dict (``format``, ``config``, ``state_dict``, ``optimizer``, ``scheduler``, ``scaler``,
    ``step``, ``extra`` ...). Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file and
    what is wrong for anything that is not an stgcma-fast checkpoint (chained from the reader's error).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        handle = path.open("rb")
    except IsADirectoryError as exc:
        raise ValueError(f"checkpoint {path} is a folder, expected a file written by save_checkpoint") from exc
    with handle:
        head = handle.read(64)
        size = path.stat().st_size
        if size == 0:
            raise ValueError(f"checkpoint {path} is empty (0 bytes); expected a file written by save_checkpoint")
        handle.seek(0)
        try:
            payload = torch.load(handle, map_location=map_location, weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- every reader failure becomes one message naming the file
            what = _describe_damage(path, head, size, refused="Weights only load failed" in str(exc))
            raise ValueError(f"cannot read checkpoint {path}: {what} ({_first_line(exc)})") from exc
    _check_payload(path, payload)
    return payload


def _check_payload(path: Path, payload: Any) -> None:
    if not isinstance(payload, dict):
        raise ValueError(f"{path} is not an stgcma-fast checkpoint: expected a dict with format {FORMAT!r}, "
                         f"got a {type(payload).__name__}")
    if payload.get("format") != FORMAT:
        if "format" not in payload:
            tensors = sum(isinstance(v, torch.Tensor) for v in payload.values())
            found = f"a dict of {len(payload)} entries ({tensors} tensors) without 'format'"
            hint = " (a plain state dict? backbone weights go to FastSTGCMA(checkpoint_path=...))" if tensors else ""
        else:
            found, hint = f"format {payload['format']!r}", ""
        raise ValueError(f"{path} is not an stgcma-fast checkpoint: expected format {FORMAT!r}, got {found}{hint}")
    problems = []
    if not isinstance(payload.get("config"), dict):
        problems.append(f"'config' is {type(payload.get('config')).__name__}, expected a dict")
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        problems.append(f"'state_dict' is {type(state).__name__}, expected a dict of tensors")
    else:
        bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            problems.append(f"'state_dict' has non-tensor entries {bad[:5]}")
    opt = payload.get("optimizer")
    if opt is not None and not (isinstance(opt, dict) and isinstance(opt.get("state"), dict)
                                and isinstance(opt.get("param_groups"), list)
                                and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                        for g in opt["param_groups"])):
        problems.append("'optimizer' is not an optimizer state dict (state, param_groups)")
    for key in ("scheduler", "scaler"):
        if payload.get(key) is not None and not isinstance(payload[key], dict):
            problems.append(f"{key!r} is {type(payload[key]).__name__}, expected a dict")
    step = payload.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        problems.append(f"'step' is {step!r}, expected an int or None")
    if not isinstance(payload.get("extra", {}), dict):
        problems.append(f"'extra' is {type(payload['extra']).__name__}, expected a dict")
    if problems:
        raise ValueError(f"checkpoint {path} is damaged: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------------- checking


def _check_config(path: Path, payload: dict[str, Any], model: nn.Module) -> None:
    config = _model_config(model, "model")
    try:
        saved = STGCMAConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {path} holds an invalid config: {exc}") from exc
    ours, theirs = config.to_dict(), saved.to_dict()
    if ours != theirs:
        diff = {k: (theirs.get(k), ours.get(k)) for k in sorted(set(ours) | set(theirs))
                if ours.get(k) != theirs.get(k)}
        raise ValueError(f"checkpoint {path} was written for another configuration: (checkpoint, model) = {diff}")


def _check_tensors(path: Path, state: dict[str, torch.Tensor], model: nn.Module) -> None:
    own = trainable_state_dict(model)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the model's trainable tensors: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]} (a task head attached on one side only?)")
    differ = [f"{n}: checkpoint {state[n].dtype} {tuple(state[n].shape)}, model {t.dtype} {tuple(t.shape)}"
              for n, t in own.items() if state[n].shape != t.shape or state[n].dtype != t.dtype]
    if differ:
        raise ValueError(f"checkpoint {path} does not fit the model's trainable tensors ({len(differ)} differ): "
                         + "; ".join(differ[:8]))


def _check_optimizer(path: Path, payload: dict[str, Any], optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    saved = payload.get("optimizer")
    if saved is None:
        raise ValueError(f"checkpoint {path} holds no optimizer state")
    cls = payload.get("optimizer_class")
    if cls is not None and cls != type(optimizer).__name__:
        raise ValueError(f"checkpoint {path} holds {cls} state, got a {type(optimizer).__name__} optimizer")
    groups, ours = saved["param_groups"], optimizer.param_groups
    if len(groups) != len(ours):
        raise ValueError(f"checkpoint {path} holds optimizer state for {len(groups)} param group(s), the optimizer "
                         f"has {len(ours)}")
    sizes = [(i, len(g["params"]), len(o["params"])) for i, (g, o) in enumerate(zip(groups, ours))
             if len(g["params"]) != len(o["params"])]
    if sizes:
        raise ValueError(f"checkpoint {path} holds optimizer state for other parameters: (group, checkpoint params, "
                         f"optimizer params) = {sizes} (an optimizer over other parameters?)")
    recorded = payload.get("optimizer_params")
    if recorded is not None:
        now = _optimizer_params(optimizer, model)
        differ = [f"group {g} #{i}: checkpoint {a['name'] or '<not a model parameter>'} {tuple(a['shape'])}, "
                  f"optimizer {b['name'] or '<not a model parameter>'} {tuple(b['shape'])}"
                  for g, (sg, og) in enumerate(zip(recorded, now)) for i, (a, b) in enumerate(zip(sg, og))
                  if a != b]
        if differ:
            raise ValueError(f"checkpoint {path} holds optimizer state for other parameters ({len(differ)} differ, "
                             f"an optimizer over other parameters?): " + "; ".join(differ[:6]))
    params = dict(zip(chain.from_iterable(g["params"] for g in groups),
                      chain.from_iterable(o["params"] for o in ours)))
    factored = type(optimizer).__name__ in _FACTORED_OPTIMIZERS
    problems = []
    for pid, values in saved["state"].items():
        if pid not in params:
            problems.append(f"state for parameter id {pid!r}, which no param group lists")
            continue
        if not isinstance(values, dict):
            problems.append(f"state of parameter {pid!r} is a {type(values).__name__}, expected a dict")
            continue
        shape = params[pid].shape
        for key, v in values.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != shape and not factored:
                problems.append(f"state[{pid!r}][{key!r}] has shape {tuple(v.shape)}, its parameter {tuple(shape)}")
    if problems:
        raise ValueError(f"checkpoint {path} holds optimizer state that does not fit the optimizer: "
                         + "; ".join(problems[:6]))


def _check_scheduler(path: Path, payload: dict[str, Any], scheduler: Any) -> None:
    saved = payload.get("scheduler")
    if saved is None:
        raise ValueError(f"checkpoint {path} holds no scheduler state")
    cls = payload.get("scheduler_class")
    if cls is not None and cls != type(scheduler).__name__:
        raise ValueError(f"checkpoint {path} holds {cls} state, got a {type(scheduler).__name__} scheduler")
    ours = scheduler.state_dict()
    public = lambda keys: {k for k in keys if not str(k).startswith("_")}  # noqa: E731 -- private: torch-internal
    missing, unexpected = sorted(public(ours) - set(saved)), sorted(public(saved) - set(ours))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} holds scheduler state of other keys: missing {missing}, unexpected "
                         f"{unexpected}")


def _check_scaler(path: Path, payload: dict[str, Any], scaler: Any) -> None:
    saved = payload.get("scaler")
    if saved is None:
        raise ValueError(f"checkpoint {path} holds no grad scaler state")
    ours = scaler.state_dict()
    if not ours:  # a disabled GradScaler ignores what it is given
        return
    if not saved:
        raise ValueError(f"checkpoint {path} holds the state of a disabled grad scaler; the scaler given is enabled")
    if set(saved) != set(ours):
        raise ValueError(f"checkpoint {path} holds grad scaler state of other keys: {sorted(saved)}, expected "
                         f"{sorted(ours)}")


# ------------------------------------------------------------------------------------------------------ loading


class _Backup:
    """The state of a scheduler or scaler, put back by ``load_state_dict`` or, if that fails too, by attributes."""

    def __init__(self, obj: Any) -> None:
        self.obj, self.state = obj, copy.deepcopy(obj.state_dict())
        self.attrs = dict(vars(obj)) if hasattr(obj, "__dict__") else None

    def restore(self) -> None:
        try:
            if self.state:  # (a disabled GradScaler's state is empty and cannot be loaded)
                self.obj.load_state_dict(self.state)
        except Exception:
            if self.attrs is None:
                raise
            vars(self.obj).clear()
            vars(self.obj).update(self.attrs)


def _optimizer_backup(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    state = defaultdict(dict, {p: {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                                   for k, v in s.items()} for p, s in optimizer.state.items()})
    groups = [{**g, "params": list(g["params"])} for g in optimizer.param_groups]
    return {"state": state, "param_groups": groups}


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    map_location: str | torch.device = "cpu", *, scheduler: Any = None,
                    scaler: torch.amp.GradScaler | None = None, strict_config: bool = True) -> dict[str, Any]:
    """Load the trainable tensors (and optimizer, scheduler, scaler state) into ``model``; returns the payload.

    Everything is checked before anything is changed: the config (``strict_config=False`` accepts another config
    whose tensors still fit), every trainable tensor's name, shape and dtype, and each state asked for. A mismatch is
    a ``ValueError`` naming the file and listing what differs. If a load still fails, the model, optimizer,
    scheduler and scaler are restored to their previous state before the error propagates.
    """
    path = Path(path)
    _model_config(model, "model")
    for obj, name in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if obj is not None:
            _check_stateful(obj, name)
    payload = read_checkpoint(path, map_location)
    if strict_config:
        _check_config(path, payload, model)
    state = payload["state_dict"]
    _check_tensors(path, state, model)
    if optimizer is not None:
        _check_optimizer(path, payload, optimizer, model)
    if scheduler is not None:
        _check_scheduler(path, payload, scheduler)
    if scaler is not None:
        _check_scaler(path, payload, scaler)

    params = dict(model.named_parameters())
    model_backup = {n: params[n].detach().clone() for n in state}
    opt_backup = _optimizer_backup(optimizer) if optimizer is not None else None
    others = [_Backup(obj) for obj in (scheduler, scaler) if obj is not None]
    try:
        model.load_state_dict(state, strict=False)
        if optimizer is not None:
            optimizer.load_state_dict(payload["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(payload["scheduler"])
        if scaler is not None:
            scaler.load_state_dict(payload["scaler"])
    except BaseException as exc:
        with torch.no_grad():
            for name, value in model_backup.items():
                params[name].copy_(value)
        if optimizer is not None:
            optimizer.__setstate__(opt_backup)
        for backup in others:
            backup.restore()
        if hasattr(exc, "add_note"):
            exc.add_note(f"while loading checkpoint {path}; the model, optimizer, scheduler and scaler were given "
                         f"their previous state back")
        raise
    return payload
