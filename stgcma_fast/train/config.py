"""Run configurations: one YAML file per experiment, ``key=value`` overrides, strict validation, the resolved copy.

A run config has five sections and the task's own options under the task's name::

    task: ave
    model:  {preset, config (STGCMAConfig fields), pretrained, checkpoint_path, init_seed, backends, recompute,
             grad_checkpointing, compile}
    data:   {root, synthetic, batch_size (global, over all ranks), eval_batch_size, num_workers}
    optim:  {lr, head_lr_scale, betas, weight_decay, epochs, warmup_epochs, min_lr, grad_accum, clip_grad_norm, amp,
             average_from_epoch, ema_decay}
    run:    {seed, select_on, device, log_every, compare_branches, progress, tensorboard}
    ave:    {label_smoothing, mixup_prob, ...}     # the task's options dataclass

:func:`load_run_config` reads a file (or starts from the defaults), applies overrides such as ``optim.lr=3e-4`` or
``model.config.branches=video`` (values parsed as YAML scalars), and checks every key and value BEFORE anything runs:
an unknown key or a value of the wrong type or range is a :class:`ConfigError` naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from stgcma_fast.config import PRESETS, STGCMAConfig

AMP_MODES = ("auto", "off", "bf16", "fp16")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-4`` as a float as YAML 1.2 does (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
SELECT_ON = ("val", "test")


class ConfigError(ValueError):
    """A run configuration that cannot run: names the source and the dotted key."""


@dataclasses.dataclass
class ModelSection:
    """The STG-CMA model: a preset plus STGCMAConfig overrides, weights, and the fast model's options."""

    preset: str = "clip-b16-base"
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    pretrained: bool = False
    checkpoint_path: str | None = None
    init_seed: int = 0  # seeds the random init of a backbone built without weights (so eval rebuilds it exactly)
    backends: dict[str, str] = dataclasses.field(default_factory=dict)
    recompute: list[str] = dataclasses.field(default_factory=list)
    grad_checkpointing: bool = False
    compile: bool = False

    def validate(self, where: str) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"{where}model.preset: expected one of {sorted(PRESETS)}, got {self.preset!r}")
        try:
            self.stgcma_config()
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}model.config: {err}") from err

    def stgcma_config(self) -> STGCMAConfig:
        return STGCMAConfig.preset(self.preset, **self.config)


@dataclasses.dataclass
class DataSection:
    """Where the data is and how it is batched. ``batch_size`` is the GLOBAL batch (split over DDP ranks)."""

    root: str | None = None
    synthetic: bool = False
    batch_size: int = 8
    eval_batch_size: int = 8
    num_workers: int = 2

    def validate(self, where: str) -> None:
        _positive(where, "data.batch_size", self.batch_size)
        _positive(where, "data.eval_batch_size", self.eval_batch_size)
        if self.num_workers < 0:
            raise ConfigError(f"{where}data.num_workers: expected an int >= 0, got {self.num_workers}")


@dataclasses.dataclass
class OptimSection:
    """Adam with parameter groups, warm-up + per-iteration cosine schedule, AMP, accumulation, averaging."""

    lr: float = 1e-4
    head_lr_scale: float = 0.1
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.95, 0.999])
    weight_decay: float = 5e-7
    epochs: int = 20
    warmup_epochs: float = 2.0
    min_lr: float = 2e-6
    grad_accum: int = 1
    clip_grad_norm: float | None = None
    amp: str = "auto"
    average_from_epoch: int | None = None  # average the weights of epochs [this, last] (1-based; authors: 8 of 20)
    ema_decay: float | None = None

    def validate(self, where: str) -> None:
        for key in ("lr", "head_lr_scale"):
            _positive(where, f"optim.{key}", getattr(self, key))
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"{where}optim.betas: expected two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0:
            raise ConfigError(f"{where}optim.weight_decay: expected >= 0, got {self.weight_decay}")
        _positive(where, "optim.epochs", self.epochs)
        _positive(where, "optim.grad_accum", self.grad_accum)
        if self.warmup_epochs < 0:
            raise ConfigError(f"{where}optim.warmup_epochs: expected >= 0, got {self.warmup_epochs}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"{where}optim.min_lr: expected in [0, optim.lr = {self.lr}], got {self.min_lr}")
        if self.clip_grad_norm is not None:
            _positive(where, "optim.clip_grad_norm", self.clip_grad_norm)
        if self.amp not in AMP_MODES:
            raise ConfigError(f"{where}optim.amp: expected one of {AMP_MODES}, got {self.amp!r}")
        if self.average_from_epoch is not None and not 1 <= self.average_from_epoch <= self.epochs:
            raise ConfigError(f"{where}optim.average_from_epoch: expected an epoch in [1, optim.epochs = "
                              f"{self.epochs}], got {self.average_from_epoch}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"{where}optim.ema_decay: expected in (0, 1), got {self.ema_decay}")


@dataclasses.dataclass
class RunSection:
    """Seed, model selection, device and logging."""

    seed: int = 0
    select_on: str = "val"
    device: str = "auto"
    log_every: int = 10
    compare_branches: bool = False  # also train branches=video and branches=audio and report them beside
    progress: bool = True
    tensorboard: bool = True  # when the tensorboard package is installed

    def validate(self, where: str) -> None:
        if self.select_on not in SELECT_ON:
            raise ConfigError(f"{where}run.select_on: expected one of {SELECT_ON}, got {self.select_on!r}")
        _positive(where, "run.log_every", self.log_every)
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"{where}run.device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")


SECTIONS: dict[str, type] = {"model": ModelSection, "data": DataSection, "optim": OptimSection, "run": RunSection}


@dataclasses.dataclass
class RunConfig:
    """A whole run: the task, the four engine sections and the task's options (``task_options``)."""

    task: str
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)
    run: RunSection = dataclasses.field(default_factory=RunSection)
    task_options: Any = None
    source: str = "<defaults>"

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what ``config.yaml`` in the run folder holds)."""
        out: dict[str, Any] = {"task": self.task}
        for name in SECTIONS:
            out[name] = dataclasses.asdict(getattr(self, name))
        out[self.task] = dataclasses.asdict(self.task_options) if self.task_options is not None else {}
        return _plain(out)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with dotted-key changes applied (``{"model.config.branches": "video"}``), validated."""
        data = self.to_dict()
        for key, value in changes.items():
            _set_dotted(data, key.split("."), value, self.source)
        return build_run_config(data, self.source)


