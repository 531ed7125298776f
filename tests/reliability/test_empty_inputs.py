"""Empty inputs are errors (or no-ops) that create nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from stgcma_fast.data import AveDataset
from stgcma_fast.data.prepare import prepare_audio


def test_an_empty_clip_list_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected at least one clip, got an empty clips list"):
        AveDataset(tmp_path, "train", clips=[])


def test_an_empty_split_file_names_the_split_and_file(tmp_path: Path) -> None:
    (tmp_path / "trainSet.txt").write_text("")
    with pytest.raises(ValueError) as info:
        AveDataset(tmp_path, "train")
    assert "trainSet.txt" in str(info.value)


def test_prepare_with_annotations_but_no_videos_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "Annotations.txt").write_text("Church bell&RUhOCu3LNXM&good&0&10")
    report = prepare_audio(tmp_path)
    assert [vid for vid, _, _ in report.failed] == ["RUhOCu3LNXM"] and not report.written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Annotations.txt"]
