"""AVSBench-S4 metadata and path resolution on a synthetic tree that follows the official layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from stgcma_fast.data.avs import (
    AVS_S4_CATEGORIES,
    MissingFilesError,
    read_s4_metadata,
    s4_record,
    s4_records,
)

ROWS = [
    ("-0UDYRFeAG0_1", "0", "dog_barking", "train"),
    ("1ZF8hQVwzVA_2", "3", "helicopter", "train"),
    ("2fJpJ7a0f0c_0", "0", "lawn_mowing", "val"),
    ("3Y8tvR-W3-Q_4", "5", "playing_piano", "test"),
]


def _make_tree(tmp_path: Path, header: str = "name,start,category,split", rows=ROWS, create: bool = True) -> Path:
    single = tmp_path / "Single-source"
    root = single / "s4_data"
    root.mkdir(parents=True)
    (single / "s4_meta_data.csv").write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    if create:
        for name, _, category, split in rows:
            for k in range(1, 6):
                for kind in ("visual_frames",) + (("gt_masks",) if split != "train" or k == 1 else ()):
                    p = root / kind / split / category / name / f"{name}_{k}.png"
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(b"png")
            wav = root / "audio_wav" / split / category / f"{name}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            wav.write_bytes(b"wav")
    return root


def test_categories() -> None:
    assert len(AVS_S4_CATEGORIES) == 23 and len(set(AVS_S4_CATEGORIES)) == 23


def test_records_and_layout(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    train = s4_records(root, split="train")
    assert [r.name for r in train] == ["-0UDYRFeAG0_1", "1ZF8hQVwzVA_2"]
    first = train[0]
    assert first.category == "dog_barking" and first.start == 0.0
    assert first.frames == tuple(
        root / "visual_frames/train/dog_barking/-0UDYRFeAG0_1" / f"-0UDYRFeAG0_1_{k}.png" for k in range(1, 6))
    assert first.audio == root / "audio_wav/train/dog_barking/-0UDYRFeAG0_1.wav"
    assert first.masks == (root / "gt_masks/train/dog_barking/-0UDYRFeAG0_1/-0UDYRFeAG0_1_1.png",)
    test = s4_records(root, split="test")
    assert len(test) == 1 and len(test[0].masks) == 5 and test[0].start == 5.0
    assert len(s4_records(root)) == 4
    assert all(not r.missing() for r in s4_records(root))


def test_missing_files_reported(tmp_path: Path) -> None:
    root = _make_tree(tmp_path, create=False)
    with pytest.raises(MissingFilesError) as info:
        s4_records(root, split="val")
    err = info.value
    assert len(err.missing) == 11  # 5 frames + 1 wav + 5 masks
    assert "11 of 11 AVSBench-S4 files are missing" in str(err) and "2fJpJ7a0f0c_0_1.png" in str(err)
    assert isinstance(err, FileNotFoundError)
    records = s4_records(root, split="val", check_files=False)
    assert len(records[0].missing()) == 11


def test_header_aliases_and_positional(tmp_path: Path) -> None:
    aliased = tmp_path / "a.csv"
    aliased.write_text("vid,s_sec,a_obj,split\nabc_1,2,cat_meowing,val\n")
    assert [(r.name, r.start, r.category, r.split) for r in read_s4_metadata(aliased)] == [
        ("abc_1", 2.0, "cat_meowing", "val")]
    positional = tmp_path / "p.csv"
    positional.write_text("c0,c1,c2,c3\nabc_1,2,cat_meowing,test\n")
    assert read_s4_metadata(positional)[0].category == "cat_meowing"
    no_start = tmp_path / "n.csv"
    no_start.write_text("split,category,name\ntrain,race_car,xyz_0\n")
    row = read_s4_metadata(no_start)[0]
    assert (row.name, row.category, row.split, row.start) == ("xyz_0", "race_car", "train", None)
    assert s4_record(tmp_path, row).masks == (tmp_path / "gt_masks/train/race_car/xyz_0/xyz_0_1.png",)


def test_malformed_metadata(tmp_path: Path) -> None:
    bad_split = tmp_path / "b.csv"
    bad_split.write_text("name,start,category,split\na,0,cat_meowing,train\nb,0,cat_meowing,dev\n")
    with pytest.raises(ValueError, match=rf"{bad_split}:3: expected split in"):
        read_s4_metadata(bad_split)
    no_cat = tmp_path / "c.csv"
    no_cat.write_text("name,split,foo\na,train,x\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['category'\]"):
        read_s4_metadata(no_cat)
    with pytest.raises(ValueError, match="expected split in"):
        read_s4_metadata(no_cat, split="training")
