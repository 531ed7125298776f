"""AVE (Audio-Visual Event localisation, Tian et al. ECCV 2018): annotation files and per-second labels.

File format, one clip per line: ``Category&VideoID&Quality&StartTime&EndTime`` (``Annotations.txt`` and the official
split files ``trainSet.txt`` / ``valSet.txt`` / ``testSet.txt`` share it). Some public copies carry a header row
(``Category&VideoID&Quality&StartTime&EndTime``); blank lines are tolerated. The real ``Annotations.txt`` holds 4,143
clips (4,142 newline characters: its last line has none, so ``wc -l`` says 4,142), 28 categories, 4,097 distinct video
ids (46 videos appear twice, under two events), all of quality ``good``, and one clip with StartTime == EndTime == 0
(``VWi2ENBuTbw``, labelled background for all ten seconds here).

Category order. The class index of a category is its position in :data:`AVE_CATEGORIES`, which is the order of FIRST
APPEARANCE in the official ``Annotations.txt`` -- NOT alphabetical. This is the order of the official ``labels.h5``
shipped with the AVE code and the ``STANDARD_AVE_DATASET`` / ``categories.txt`` lists of the AVE follow-up codebases
(PSP, CMBS, LAVisH / DG-SCT ``data/AVE/categories.txt``) whose data pipeline STG-CMA reuses. A test checks that the real
file's first-appearance order equals this tuple. Background is class :data:`BACKGROUND` = 28; 29 classes in all.

Per-second labels for a 10 s clip: second ``s`` (the interval ``[s, s + 1)``) carries the event class when
``start <= s < end``, background otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from stgcma_fast.fileio import read_lines

AVE_CATEGORIES: tuple[str, ...] = (
    "Church bell",
    "Male speech, man speaking",
    "Bark",
    "Fixed-wing aircraft, airplane",
    "Race car, auto racing",
    "Female speech, woman speaking",
    "Helicopter",
    "Violin, fiddle",
    "Flute",
    "Ukulele",
    "Frying (food)",
    "Truck",
    "Shofar",
    "Motorcycle",
    "Acoustic guitar",
    "Train horn",
    "Clock",
    "Banjo",
    "Goat",
    "Baby cry, infant cry",
    "Bus",
    "Chainsaw",
    "Cat",
    "Horse",
    "Toilet flush",
    "Rodents, rats, mice",
    "Accordion",
    "Mandolin",
)
"""The 28 AVE event categories; the index in this tuple is the class index."""

BACKGROUND: int = len(AVE_CATEGORIES)  # 28
NUM_CLASSES: int = len(AVE_CATEGORIES) + 1  # 29: 28 events + background
CLIP_SECONDS: int = 10
CATEGORY_TO_INDEX: dict[str, int] = {name: i for i, name in enumerate(AVE_CATEGORIES)}

_HEADER = ("category", "videoid", "quality", "starttime", "endtime")
SPLIT_FILES: dict[str, str] = {
    "train": "trainSet.txt",
    "val": "valSet.txt",
    "test": "testSet.txt",
    "all": "Annotations.txt",
}
"""Official file names per split (3,339 / 402 / 402 clips; ``all`` = the 4,143 of ``Annotations.txt``)."""


def category_index(category: str) -> int:
    """Class index (0..27) of an AVE category name; ``ValueError`` naming the known names if unknown."""
    try:
        return CATEGORY_TO_INDEX[category]
    except KeyError:
        raise ValueError(f"unknown AVE category {category!r}; expected one of {list(AVE_CATEGORIES)}") from None


def per_second_labels(class_index: int, start: int, end: int, num_seconds: int = CLIP_SECONDS) -> tuple[int, ...]:
    """Per-second class indices of one clip: ``class_index`` for seconds in ``[start, end)``, background elsewhere.

    Returns a tuple of ``num_seconds`` ints in ``0..28``.
    """
    if not 0 <= class_index < BACKGROUND:
        raise ValueError(f"expected an event class index in [0, {BACKGROUND}), got {class_index}")
    if not 0 <= start <= end <= num_seconds:
        raise ValueError(f"expected 0 <= start <= end <= {num_seconds}, got start={start}, end={end}")
    return tuple(class_index if start <= s < end else BACKGROUND for s in range(num_seconds))


def one_hot_labels(labels: torch.Tensor | Sequence[int], num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """One-hot float32 form of per-second labels: (..., S) integer classes -> (..., S, num_classes)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"expected labels in [0, {num_classes}), got min {int(labels.min())}, max {int(labels.max())}")
    return torch.nn.functional.one_hot(labels, num_classes).to(torch.float32)


