"""Package discovery for stgcma-fast; every other piece of metadata lives in pyproject.toml.

The installed layout differs from the source tree in two places, which static ``[tool.setuptools]`` tables cannot
express together with discovery:

- the top-level ``kernels/`` folder installs as ``stgcma_fast.kernels`` (a top-level ``kernels`` would clash on PyPI);
- the top-level ``configs/`` folder (YAML run configs, one file per paper table row) installs as package data under
  ``stgcma_fast.configs``, found at run time by ``stgcma_fast.resources``.

Every package under ``stgcma_fast/`` and ``kernels/`` with an ``__init__.py`` is found here, so a new subpackage ships
without editing this file (``tests/test_packaging.py`` builds a wheel and checks it).
"""

from pathlib import Path

from setuptools import find_namespace_packages, find_packages, setup

ROOT = Path(__file__).resolve().parent
CONFIG_SUFFIXES = ["*.yaml", "*.yml"]


def _packages() -> tuple[list[str], dict[str, str], dict[str, list[str]]]:
    """Return (packages, package_dir, package_data) for the mapped layout described in the module docstring."""
    packages = find_packages(where=str(ROOT), include=["stgcma_fast", "stgcma_fast.*"])
    package_dir = {"stgcma_fast": "stgcma_fast", "stgcma_fast.kernels": "kernels"}
    kernel_subpackages = find_packages(where=str(ROOT / "kernels"))
    packages += ["stgcma_fast.kernels"] + [f"stgcma_fast.kernels.{p}" for p in kernel_subpackages]
    package_data: dict[str, list[str]] = {}
    if (ROOT / "configs").is_dir():
        # Config folders hold no Python: they ship as namespace packages of data files (configs/ave -> configs.ave).
        package_dir["stgcma_fast.configs"] = "configs"
        config_folders = find_namespace_packages(where=str(ROOT / "configs"), exclude=["*__pycache__*"])
        config_packages = ["stgcma_fast.configs"] + [f"stgcma_fast.configs.{p}" for p in config_folders]
        packages += config_packages
        package_data.update({p: CONFIG_SUFFIXES for p in config_packages})
    return sorted(packages), package_dir, package_data


if __name__ == "__main__":
    packages, package_dir, package_data = _packages()
    setup(packages=packages, package_dir=package_dir, package_data=package_data)
