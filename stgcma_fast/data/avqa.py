"""MUSIC-AVQA (Li et al., CVPR 2022): questions, template filling, tokenisation, the 42 answers, per-type accuracy.

Behaviour copied from the official loader (``GeWu-Lab/MUSIC-AVQA``, ``net_grd_avst/dataloader_avst.py``) and test loop:

- Template filling: ``words = question_content.rstrip().split(' ')``; the LAST CHARACTER of the last word is dropped
  (the ``?``, or the full-width ``？`` that 203 val questions end with); then every word containing ``<`` is replaced,
  left to right, by the next value of ``templ_values``. No lower-casing: the official vocabulary keeps ``How`` and
  ``how`` apart (``lowercase=True`` is offered, default off for index parity).
- Question vocabulary: ``['<pad>']`` followed by words in order of first appearance over ``avqa-train.json``; the
  official code has no unknown-word entry (an unseen word raises ``KeyError``). Here ``<unk>`` is APPENDED at the end,
  so every official index is unchanged. ``max_len = 14``: shorter questions are padded with ``<pad>`` (index 0). The
  official code never truncates (longest val question: exactly 14 words); here longer ones are cut to ``max_len``.
- Answers: a 42-way classification; the index of an answer is its order of first appearance in ``avqa-train.json``
  (``ans_vocab``). :data:`ANSWERS` is that list as the MUSIC-AVQA-derived test scripts hard-code it; the val file has
  41 of the 42 (no ``ten``). Keep this order to load official checkpoints.
- Per-type accuracy: the official test loop groups by ``type`` = [modality, kind]; 9 pairs occur (below), reported per
  pair, per modality (Audio, Visual, Audio-Visual) and overall.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from stgcma_fast.fileio import read_json

ANSWERS: tuple[str, ...] = (
    "two", "cello", "congas", "zero", "no", "pipa", "six", "yes", "one", "four", "three", "seven", "five", "ukulele",
    "right", "piano", "left", "accordion", "clarinet", "guzheng", "more than ten", "nine", "indoor", "saxophone",
    "drum", "violin", "middle", "outdoor", "bagpipe", "bassoon", "acoustic_guitar", "banjo", "electric_bass", "ten",
    "eight", "flute", "simultaneously", "trumpet", "erhu", "xylophone", "tuba", "suona",
)
"""The 42 official answers in official class-index order."""

ANSWER_TO_INDEX: dict[str, int] = {a: i for i, a in enumerate(ANSWERS)}
MODALITIES: tuple[str, ...] = ("Audio", "Visual", "Audio-Visual")
KINDS: tuple[str, ...] = ("Counting", "Comparative", "Location", "Existential", "Temporal")
QUESTION_TYPES: tuple[tuple[str, str], ...] = (
    ("Audio", "Counting"), ("Audio", "Comparative"),
    ("Visual", "Counting"), ("Visual", "Location"),
    ("Audio-Visual", "Existential"), ("Audio-Visual", "Counting"), ("Audio-Visual", "Location"),
    ("Audio-Visual", "Comparative"), ("Audio-Visual", "Temporal"),
)
"""The 9 (modality, kind) pairs of MUSIC-AVQA, in the order of the official report."""

PAD, UNK = "<pad>", "<unk>"
DEFAULT_MAX_LEN = 14


def fill_template(question_content: str, templ_values: Sequence[str]) -> list[str]:
    """Words of a question with its placeholders filled, exactly as the official loader does (see module doc).

    Raises ``ValueError`` if the number of placeholders and values differ (the official code would silently misuse).
    """
    words = question_content.rstrip().split(" ")
    words[-1] = words[-1][:-1]
    values = list(templ_values)
    p = 0
    for pos, word in enumerate(words):
        if "<" in word:
            if p >= len(values):
                raise ValueError(f"question {question_content!r} has more placeholders than values {values}")
            words[pos] = values[p]
            p += 1
    if p != len(values):
        raise ValueError(f"question {question_content!r} has {p} placeholders, got {len(values)} values {values}")
    return words


@dataclasses.dataclass(frozen=True)
class AvqaQuestion:
    """One MUSIC-AVQA question; ``words`` is the filled template (see :func:`fill_template`)."""

    video_id: str
    question_id: int
    modality: str
    kind: str
    template: str
    values: tuple[str, ...]
    answer: str
    deleted: int = 0

    @property
    def type(self) -> tuple[str, str]:
        """(modality, kind), e.g. ("Audio", "Counting")."""
        return (self.modality, self.kind)

    @property
    def words(self) -> list[str]:
        return fill_template(self.template, self.values)

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def answer_index(self) -> int:
        return answer_index(self.answer)


def answer_index(answer: str) -> int:
    """Official class index (0..41) of an answer; ``ValueError`` if it is not one of the 42."""
    try:
        return ANSWER_TO_INDEX[answer]
    except KeyError:
        raise ValueError(f"answer {answer!r} is not one of the 42 MUSIC-AVQA answers {list(ANSWERS)}") from None


def parse_avqa_item(item: dict, where: str = "") -> AvqaQuestion:
    """One JSON object of ``avqa-{train,val,test}.json`` -> :class:`AvqaQuestion` (``type`` and ``templ_values`` are
    JSON-encoded lists inside strings)."""
    try:
        qtype = json.loads(item["type"]) if isinstance(item["type"], str) else list(item["type"])
        values = json.loads(item["templ_values"]) if isinstance(item["templ_values"], str) else item["templ_values"]
        question = AvqaQuestion(
            video_id=str(item["video_id"]),
            question_id=int(item["question_id"]),
            modality=str(qtype[0]),
            kind=str(qtype[1]),
            template=str(item["question_content"]),
            values=tuple(str(v) for v in values),
            answer=str(item["anser"]),
            deleted=int(item.get("question_deleted", 0)),
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{where}: malformed MUSIC-AVQA item ({type(exc).__name__}: {exc}); expected fields video_id, "
            f"question_id, type, question_content, templ_values, anser; got {item!r}"
        ) from None
    if question.type not in QUESTION_TYPES:
        raise ValueError(f"{where}: unknown question type {list(question.type)}; expected one of {QUESTION_TYPES}")
    return question


def read_avqa_questions(path: str | Path) -> list[AvqaQuestion]:
    """Read ``avqa-*.json`` (a JSON list of question objects) in file order.

    The file is UTF-8 (a byte-order mark is accepted). Raises ``FileNotFoundError`` naming the path if absent, and
    ``ValueError`` naming the file (and line, for invalid JSON or bytes that are not UTF-8, or the item index, for a
    malformed question), and naming the split file when it holds no question.
    """
    path = Path(path)
    items = read_json(path, "MUSIC-AVQA question file")
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of questions, got {type(items).__name__}")
    if not items:
        raise ValueError(f"split file {path} holds no questions (an empty JSON list); expected one object per question")
    return [parse_avqa_item(item, where=f"{path}[{i}]") for i, item in enumerate(items)]


class QuestionVocab:
    """Word -> index, built in official order (``<pad>`` = 0, then first appearance); ``<unk>`` appended last."""

    def __init__(self, words: Iterable[str], lowercase: bool = False) -> None:
        self.lowercase = lowercase
        self.itos: list[str] = [PAD]
        self.stoi: dict[str, int] = {PAD: 0}
        for word in words:
            word = word.lower() if lowercase else word
            if word not in self.stoi:
                self.stoi[word] = len(self.itos)
                self.itos.append(word)
        if UNK not in self.stoi:
            self.stoi[UNK] = len(self.itos)
            self.itos.append(UNK)

    @classmethod
    def from_questions(cls, questions: Iterable[AvqaQuestion], lowercase: bool = False) -> QuestionVocab:
        """Build from questions (use ``avqa-train.json`` for the official vocabulary)."""
        return cls((w for q in questions for w in q.words), lowercase=lowercase)

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def unk_index(self) -> int:
        return self.stoi[UNK]

    def encode(self, words: Sequence[str], max_len: int = DEFAULT_MAX_LEN) -> torch.Tensor:
        """(max_len,) int64 word indices: unknown words -> ``<unk>``, padded with 0 / cut to ``max_len``."""
        if max_len < 1:
            raise ValueError(f"expected max_len >= 1, got {max_len}")
        ids = [self.stoi.get(w.lower() if self.lowercase else w, self.unk_index) for w in words[:max_len]]
        return torch.tensor(ids + [0] * (max_len - len(ids)), dtype=torch.long)

    def encode_question(self, question: AvqaQuestion, max_len: int = DEFAULT_MAX_LEN) -> torch.Tensor:
        return self.encode(question.words, max_len)


def group_by_type(questions: Iterable[AvqaQuestion]) -> dict[tuple[str, str], list[AvqaQuestion]]:
    """Questions grouped by (modality, kind), keys in :data:`QUESTION_TYPES` order (empty groups included)."""
    groups: dict[tuple[str, str], list[AvqaQuestion]] = {t: [] for t in QUESTION_TYPES}
    for q in questions:
        groups[q.type].append(q)
    return groups


def per_type_accuracy(questions: Sequence[AvqaQuestion], correct: Sequence[bool] | torch.Tensor) -> dict[str, float]:
    """Accuracy in percent per (modality, kind) as ``"Audio/Counting"``, per modality (``"Audio"``...) and
    ``"Overall"``, as the official test loop reports. Groups with no question are left out."""
    flags = [bool(c) for c in (correct.tolist() if isinstance(correct, torch.Tensor) else correct)]
    if len(flags) != len(questions):
        raise ValueError(f"expected one correctness flag per question ({len(questions)}), got {len(flags)}")
    hits: dict[str, list[int]] = {}
    for q, ok in zip(questions, flags, strict=True):
        for key in (f"{q.modality}/{q.kind}", q.modality, "Overall"):
            hits.setdefault(key, [0, 0])
            hits[key][0] += int(ok)
            hits[key][1] += 1
    order = [f"{m}/{k}" for m, k in QUESTION_TYPES] + list(MODALITIES) + ["Overall"]
    return {key: 100.0 * hits[key][0] / hits[key][1] for key in order if key in hits}
