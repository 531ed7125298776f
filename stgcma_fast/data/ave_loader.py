"""AVE on the shared pipeline (:mod:`stgcma_fast.data.pipeline`): the clips of a split, their files, the
:class:`AveDataset` and the :class:`AveLoader` a training loop iterates.

:class:`AveDataset` turns clip ``i`` into ``{video (M, 3, H, W), waveform (S,), labels (10,), id, index}``: frames
from :func:`stgcma_fast.data.video.load_frames`, audio from the prepared 16 kHz WAV/FLAC (``stgcma-fast prepare``)
or, when there is none, decoded from the video's own track.

:class:`AveLoader` yields, per batch, on ``device``::

    {"video": (B, M, 3, H, W) float32, "audio": (B, K, T, F) float32, "labels": (B, 10) int64,
     "ids": list[str] (B), "index": (B,) int64}

(the DALI path, :mod:`stgcma_fast.data.dali`, yields the same dicts). Sharding, determinism, bad media and DDP:
see :mod:`stgcma_fast.data.pipeline`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from stgcma_fast.data.audio_io import SAMPLE_RATE, MediaError, decode_audio
from stgcma_fast.data.ave import CLIP_SECONDS, AveClip, read_ave_split
from stgcma_fast.data.pipeline import AUDIO_DIR, MediaLoader, SkippedClip, item_generator, resolve_media
from stgcma_fast.data.video import FrameSettings, load_frames

SPLIT_FILES: dict[str, str] = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt",
                               "all": "Annotations.txt"}
VIDEO_DIR = "AVE"


@dataclasses.dataclass(frozen=True)
class AveItem:
    """One clip to load: its position in the split, id, labels and files (``audio`` None: decode the video's)."""

    index: int
    video_id: str
    labels: tuple[int, ...]
    video: Path
    audio: Path | None



def ave_items(
    clips: Sequence[AveClip],
    video_dir: str | Path,
    audio_dir: str | Path | None = None,
    audio_source: str = "auto",
) -> list[AveItem]:
    """Resolve the files of ``clips`` with :func:`resolve_media` (same arguments)."""
    files = resolve_media([clip.video_id for clip in clips], video_dir, audio_dir, audio_source)
    return [AveItem(i, clip.video_id, clip.labels, video, audio)
            for i, (clip, (video, audio)) in enumerate(zip(clips, files, strict=True))]


def read_split(root: str | Path, split: str) -> list[AveClip]:
    """Clips of ``split`` (train / val / test / all) from ``<root>/<trainSet|valSet|testSet|Annotations>.txt``."""
    if split not in SPLIT_FILES:
        raise ValueError(f"expected split in {sorted(SPLIT_FILES)}, got {split!r}")
    return read_ave_split(root, split)  # a split without clips is an error naming the split and its file



# ----------------------------------------------------------------------------------------------- dataset


class AveDataset(Dataset):
    """AVE clips decoded with PyAV. Index with ``i`` or ``(i, epoch)`` (the epoch seeds training augmentation).

    Args:
        root: the ``AVE_Dataset`` folder (``AVE/`` videos + annotation files), or any folder when ``clips`` is given.
        split: ``train`` / ``val`` / ``test`` / ``all``.
        frames: frame settings (M, crop, mean/std, length checks).
        train: apply the random resized crop + flip (see :mod:`stgcma_fast.data.video`).
        audio_dir: prepared audio (default ``<root>/audio_wav``); audio_source: see :func:`ave_items`.
        clips: use these clips instead of reading ``split``.
        seed: base seed of the training augmentation.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        frames: FrameSettings | None = None,
        train: bool = False,
        audio_dir: str | Path | None = None,
        audio_source: str = "auto",
        clips: Sequence[AveClip] | None = None,
        seed: int = 0,
        sample_rate: int = SAMPLE_RATE,
        clip_seconds: float = CLIP_SECONDS,
        video_dir: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.frames = frames or FrameSettings(min_seconds=float(clip_seconds))
        self.train = train
        self.seed = seed
        self.sample_rate = sample_rate
        self.clip_seconds = clip_seconds
        if clips is not None:
            clips = list(clips)
            if not clips:
                raise ValueError(f"expected at least one clip, got an empty clips list (split {split!r} of {root})")
        else:
            clips = read_split(self.root, split)  # an empty split file is an error naming it
        audio_dir = Path(audio_dir) if audio_dir is not None else self.root / AUDIO_DIR
        self.items = ave_items(clips, video_dir or self.root / VIDEO_DIR, audio_dir, audio_source)

    def __len__(self) -> int:
        return len(self.items)

    def generator(self, index: int, epoch: int) -> torch.Generator:
        """The augmentation generator of clip ``index`` in ``epoch``."""
        return item_generator(self.seed, epoch, index)

    def load(self, index: int, epoch: int = 0) -> dict[str, Any]:
        """Load clip ``index``; raises :class:`MediaError` for bad media."""
        item = self.items[index]
        generator = self.generator(index, epoch) if self.train else None
        video = load_frames(item.video, self.frames, train=self.train, generator=generator)
        source = item.audio if item.audio is not None else item.video
        waveform = decode_audio(source, self.sample_rate, seconds=self.clip_seconds)
        return {"video": video, "waveform": waveform, "labels": torch.tensor(item.labels, dtype=torch.long),
                "id": item.video_id, "index": index}

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | SkippedClip:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        try:
            return self.load(index, epoch)
        except MediaError as exc:
            return SkippedClip(index, self.items[index].video_id, str(exc.path), exc.reason)



class AveLoader(MediaLoader):
    """The one iterator over AVE batches: a :class:`MediaLoader` over an :class:`AveDataset` (see the module doc)."""
