"""Files that ship with the package: the YAML run configs, one per paper table row.

In the source tree they live in the top-level ``configs/<task>/*.yaml``; a built wheel installs that folder as
``stgcma_fast/configs`` (see ``setup.py``). :func:`config_dir` looks, in order, for: ``configs`` inside the
imported ``stgcma_fast`` package (a wheel install, found with ``importlib.resources``); the ``configs/`` folder of
the source checkout that ``stgcma_fast`` was imported from (an editable install, or running from the repository
root); any other location the import system maps ``stgcma_fast.configs`` to. The first two keep the configs of the
very copy of the code that runs. Installs are on disk (a wheel unpacked into site-packages), not zipped.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

CONFIG_PACKAGE = "stgcma_fast.configs"
CONFIG_SUFFIXES = (".yaml", ".yml")


def _package_config_dir() -> Path | None:
    """``configs`` inside the imported ``stgcma_fast`` package (a wheel install), or None."""
    folder = importlib.resources.files(__package__) / "configs"
    return Path(str(folder)) if folder.is_dir() else None


def _mapped_config_dir() -> Path | None:
    """Where the import system finds the ``stgcma_fast.configs`` package (e.g. an editable install's map), or None."""
    try:
        spec = importlib.util.find_spec(CONFIG_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.submodule_search_locations is None:
        return None
    for location in spec.submodule_search_locations:
        if Path(location).is_dir():
            return Path(location)
    return None


def _checkout_config_dir() -> Path | None:
    """``configs/`` of the source checkout holding this package (recognised by its pyproject.toml and kernels/)."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "kernels").is_dir() and (root / "configs").is_dir():
        return root / "configs"
    return None


def config_dir() -> Path:
    """The folder holding the shipped configs: ``<config_dir>/<task>/<name>.yaml``.

    Raises FileNotFoundError naming the places searched when neither the installed package data nor a source
    checkout's ``configs/`` exists.
    """
    found = _package_config_dir() or _checkout_config_dir() or _mapped_config_dir()
    if found is None:
        checkout = Path(__file__).resolve().parents[1] / "configs"
        raise FileNotFoundError(
            f"expected the shipped configs in the installed package {CONFIG_PACKAGE!r} or in the source checkout's "
            f"{checkout}, found neither; reinstall stgcma-fast (pip install -e . in a checkout)"
        )
    return found


def available_tasks() -> list[str]:
    """Names of the tasks that ship configs (the sub-folders of :func:`config_dir`), sorted."""
    return sorted(p.name for p in config_dir().iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def list_configs(task: str) -> list[Path]:
    """The shipped config files of ``task`` (``*.yaml`` / ``*.yml`` in ``config_dir() / task``), sorted by name.

    Raises ValueError naming the task and the tasks that have configs when ``task`` has none.
    """
    if not isinstance(task, str) or not task or "/" in task or "\\" in task or task.startswith("."):
        raise ValueError(f"expected task to be a task name such as 'ave', got {task!r} ({type(task).__name__})")
    folder = config_dir() / task
    if not folder.is_dir():
        raise ValueError(
            f"expected task to be one of {available_tasks()} (the tasks with configs in {config_dir()}), got {task!r}"
        )
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in CONFIG_SUFFIXES)


def config_path(task: str, name: str) -> Path:
    """The shipped config ``name`` of ``task`` (``"clip-b16-base"`` or ``"clip-b16-base.yaml"``).

    Raises ValueError naming the config asked for and the ones ``task`` ships.
    """
    configs = list_configs(task)
    for path in configs:
        if name in (path.name, path.stem):
            return path
    raise ValueError(f"expected config to be one of {[p.stem for p in configs]} for task {task!r}, got {name!r}")
