"""MUSIC-AVQA parsing, template filling, tokenisation, answer vocabulary and per-type accuracy."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from stgcma_fast.data.avqa import (
    ANSWERS,
    QUESTION_TYPES,
    QuestionVocab,
    answer_index,
    fill_template,
    group_by_type,
    parse_avqa_item,
    per_type_accuracy,
    read_avqa_questions,
)
from tests.data.conftest import shared_file

VAL_TYPE_COUNTS = {
    ("Audio-Visual", "Counting"): 635, ("Visual", "Location"): 614, ("Visual", "Counting"): 600,
    ("Audio-Visual", "Comparative"): 557, ("Audio", "Counting"): 515, ("Audio-Visual", "Existential"): 499,
    ("Audio-Visual", "Location"): 462, ("Audio-Visual", "Temporal"): 414, ("Audio", "Comparative"): 299,
}


def _reference_words(content: str, values_json: str) -> list[str]:
    """The official filling, restated: split on single spaces, drop the last character, fill '<...>' words in order."""
    out = content.rstrip().split(" ")
    out[-1] = out[-1][:-1]
    values = iter(json.loads(values_json))
    return [next(values) if "<" in w else w for w in out]


def test_answer_vocabulary() -> None:
    assert len(ANSWERS) == 42 and len(set(ANSWERS)) == 42
    assert ANSWERS[:5] == ("two", "cello", "congas", "zero", "no") and ANSWERS[-1] == "suona"
    assert answer_index("ten") == 33 and answer_index("more than ten") == 20
    with pytest.raises(ValueError, match="not one of the 42"):
        answer_index("eleven")


def test_fill_template_examples(fixtures_dir: Path) -> None:
    questions = {q.question_id: q for q in read_avqa_questions(fixtures_dir / "avqa_val_excerpt.json")}
    assert len(questions) == 29
    comparative = next(q for q in questions.values() if len(q.values) == 4)
    assert comparative.text == "Is the flute on the left louder than the cello on the right"
    full_width = next(q for q in questions.values() if q.template.endswith("？"))
    assert full_width.text == "How many sounding banjo in the video"
    trailing_space = next(q for q in questions.values() if q.template == "Are there <Object> and <Object> sound? ")
    assert trailing_space.words == ["Are", "there", "violin", "and", "pipa", "sound"]
    assert fill_template("Where is the <FL> sounding instrument?", ["first"])[3] == "first"
    assert fill_template("Which instrument makes sounds <BA> the <Object>?", ["after", "piano"])[-3:] == [
        "after", "the", "piano"]
    with pytest.raises(ValueError, match="1 placeholders, got 2 values"):
        fill_template("Is the <Object> playing?", ["a", "b"])
    with pytest.raises(ValueError, match="more placeholders than values"):
        fill_template("Is the <Object> left of <Object>?", ["a"])


def test_parse_errors() -> None:
    with pytest.raises(ValueError, match=r"q\[3\]: malformed MUSIC-AVQA item \(KeyError"):
        parse_avqa_item({"video_id": "1"}, where="q[3]")
    item = {"video_id": "1", "question_id": 1, "type": '["Audio", "Location"]', "question_content": "Where?",
            "templ_values": "[]", "anser": "left"}
    with pytest.raises(ValueError, match="unknown question type"):
        parse_avqa_item(item)


def test_tokenisation(fixtures_dir: Path) -> None:
    questions = read_avqa_questions(fixtures_dir / "avqa_val_excerpt.json")
    vocab = QuestionVocab.from_questions(questions)
    assert vocab.itos[:5] == ["<pad>", "Is", "the", "ukulele", "in"]
    assert vocab.itos[-1] == "<unk>" and vocab.unk_index == len(vocab) - 1
    ids = vocab.encode_question(questions[0])
    assert ids.dtype == torch.long and ids.shape == (14,)
    assert ids.tolist() == [1, 2, 3, 4, 2, 5, 6, 7] + [0] * 6  # "Is the ukulele in the video always playing"
    assert vocab.encode(["Is", "banana"], max_len=4).tolist() == [1, vocab.unk_index, 0, 0]
    assert vocab.encode(["Is"] * 20).shape == (14,)
    lower = QuestionVocab.from_questions(questions, lowercase=True)
    assert "How" not in lower.stoi and lower.encode(["HOW"])[0] == lower.stoi["how"]
    with pytest.raises(ValueError, match="max_len >= 1"):
        vocab.encode(["Is"], max_len=0)


def test_group_and_accuracy(fixtures_dir: Path) -> None:
    questions = read_avqa_questions(fixtures_dir / "avqa_val_excerpt.json")
    groups = group_by_type(questions)
    assert list(groups) == list(QUESTION_TYPES)
    assert {k: len(v) for k, v in groups.items() if v} == {
        ("Audio-Visual", "Existential"): 11, ("Audio-Visual", "Counting"): 6, ("Audio-Visual", "Temporal"): 3,
        ("Visual", "Location"): 2, ("Audio-Visual", "Location"): 2, ("Audio-Visual", "Comparative"): 2,
        ("Audio", "Comparative"): 1, ("Audio", "Counting"): 1, ("Visual", "Counting"): 1}
    correct = [q.modality != "Visual" and q.kind != "Temporal" for q in questions]
    acc = per_type_accuracy(questions, torch.tensor(correct))
    assert acc["Visual/Location"] == 0.0 and acc["Audio/Counting"] == 100.0 and acc["Audio-Visual/Temporal"] == 0.0
    assert acc["Audio"] == 100.0 and acc["Visual"] == 0.0
    assert acc["Audio-Visual"] == pytest.approx(100.0 * 21 / 24)
    assert acc["Overall"] == pytest.approx(100.0 * sum(correct) / len(correct))
    assert list(acc)[-4:] == ["Audio", "Visual", "Audio-Visual", "Overall"]
    with pytest.raises(ValueError, match="one correctness flag per question"):
        per_type_accuracy(questions, correct[:-1])


def test_real_val_file() -> None:
    path = shared_file("music_avqa/avqa-val.json")
    questions = read_avqa_questions(path)
    raw = json.loads(path.read_text())
    assert len(questions) == 4595
    assert {k: len(v) for k, v in group_by_type(questions).items()} == VAL_TYPE_COUNTS
    answers = Counter(q.answer for q in questions)
    assert len(answers) == 41 and set(answers) <= set(ANSWERS) and set(ANSWERS) - set(answers) == {"ten"}
    for q, item in zip(questions, raw, strict=True):
        assert q.template.rstrip()[-1] in "?？"
        assert q.words == _reference_words(item["question_content"], item["templ_values"])
    lengths = Counter(len(q.words) for q in questions)
    assert max(lengths) == 14 and min(lengths) == 4
    vocab = QuestionVocab.from_questions(questions)
    encoded = torch.stack([vocab.encode_question(q) for q in questions])
    assert encoded.shape == (4595, 14) and int(encoded.max()) < vocab.unk_index  # every val word is in the vocab
    targets = torch.tensor([q.answer_index for q in questions])
    assert int(targets.max()) < 42
