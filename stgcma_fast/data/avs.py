"""AVSBench-S4 (single-source audio-visual segmentation, Zhou et al. ECCV 2022): metadata and file layout.

What the official AVSBench v1 code (``OpenNLPLab/AVSBench``, ``avs_scripts/avs_s4/dataloader.py`` and
``preprocess_scripts/preprocess_s4.py``) reads, which this module follows:

- ``Single-source/s4_meta_data.csv``: comma-separated, one header row, read with ``pd.read_csv``; columns used by
  name are ``category`` and ``split`` (train / val / test), and by position: column 0 the clip name, column 1 the
  start time (seconds, compared against 5), column 2 the category, column 3 the split. Third-party loaders also read
  the column ``name``. The exact header spelling of column 1 was not verifiable offline; the reader accepts the
  aliases in :data:`COLUMN_ALIASES` (``name``/``vid``/``video_id``, ``start``/``start_time``/``s_sec``,
  ``category``/``a_obj``, ``split``) and falls back to the positional order name, start, category, split when the
  header names none of them. (``vid,uid,s_min,s_sec,a_obj,split,label`` is the AVSBench-*semantic* ``metadata.csv``,
  whose folder layout differs; it is not supported here.)
- frames ``s4_data/visual_frames/<split>/<category>/<name>/<name>_<k>.png``, k = 1..5 (one folder per clip: the
  official loader joins ``DIR_IMG, split, category, video_name`` and then ``"%s_%d.png" % (video_name, k)``);
- audio ``s4_data/audio_wav/<split>/<category>/<name>.wav`` (16 kHz, 5 s);
- masks ``s4_data/gt_masks/<split>/<category>/<name>/<name>_<k>.png``: train has only the first frame's mask
  (k = 1), val and test all five.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from stgcma_fast.fileio import read_text

S4_NUM_FRAMES: int = 5
SPLITS: tuple[str, ...] = ("train", "val", "test")

AVS_S4_CATEGORIES: tuple[str, ...] = (
    "baby_laughter", "female_singing", "male_speech", "dog_barking", "cat_meowing", "lions_roaring",
    "horse_clip-clop", "coyote_howling", "mynah_bird_singing", "playing_acoustic_guitar", "playing_tabla",
    "playing_violin", "playing_piano", "playing_ukulele", "playing_glockenspiel", "helicopter", "race_car",
    "driving_buses", "ambulance_siren", "typing_on_computer_keyboard", "chainsawing_trees", "cap_gun_shooting",
    "lawn_mowing",
)
"""The 23 S4 categories in the order of the official ``preprocess_s4.py`` (segmentation itself is class-agnostic)."""

COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "name": ("name", "vid", "video_id", "video_name"),
    "start": ("start", "start_time", "s_sec"),
    "category": ("category", "a_obj"),
    "split": ("split",),
}


@dataclasses.dataclass(frozen=True)
class S4MetaRow:
    """One row of ``s4_meta_data.csv``."""

    name: str
    category: str
    split: str
    start: float | None = None


@dataclasses.dataclass(frozen=True)
class S4Record:
    """One S4 clip with its resolved paths: 5 frames, 1 wav, 1 (train) or 5 (val/test) masks."""

    name: str
    category: str
    split: str
    start: float | None
    frames: tuple[Path, ...]
    audio: Path
    masks: tuple[Path, ...]

    def paths(self) -> tuple[Path, ...]:
        """Every file of the record: frames, audio, masks."""
        return (*self.frames, self.audio, *self.masks)

    def missing(self) -> list[Path]:
        """The record's files that do not exist."""
        return [p for p in self.paths() if not p.is_file()]


class MissingFilesError(FileNotFoundError):
    """Some files named by the metadata are absent; ``missing`` lists all of them."""

    def __init__(self, root: Path, missing: Sequence[Path], total: int) -> None:
        self.root = root
        self.missing = list(missing)
        shown = "\n  ".join(str(p) for p in self.missing[:10])
        more = f"\n  ... and {len(self.missing) - 10} more" if len(self.missing) > 10 else ""
        super().__init__(
            f"{len(self.missing)} of {total} AVSBench-S4 files are missing under {root}; expected the layout "
            f"visual_frames|gt_masks/<split>/<category>/<name>/<name>_<k>.png and audio_wav/<split>/<category>/"
            f"<name>.wav. Missing:\n  {shown}{more}"
        )


def _column_indices(header: Sequence[str], source: str) -> dict[str, int | None]:
    lowered = [h.strip().lower() for h in header]
    found: dict[str, int | None] = {}
    for key, aliases in COLUMN_ALIASES.items():
        found[key] = next((lowered.index(a) for a in aliases if a in lowered), None)
    if all(v is None for v in found.values()) and len(header) >= 4:
        return {"name": 0, "start": 1, "category": 2, "split": 3}  # positional, as the official loader indexes
    absent = [k for k in ("name", "category", "split") if found[k] is None]
    if absent:
        raise ValueError(
            f"{source}: header {list(header)} lacks column(s) {absent}; expected names among {COLUMN_ALIASES}"
        )
    return found


