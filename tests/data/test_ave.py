"""AVE annotation parsing, category order and per-second labels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from stgcma_fast.data.ave import (
    AVE_CATEGORIES,
    BACKGROUND,
    NUM_CLASSES,
    AveClip,
    category_index,
    labels_tensor,
    one_hot_labels,
    parse_ave_lines,
    per_second_labels,
    read_ave_annotations,
    read_ave_split,
)
from tests.data.conftest import shared_file

HEADER = "Category&VideoID&Quality&StartTime&EndTime"


def test_constants() -> None:
    assert len(AVE_CATEGORIES) == 28 and len(set(AVE_CATEGORIES)) == 28
    assert BACKGROUND == 28 and NUM_CLASSES == 29
    assert category_index("Church bell") == 0 and category_index("Mandolin") == 27
    with pytest.raises(ValueError, match="unknown AVE category 'Piano'"):
        category_index("Piano")


def test_real_annotations() -> None:
    """The real file: 4,143 clips (4,142 newlines, no newline after the last line), 28 categories."""
    path = shared_file("ave/Annotations.txt")
    clips = read_ave_annotations(path)
    assert path.read_bytes().count(b"\n") == 4142
    assert len(clips) == 4143
    first_seen = list(dict.fromkeys(c.category for c in clips))
    assert tuple(first_seen) == AVE_CATEGORIES, "class order must be the file's first-appearance order"
    assert {c.quality for c in clips} == {"good"}
    assert len({c.video_id for c in clips}) == 4097
    counts = Counter(c.category for c in clips)
    assert counts["Church bell"] == 188 and counts["Cat"] == 60
    labels = labels_tensor(clips)
    assert labels.shape == (4143, 10) and labels.dtype == torch.long
    assert int(labels.min()) == 0 and int(labels.max()) == BACKGROUND
    empty = [c for c in clips if c.start == c.end]
    assert [c.video_id for c in empty] == ["VWi2ENBuTbw"] and empty[0].labels == (BACKGROUND,) * 10


def test_excerpt(fixtures_dir: Path) -> None:
    clips = read_ave_annotations(fixtures_dir / "ave_annotations_excerpt.txt")
    assert len(clips) == 30
    first = clips[0]
    assert (first.category, first.video_id, first.quality, first.start, first.end) == (
        "Church bell", "RUhOCu3LNXM", "good", 0, 10)
    assert first.labels == (0,) * 10
    partial = clips[1]
    assert (partial.video_id, partial.start, partial.end) == ("MH3m4AwEcRY", 6, 8)
    assert partial.labels == (28,) * 6 + (0, 0) + (28, 28)
    assert partial.video_path("/data/AVE") == Path("/data/AVE/MH3m4AwEcRY.mp4")
    one_hot = partial.one_hot()
    assert one_hot.shape == (10, 29) and one_hot.dtype == torch.float32
    assert torch.equal(one_hot.sum(-1), torch.ones(10))
    assert torch.equal(one_hot.argmax(-1), partial.labels_tensor())


def test_header_blank_lines_and_crlf(tmp_path: Path, fixtures_dir: Path) -> None:
    lines = (fixtures_dir / "ave_annotations_excerpt.txt").read_text().splitlines()
    plain = read_ave_annotations(fixtures_dir / "ave_annotations_excerpt.txt")
    with_header = tmp_path / "testSet.txt"
    with_header.write_bytes(("\ufeff" + HEADER + "\r\n\r\n" + "\r\n\n".join(lines) + "\n\n").encode())
    assert read_ave_annotations(with_header) == plain
    assert parse_ave_lines(["category&videoid&quality&starttime&endtime", *lines]) == plain


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("Church bell&abc&good&0", "expected 5 '&'-separated fields"),
        ("Church bell&abc&good&0&10&extra", "expected 5 '&'-separated fields"),
        ("Piano&abc&good&0&10", "unknown AVE category 'Piano'"),
        ("Bark&abc&good&x&10", "expected an integer StartTime"),
        ("Bark&abc&good&0&2.5", "whole seconds"),
        ("Bark&abc&good&7&3", "StartTime <= EndTime"),
        ("Bark&abc&good&0&11", "EndTime <= 10"),
        ("Bark&&good&0&10", "empty VideoID"),
        (HEADER, "unknown AVE category 'Category'"),  # a header anywhere but first is malformed
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str, message: str) -> None:
    path = tmp_path / "trainSet.txt"
    path.write_text("Bark&a1&good&0&10\n\nBark&a2&good&1&4\n" + bad_line + "\n")
    with pytest.raises(ValueError, match=message) as info:
        read_ave_annotations(path)
    assert f"{path}:4:" in str(info.value)


def test_missing_file_and_splits(tmp_path: Path, fixtures_dir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_ave_annotations(tmp_path / "absent.txt")
    (tmp_path / "valSet.txt").write_text(HEADER + "\n" + (fixtures_dir / "ave_annotations_excerpt.txt").read_text())
    assert len(read_ave_split(tmp_path, "val")) == 30
    with pytest.raises(FileNotFoundError, match="testSet.txt"):
        read_ave_split(tmp_path, "test")
    with pytest.raises(ValueError, match="expected split in"):
        read_ave_split(tmp_path, "dev")


def test_per_second_labels() -> None:
    assert per_second_labels(3, 0, 10) == (3,) * 10
    assert per_second_labels(3, 4, 4) == (28,) * 10
    assert per_second_labels(5, 9, 10) == (28,) * 9 + (5,)
    assert per_second_labels(5, 0, 1) == (5,) + (28,) * 9
    with pytest.raises(ValueError, match="start <= end"):
        per_second_labels(0, 5, 4)
    with pytest.raises(ValueError, match="event class index"):
        per_second_labels(28, 0, 1)
    batch = one_hot_labels(torch.tensor([[0, 28], [27, 1]]))
    assert batch.shape == (2, 2, 29) and batch[0, 1, 28] == 1 and batch[1, 0, 27] == 1
    with pytest.raises(ValueError, match=r"labels in \[0, 29\)"):
        one_hot_labels([29])
    clip = AveClip("vid", "Bus", "good", 2, 5)
    assert clip.class_index == 20 and clip.labels == (28, 28, 20, 20, 20, 28, 28, 28, 28, 28)
