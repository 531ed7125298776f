"""Annotation, split, metadata and question files: decoding errors, missing files and empty splits are named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from stgcma_fast.data.ave import read_ave_annotations, read_ave_split
from stgcma_fast.data.ave_loader import read_split
from stgcma_fast.data.avqa import read_avqa_questions
from stgcma_fast.data.avs import read_s4_metadata, s4_records

AVE_LINES = "Bark&a1&good&0&10\nBark&a2&good&1&4\nClock&a3&good&2&9\n"
S4_CSV = "name,start,category,split\na_1,0,cat_meowing,train\nb_1,0,race_car,train\nc_1,0,race_car,test\n"
AVQA_ITEM = {"video_id": "00000001", "question_id": 1, "type": '["Audio", "Counting"]',
             "question_content": "How many <Object> are there?", "templ_values": '["cello"]', "anser": "two"}


def _latin1(text: str, line: int) -> bytes:
    """``text`` as UTF-8 with one Latin-1 'é' (0xe9) put at the start of 1-based ``line``."""
    lines = text.encode().split(b"\n")
    lines[line - 1] = b"\xe9" + lines[line - 1]
    return b"\n".join(lines)


def _decoding_error(path: Path, line: int) -> str:
    return rf"^{re.escape(str(path))}:{line}: cannot decode byte\(s\) b'\\xe9' at column 1 as UTF-8"


# --------------------------------------------------------------------------------------------------------- AVE


def test_ave_decoding_error_names_file_line_and_encoding(tmp_path: Path) -> None:
    path = tmp_path / "Annotations.txt"
    path.write_bytes(_latin1(AVE_LINES, 3))
    with pytest.raises(ValueError, match=_decoding_error(path, 3)) as info:
        read_ave_annotations(path)
    assert isinstance(info.value.__cause__, UnicodeDecodeError)
    (tmp_path / "valSet.txt").write_bytes(_latin1(AVE_LINES, 2))
    with pytest.raises(ValueError, match=_decoding_error(tmp_path / "valSet.txt", 2)):
        read_ave_split(tmp_path, "val")
    with pytest.raises(ValueError, match=_decoding_error(tmp_path / "valSet.txt", 2)):
        read_split(tmp_path, "val")


def test_ave_utf8_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "trainSet.txt"
    path.write_bytes(b"\xef\xbb\xbf" + AVE_LINES.replace("\n", "\r\n").encode())
    assert [c.video_id for c in read_ave_annotations(path)] == ["a1", "a2", "a3"]
    assert [c.video_id for c in read_split(tmp_path, "train")] == ["a1", "a2", "a3"]


@pytest.mark.parametrize("content", ["", "\n\n", "Category&VideoID&Quality&StartTime&EndTime\n", "\ufeff"])
def test_ave_empty_split_names_split_and_path(tmp_path: Path, content: str) -> None:
    (tmp_path / "testSet.txt").write_text(content, encoding="utf-8")
    path = re.escape(str(tmp_path / "testSet.txt"))
    for read in (read_ave_split, read_split):
        with pytest.raises(ValueError, match=rf"^split 'test' holds no clips: {path} is empty"):
            read(tmp_path, "test")
    with pytest.raises(ValueError, match=rf"^{path}: no clips"):
        read_ave_annotations(tmp_path / "testSet.txt")


def test_ave_missing_and_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"AVE val split file {re.escape(str(tmp_path / 'valSet.txt'))} "
                                                r"does not exist"):
        read_split(tmp_path, "val")
    (tmp_path / "Annotations.txt").mkdir()
    with pytest.raises(IsADirectoryError, match=r"Annotations.txt is a folder"):
        read_ave_annotations(tmp_path / "Annotations.txt")


def test_ave_malformed_line_still_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "Annotations.txt"
    path.write_bytes(b"\xef\xbb\xbf" + (AVE_LINES + "Bark&a4&good&0\n").encode())
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:4: expected 5 '&'-separated fields"):
        read_ave_annotations(path)


# ----------------------------------------------------------------------------------------------------- AVSBench


def test_s4_decoding_error_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "s4_meta_data.csv"
    path.write_bytes(_latin1(S4_CSV, 4))
    with pytest.raises(ValueError, match=_decoding_error(path, 4)):
        read_s4_metadata(path)
    path.write_bytes(b"\xef\xbb\xbf" + S4_CSV.encode())
    assert [r.name for r in read_s4_metadata(path, "train")] == ["a_1", "b_1"]


def test_s4_empty_split_names_split_and_path(tmp_path: Path) -> None:
    path = tmp_path / "s4_meta_data.csv"
    path.write_text(S4_CSV)
    with pytest.raises(ValueError, match=rf"^split 'val' holds no clips: {re.escape(str(path))} has no row with "
                                         r"split == 'val'"):
        read_s4_metadata(path, "val")
    with pytest.raises(ValueError, match=r"^split 'val' holds no clips"):
        s4_records(tmp_path / "s4_data", meta_csv=path, split="val", check_files=False)
    path.write_text("name,start,category,split\n\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: no clips \(only a header\)"):
        read_s4_metadata(path)


def test_s4_csv_errors_and_missing_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s4_meta_data.csv"
    path.write_text(S4_CSV + 'd_1,0,"race_car\n')  # an unclosed quote
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:\d+: not a valid CSV row"):
        read_s4_metadata(path)
    path.write_text(S4_CSV + "e_1,zero,race_car,val\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:5: expected a numeric start time, got 'zero'"):
        read_s4_metadata(path)
    with pytest.raises(FileNotFoundError, match=rf"metadata file {re.escape(str(tmp_path / 'absent.csv'))} does not"):
        read_s4_metadata(tmp_path / "absent.csv")


# ------------------------------------------------------------------------------------------------------- AVQA


def test_avqa_decoding_error_invalid_json_and_empty_split(tmp_path: Path) -> None:
    path = tmp_path / "avqa-val.json"
    text = json.dumps([AVQA_ITEM, AVQA_ITEM], indent=1)
    path.write_bytes(_latin1(text, 3))
    with pytest.raises(ValueError, match=_decoding_error(path, 3)):
        read_avqa_questions(path)
    path.write_text(text[:-3])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:\d+:\d+: not valid JSON"):
        read_avqa_questions(path)
    path.write_text("[]")
    with pytest.raises(ValueError, match=rf"^split file {re.escape(str(path))} holds no questions"):
        read_avqa_questions(path)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert [q.words for q in read_avqa_questions(path)] == [["How", "many", "cello", "are", "there"]] * 2
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(tmp_path / 'avqa-test.json'))} does not exist"):
        read_avqa_questions(tmp_path / "avqa-test.json")
    path.write_text(json.dumps([AVQA_ITEM, "not an object"]))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}\[1\]: malformed MUSIC-AVQA item"):
        read_avqa_questions(path)