def _rows(reader: Any, path: Path) -> Iterator[list[str]]:
    """The rows of a ``csv.reader``, its errors (a NUL byte, an unclosed quote) as ValueErrors naming file and line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ValueError(f"{path}:{reader.line_num}: not a valid CSV row ({exc})") from exc
        yield row


def read_s4_metadata(path: str | Path, split: str | None = None) -> list[S4MetaRow]:
    """Read ``s4_meta_data.csv`` (header row required); keep only ``split`` if given. Rows in file order.

    The file is UTF-8 (a byte-order mark is accepted). Raises ``FileNotFoundError`` naming the path if absent, and
    ``ValueError`` naming the file and line for a malformed row or bytes that are not UTF-8, and naming the split and
    the file when no row is left.
    """
    path = Path(path)
    if split is not None and split not in SPLITS:
        raise ValueError(f"expected split in {SPLITS}, got {split!r}")
    rows: list[S4MetaRow] = []
    reader = csv.reader(io.StringIO(read_text(path, "AVSBench-S4 metadata file"), newline=""), strict=True)
    header = next(reader, None)
    if header is None:
        raise ValueError(f"{path}: empty file; expected a header row and one row per clip")
    cols = _column_indices(header, str(path))
    for fields in _rows(reader, path):
        if not any(f.strip() for f in fields):
            continue
        where = f"{path}:{reader.line_num}"
        needed = max(i for i in cols.values() if i is not None)
        if len(fields) <= needed:
            raise ValueError(f"{where}: expected at least {needed + 1} fields, got {len(fields)}: {fields}")
        row_split = fields[cols["split"]].strip()
        if row_split not in SPLITS:
            raise ValueError(f"{where}: expected split in {SPLITS}, got {row_split!r}")
        start: float | None = None
        if cols["start"] is not None and fields[cols["start"]].strip():
            try:
                start = float(fields[cols["start"]])
            except ValueError:
                raise ValueError(f"{where}: expected a numeric start time, got {fields[cols['start']]!r}") from None
        name, category = fields[cols["name"]].strip(), fields[cols["category"]].strip()
        if not name or not category:
            raise ValueError(f"{where}: empty name or category in {fields}")
        if split is None or row_split == split:
            rows.append(S4MetaRow(name=name, category=category, split=row_split, start=start))
    if not rows:
        if split is not None:
            raise ValueError(f"split {split!r} holds no clips: {path} has no row with split == {split!r}; expected "
                             f"one row per clip under the header {header}")
        raise ValueError(f"{path}: no clips (only a header); expected one row per clip under the header {header}")
    return rows


def s4_record(root: str | Path, row: S4MetaRow) -> S4Record:
    """Resolve the paths of one clip under ``root`` (the ``s4_data`` folder)."""
    root = Path(root)
    frame_dir = root / "visual_frames" / row.split / row.category / row.name
    mask_dir = root / "gt_masks" / row.split / row.category / row.name
    num_masks = 1 if row.split == "train" else S4_NUM_FRAMES
    return S4Record(
        name=row.name,
        category=row.category,
        split=row.split,
        start=row.start,
        frames=tuple(frame_dir / f"{row.name}_{k}.png" for k in range(1, S4_NUM_FRAMES + 1)),
        audio=root / "audio_wav" / row.split / row.category / f"{row.name}.wav",
        masks=tuple(mask_dir / f"{row.name}_{k}.png" for k in range(1, num_masks + 1)),
    )


def s4_records(
    root: str | Path, meta_csv: str | Path | None = None, split: str | None = None, check_files: bool = True
) -> list[S4Record]:
    """Records of one split (or all) with resolved paths.

    ``root`` is the ``s4_data`` folder; ``meta_csv`` defaults to ``<root>/../s4_meta_data.csv`` (the official
    ``Single-source/`` layout), else ``<root>/s4_meta_data.csv``. With ``check_files`` every file must exist, else
    :class:`MissingFilesError` lists what is absent.
    """
    root = Path(root)
    if meta_csv is None:
        meta_csv = root.parent / "s4_meta_data.csv"
        if not meta_csv.is_file() and (root / "s4_meta_data.csv").is_file():
            meta_csv = root / "s4_meta_data.csv"
    records = [s4_record(root, row) for row in read_s4_metadata(meta_csv, split)]
    if check_files:
        missing = [p for record in records for p in record.missing()]
        if missing:
            raise MissingFilesError(root, missing, sum(len(r.paths()) for r in records))
    return records
