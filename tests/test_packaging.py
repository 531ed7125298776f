"""A built wheel holds every subpackage of the source tree, the shipped configs and a working console script.

The wheel is built from a temporary copy of the build inputs (setup.py and pyproject.toml, README.md, stgcma_fast/,
kernels/, configs/), so the build writes no build/ or *.egg-info into the repository. A probe config is planted in
the copy, so the configs mechanism is checked even for tasks that ship none yet.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ["pyproject.toml", "setup.py", "README.md", "stgcma_fast", "kernels", "configs"]
# Source folder -> the package it installs as.
PACKAGE_ROOTS = {"stgcma_fast": "stgcma_fast", "kernels": "stgcma_fast.kernels"}
PROBE_TASK = "zz_packaging_probe"
TIMEOUT = 300


def _python_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.py") if "__pycache__" not in p.parts]


def source_packages(root: Path) -> dict[str, Path]:
    """Every package of the source tree at ``root`` ({dotted name: folder}), found by its ``__init__.py``."""
    found = {}
    for folder, package in PACKAGE_ROOTS.items():
        for init in (root / folder).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(root / folder).parts
            found[".".join((package, *rel))] = init.parent
    return found


def source_modules(root: Path) -> dict[str, Path]:
    """Every Python file under the package roots of the source tree at ``root`` -> its path inside the wheel."""
    found = {}
    for folder, package in PACKAGE_ROOTS.items():
        for path in _python_files(root / folder):
            found["/".join((*package.split("."), *path.relative_to(root / folder).parts))] = path
    return found


def source_configs(root: Path) -> dict[str, Path]:
    """Every config file under ``root/configs`` -> its path inside the wheel."""
    configs = root / "configs"
    if not configs.is_dir():
        return {}
    return {
        "/".join(("stgcma_fast", "configs", *p.relative_to(configs).parts)): p
        for p in configs.rglob("*")
        if p.suffix in (".yaml", ".yml") and "__pycache__" not in p.parts
    }


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, (
        f"{' '.join(cmd)} exited {result.returncode}\n"
        f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    )
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build a wheel from a copy of the build inputs; return the copy, the wheel and the wheel unpacked."""
    base = tmp_path_factory.mktemp("packaging")
    src = base / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        elif path.is_file():
            shutil.copy2(path, src / name)
    probe = src / "configs" / PROBE_TASK / "probe.yaml"
    probe.parent.mkdir(parents=True)
    probe.write_text("task: probe\n")
    wheels = base / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w",
          str(wheels)], cwd=src)
    (wheel,) = wheels.glob("stgcma_fast-*.whl")
    unpacked = base / "unpacked"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(unpacked)
    return {"src": src, "wheel": wheel, "unpacked": unpacked, "elsewhere": base}


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def _env_for(unpacked: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(unpacked)
    return env


def test_every_python_folder_is_a_package():
    """A folder of Python files without ``__init__.py`` would be left out of the wheel by package discovery."""
    missing = sorted(
        str(folder.relative_to(REPO))
        for root in PACKAGE_ROOTS
        for folder in {p.parent for p in _python_files(REPO / root)}
        if not (folder / "__init__.py").is_file()
    )
    assert not missing, f"expected an __init__.py in every folder holding Python files, missing in {missing}"


def test_wheel_contains_every_source_package_and_module(built):
    # The copy the wheel was built from: files other people add to the repository meanwhile cannot race the check.
    names = _wheel_names(built["wheel"])
    packages = source_packages(built["src"])
    assert {"stgcma_fast", "stgcma_fast.ops", "stgcma_fast.data", "stgcma_fast.kernels"} <= set(packages)
    missing_packages = sorted(p for p in packages if p.replace(".", "/") + "/__init__.py" not in names)
    assert not missing_packages, f"packages missing from {built['wheel'].name}: {missing_packages}"
    missing_modules = sorted(m for m in source_modules(built["src"]) if m not in names)
    assert not missing_modules, f"modules missing from {built['wheel'].name}: {missing_modules}"
    dist_info = "-".join(built["wheel"].name.split("-")[:2]) + ".dist-info"
    stray = sorted(n for n in names if n.split("/")[0] not in ("stgcma_fast", dist_info))
    assert not stray, f"expected only stgcma_fast/ and the dist-info in the wheel, also found {stray}"


def test_wheel_ships_the_configs(built):
    names = _wheel_names(built["wheel"])
    configs = source_configs(built["src"])
    assert f"stgcma_fast/configs/{PROBE_TASK}/probe.yaml" in configs
    missing = sorted(c for c in configs if c not in names)
    assert not missing, f"configs missing from {built['wheel'].name}: {missing}"


def test_wheel_declares_the_console_script_and_core_dependencies(built):
    with zipfile.ZipFile(built["wheel"]) as zf:
        dist_info = next(n.split("/")[0] for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        metadata = zf.read(f"{dist_info}/METADATA").decode()
    parser = configparser.ConfigParser()
    parser.read_string(entry_points)
    assert parser["console_scripts"]["stgcma-fast"].strip() == "stgcma_fast.cli:main", entry_points
    core = {line.split(":", 1)[1].strip().split(";")[0] for line in metadata.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line}
    for requirement in ("av>=14", "PyYAML", "matplotlib", "tqdm"):
        assert requirement in core, f"expected {requirement!r} among the core dependencies, got {sorted(core)}"
    assert any(line.startswith("Provides-Extra: tensorboard") for line in metadata.splitlines()), metadata[:2000]


def test_console_script_runs_from_the_wheel(built):
    unpacked, elsewhere = built["unpacked"], built["elsewhere"]
    code = (
        "import sys, stgcma_fast, stgcma_fast.kernels; "
        "print('FROM', stgcma_fast.__file__, stgcma_fast.kernels.__file__); "
        "from stgcma_fast.cli import main; sys.exit(main(['params']))"
    )
    out = _run([sys.executable, "-c", code], cwd=elsewhere, env=_env_for(unpacked)).stdout
    origin = out.splitlines()[0].split()[1:]
    assert all(Path(p).is_relative_to(unpacked) for p in origin), f"expected imports from {unpacked}, got {origin}"
    assert "| preset | backbone |" in out and "| clip-b16-base |" in out, out


def test_config_dir_finds_the_installed_configs(built):
    unpacked, elsewhere = built["unpacked"], built["elsewhere"]
    code = (
        "from stgcma_fast.resources import config_dir, list_configs; "
        f"print(config_dir()); print(*list_configs({PROBE_TASK!r}), sep='\\n')"
    )
    lines = _run([sys.executable, "-c", code], cwd=elsewhere, env=_env_for(unpacked)).stdout.splitlines()
    assert lines[0] == str(unpacked / "stgcma_fast" / "configs"), lines
    assert lines[1:] == [str(unpacked / "stgcma_fast" / "configs" / PROBE_TASK / "probe.yaml")], lines


def test_config_dir_falls_back_to_the_checkout(built):
    """Imported from a source checkout (no stgcma_fast/configs there), the checkout's top-level configs/ is used."""
    src, elsewhere = built["src"], built["elsewhere"]
    code = (
        "import stgcma_fast; from stgcma_fast.resources import config_dir, list_configs; "
        f"print(stgcma_fast.__file__); print(config_dir()); print(*list_configs({PROBE_TASK!r}), sep='\\n')"
    )
    lines = _run([sys.executable, "-c", code], cwd=elsewhere, env=_env_for(src)).stdout.splitlines()
    assert Path(lines[0]).is_relative_to(src), lines
    assert lines[1:] == [str(src / "configs"), str(src / "configs" / PROBE_TASK / "probe.yaml")], lines


def test_list_configs_names_the_unknown_task(built, monkeypatch):
    from stgcma_fast import resources

    monkeypatch.setattr(resources, "config_dir", lambda: built["src"] / "configs")
    assert resources.list_configs(PROBE_TASK) == [built["src"] / "configs" / PROBE_TASK / "probe.yaml"]
    with pytest.raises(ValueError, match=rf"expected task to be one of \[.*'{PROBE_TASK}'\] .* got 'no_such_task'"):
        resources.list_configs("no_such_task")
    with pytest.raises(ValueError, match=r"expected task to be a task name .* got '\.\./x' \(str\)"):
        resources.list_configs("../x")
    with pytest.raises(ValueError, match=r"expected task to be a task name .* got 3 \(int\)"):
        resources.list_configs(3)


def test_config_path_names_the_unknown_config(built):
    src, elsewhere = built["src"], built["elsewhere"]
    code = (
        "from stgcma_fast.resources import config_path; "
        f"print(config_path({PROBE_TASK!r}, 'probe')); config_path({PROBE_TASK!r}, 'nope')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=_env_for(src), capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.stdout.strip() == str(src / "configs" / PROBE_TASK / "probe.yaml"), result.stdout
    assert result.returncode == 1
    assert f"ValueError: expected config to be one of ['probe'] for task '{PROBE_TASK}', got 'nope'" in result.stderr