@dataclasses.dataclass(frozen=True)
class AveClip:
    """One annotated AVE clip. ``labels`` holds the 10 per-second class indices (background = 28)."""

    video_id: str
    category: str
    quality: str
    start: int
    end: int
    labels: tuple[int, ...] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", per_second_labels(category_index(self.category), self.start, self.end))

    @property
    def class_index(self) -> int:
        """Class index (0..27) of the clip's event."""
        return CATEGORY_TO_INDEX[self.category]

    def labels_tensor(self) -> torch.Tensor:
        """(10,) int64 per-second class indices."""
        return torch.tensor(self.labels, dtype=torch.long)

    def one_hot(self) -> torch.Tensor:
        """(10, 29) float32 one-hot per-second labels."""
        return one_hot_labels(self.labels)

    def video_path(self, root: str | Path) -> Path:
        """``<root>/<VideoID>.mp4`` (the layout of the released ``AVE/`` video folder)."""
        return Path(root) / f"{self.video_id}.mp4"


def _parse_seconds(text: str, what: str, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: expected an integer {what}, got {text!r}") from None
    if not value.is_integer():
        raise ValueError(f"{where}: expected an integer {what} (whole seconds), got {text!r}")
    return int(value)


def parse_ave_lines(lines: Iterable[str], source: str = "<lines>") -> list[AveClip]:
    """Parse AVE annotation lines; ``source`` names the file in error messages (``source:lineno: ...``).

    A first non-blank line equal to the header ``Category&VideoID&Quality&StartTime&EndTime`` (any case) is skipped;
    blank lines are skipped anywhere. Anything else that is not a valid clip raises ``ValueError``.
    """
    clips: list[AveClip] = []
    seen_content = False
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip("\r\n\ufeff")
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("&")]
        where = f"{source}:{lineno}"
        if not seen_content:
            seen_content = True
            if tuple(f.lower().replace(" ", "").replace("_", "") for f in fields) == _HEADER:
                continue
        if len(fields) != 5:
            raise ValueError(
                f"{where}: expected 5 '&'-separated fields Category&VideoID&Quality&StartTime&EndTime, "
                f"got {len(fields)}: {line!r}"
            )
        category, video_id, quality, start_text, end_text = fields
        if category not in CATEGORY_TO_INDEX:
            raise ValueError(f"{where}: unknown AVE category {category!r}; expected one of {list(AVE_CATEGORIES)}")
        if not video_id:
            raise ValueError(f"{where}: empty VideoID in {line!r}")
        start = _parse_seconds(start_text, "StartTime", where)
        end = _parse_seconds(end_text, "EndTime", where)
        if not 0 <= start <= end <= CLIP_SECONDS:
            raise ValueError(
                f"{where}: expected 0 <= StartTime <= EndTime <= {CLIP_SECONDS}, got StartTime={start}, EndTime={end}"
            )
        clips.append(AveClip(video_id=video_id, category=category, quality=quality, start=start, end=end))
    return clips


def read_ave_annotations(path: str | Path) -> list[AveClip]:
    """Read ``Annotations.txt`` or a split file (``trainSet.txt`` ...), with or without a header row.

    Returns the clips in file order. The file is UTF-8 (a byte-order mark is accepted). Raises
    ``FileNotFoundError`` naming the path if absent, and ``ValueError`` naming the file and the line for a malformed
    line or bytes that are not UTF-8, and naming the file when it holds no clip.
    """
    path = Path(path)
    clips = parse_ave_lines(read_lines(path, "AVE annotation file"), source=str(path))
    if not clips:
        raise ValueError(f"{path}: no clips (empty, or only a header / blank lines); expected one "
                         f"Category&VideoID&Quality&StartTime&EndTime line per clip")
    return clips


def read_ave_split(annotation_dir: str | Path, split: str) -> list[AveClip]:
    """Clips of one official split, read from ``<annotation_dir>/<SPLIT_FILES[split]>``.

    File order is kept, so row indices (as in the ``*_order.h5`` files of the AVE code, which index
    ``Annotations.txt`` rows) address the returned list directly. A split file without clips is a ``ValueError``
    naming the split and its path.
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"expected split in {list(SPLIT_FILES)}, got {split!r}")
    path = Path(annotation_dir) / SPLIT_FILES[split]
    clips = parse_ave_lines(read_lines(path, f"AVE {split} split file"), source=str(path))
    if not clips:
        raise ValueError(f"split {split!r} holds no clips: {path} is empty or has only a header / blank lines; "
                         f"expected one Category&VideoID&Quality&StartTime&EndTime line per clip")
    return clips


def labels_tensor(clips: Sequence[AveClip]) -> torch.Tensor:
    """(N, 10) int64 per-second labels of ``clips``."""
    return torch.tensor([clip.labels for clip in clips], dtype=torch.long).reshape(len(clips), CLIP_SECONDS)