def _plain(value: Any) -> Any:
    """Tuples as lists (what YAML and JSON give back), recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _positive(where: str, key: str, value: Any) -> None:
    if not value > 0:
        raise ConfigError(f"{where}{key}: expected a number > 0, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """``value`` checked against the annotation ``tp`` (ints accepted for floats; nothing else is converted)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r} "
                          f"({type(value).__name__})")
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}{key}: expected a list, got {value!r} ({type(value).__name__})")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}{key}: expected a list, got {value!r} ({type(value).__name__})")
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        if len(value) != len(args):
            raise ConfigError(f"{where}{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]", where) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}{key}: expected a mapping, got {value!r} ({type(value).__name__})")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}{key}: expected true or false, got {value!r} ({type(value).__name__})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}{key}: expected an int, got {value!r} ({type(value).__name__})")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}{key}: expected a finite number, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}{key}: expected a string, got {value!r} ({type(value).__name__})")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def build_section(cls: type, data: Any, prefix: str, where: str) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``data``: unknown keys and bad types name the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}{prefix}: expected a mapping of options, got {data!r} ({type(data).__name__})")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{where}{prefix}: unknown keys {[f'{prefix}.{k}' for k in unknown]}; expected among "
                          f"{sorted(fields)}")
    values = {k: _coerce(v, hints[k], f"{prefix}.{k}", where) for k, v in data.items()}
    try:
        obj = cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}{prefix}: {err}") from err
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where)
    return obj


def build_run_config(data: dict[str, Any], source: str = "<dict>") -> RunConfig:
    """Validate a whole config mapping (the YAML's content after overrides)."""
    from stgcma_fast.tasks import get_task

    where = f"{source}: "
    if not isinstance(data, dict):
        raise ConfigError(f"{where}expected a mapping at the top level, got {type(data).__name__}")
    task_name = data.get("task")
    if not isinstance(task_name, str):
        raise ConfigError(f"{where}task: expected a task name (e.g. 'ave'), got {task_name!r}")
    try:
        task_cls = get_task(task_name)
    except ValueError as err:
        raise ConfigError(f"{where}task: {err}") from err
    unknown = sorted(set(data) - {"task", task_name, *SECTIONS})
    if unknown:
        raise ConfigError(f"{where}unknown top-level keys {unknown}; expected among "
                          f"{['task', *SECTIONS, task_name]}")
    sections = {name: build_section(cls, data.get(name), name, where) for name, cls in SECTIONS.items()}
    options = build_section(task_cls.options_type, data.get(task_name), task_name, where)
    return RunConfig(task=task_name, task_options=options, source=source, **sections)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 0.0003); the value is parsed as a YAML scalar or flow list."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted key such as optim.lr=3e-4")
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({err})") from err
    return key.split("."), value


def _set_dotted(data: dict[str, Any], keys: list[str], value: Any, where: str) -> None:
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: override {'.'.join(keys)}: {'.'.join(keys[:i + 1])} is not a mapping")
        node = child
    node[keys[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; missing files, decoding and syntax errors name the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not valid UTF-8 ({err.reason})") from err
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: {at}not valid YAML ({getattr(err, 'problem', err)})") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_run_config(task: str, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
                    ) -> RunConfig:
    """The run config of ``task``: the file's values (defaults for what it leaves out), then ``overrides``."""
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    if "task" in data and data["task"] != task:
        raise ConfigError(f"{source}: task: the file is for task {data['task']!r}, but the command trains {task!r}")
    data["task"] = task
    for text in overrides:
        keys, value = parse_override(text)
        _set_dotted(data, keys, value, source)
    return build_run_config(data, source)
