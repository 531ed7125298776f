"""Paths shared by the data tests: the small excerpts in ``tests/fixtures`` and the real files in ``../shared/data``."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A real dataset file under ``../shared/data``; the test is skipped, with the reason, when it is absent."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"real dataset file {path} is absent (only the excerpts in {FIXTURES} are in the repo)")
    return path


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def ave_vp9(tmp_path_factory):
    """A small synthetic AVE set with VP9 video (DALI's CPU decoder reads it); do not modify it."""
    from tests.data.synth_media import synth_dataset

    return synth_dataset(tmp_path_factory, "vp9", clips=6)


@pytest.fixture(scope="session")
def ave_h264(tmp_path_factory):
    """A small synthetic AVE set with H.264 video; do not modify it."""
    from tests.data.synth_media import synth_dataset

    return synth_dataset(tmp_path_factory, "h264", clips=3, seed=1)
