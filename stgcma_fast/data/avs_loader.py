"""The AVSBench-S4 input pipeline (PyAV path): PNG frames + WAV + ground-truth masks -> the one iterator.

:class:`S4Dataset` turns clip ``i`` (an :class:`~stgcma_fast.data.avs.S4Record`) into::

    {"video": (5, 3, C, C) float32, "waveform": (S,) float32, "masks": (N, 1, C, C) float32 in {0, 1},
     "has_mask": (5,) bool, "category": str, "id": clip name, "index": int}

and :class:`S4Loader` (a :class:`~stgcma_fast.data.loader.MediaLoader`: sharding, seeded per-epoch shuffling,
skip-and-report, epoch summaries, the audio front end on the target device) yields per batch::

    {"video": (B, 5, 3, C, C), "audio": (B, 5, 224, 224), "masks": (B, N, 1, C, C), "has_mask": (B, 5) bool,
     "category": list[str], "ids": list[str], "index": (B,) int64}

Conventions:

- Frames: the 5 PNGs ``visual_frames/<split>/<category>/<name>/<name>_<k>.png`` (k = 1..5, one per second),
  decoded to RGB with PyAV, then :func:`~stgcma_fast.data.video.preprocess_frames` in evaluation mode: shorter side
  resized to ``resize_shorter`` (bilinear, antialiased), centre crop ``crop_size``, ``(x / 255 - mean) / std``.
  Default :func:`s4_frame_settings`: 224 / 224 and ImageNet mean/std (what timm's Swin configs and the AVSBench
  baseline use). For square frames (the AVSBench release ships 224 x 224 frames; not verifiable offline) this is the
  whole frame, i.e. the baseline's plain resize. There is no training augmentation (the AVSBench baseline has none).
- Masks: ``gt_masks/...`` PNGs read as grey, binarised as ``value >= 128`` (PIL's ``convert('1')`` threshold, which
  the baseline uses), then given the frames' geometry (nearest-neighbour resize of the shorter side, the same centre
  crop), so mask pixel (y, x) labels frame pixel (y, x). Float32 in {0, 1}, one channel.
  Val / test: all five masks, ``masks`` (B, 5, 1, C, C). Train: AVSBench annotates only the FIRST frame, so
  ``masks`` is (B, 1, 1, C, C); ``has_mask`` (B, 5) says which frames the masks belong to (``[True, False, False,
  False, False]`` for train, all True otherwise): ``pred[has_mask]`` (N_total, 1, C, C) pairs row by row with
  ``masks.flatten(0, 1)`` for any split. A dataset holds ONE split, so every batch has one mask convention.
- Audio: ``audio_wav/<split>/<category>/<name>.wav`` decoded to 16 kHz mono and cut (or padded by at most 0.1 s) to
  5 s, then the front end of :func:`s4_frontend_settings` (the authors' AVS setting, see
  :mod:`stgcma_fast.data.frontend`): Swin 224 mel bins, 4.4 ms shift, T = 224, K = 5 windows of 1.95 s spread over the
  clip (``linspace``), S4 statistics ``AVS_S4_SWIN_MEAN`` / ``AVS_S4_SWIN_STD``.
- Bad media: a missing, empty or corrupt frame / mask PNG or WAV, frames of different sizes, a mask whose size is not
  its frames', or audio shorter than 5 s (beyond the 0.1 s tolerance) make the clip a
  :class:`~stgcma_fast.data.loader.SkippedClip` (clip name, file, reason): skipped and listed in the epoch summary,
  or raised with ``on_error="raise"``. Never zero-filled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from stgcma_fast.data.audio_io import SAMPLE_RATE, MediaError, decode_audio
from stgcma_fast.data.avs import S4_NUM_FRAMES, SPLITS, S4Record, s4_records
from stgcma_fast.data.frontend import AVS_S4_SWIN_MEAN, AVS_S4_SWIN_STD, AudioFrontEnd, AudioFrontEndSettings
from stgcma_fast.data.pipeline import MediaLoader, SkippedClip
from stgcma_fast.data.video import IMAGENET_MEAN, IMAGENET_STD, FrameSettings, preprocess_frames, resized_size

S4_CLIP_SECONDS: float = 5.0
MASK_THRESHOLD: int = 128
_DECODE_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError, ValueError, EOFError)


def s4_frame_settings(**overrides: Any) -> FrameSettings:
    """Frame settings of the S4 pipeline: 5 frames, 224 x 224, ImageNet mean/std (Swin); ``overrides`` replace any."""
    values: dict[str, Any] = {"num_frames": S4_NUM_FRAMES, "crop_size": 224, "resize_shorter": 224,
                              "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    return FrameSettings(**{**values, **overrides})


def s4_frontend_settings(**overrides: Any) -> AudioFrontEndSettings:
    """The authors' AVS audio setting: ``AudioFrontEndSettings.swin(segment_seconds=1.95, num_segments=5,
    mean=AVS_S4_SWIN_MEAN, std=AVS_S4_SWIN_STD)``; ``overrides`` replace any field."""
    values: dict[str, Any] = {"segment_seconds": 1.95, "num_segments": S4_NUM_FRAMES, "mean": AVS_S4_SWIN_MEAN,
                              "std": AVS_S4_SWIN_STD}
    return AudioFrontEndSettings.swin(**{**values, **overrides})


def read_image(path: str | Path, pixel_format: str = "rgb24") -> np.ndarray:
    """Decode one image file (PNG, JPEG, ...) with PyAV: (H, W, 3) uint8 for ``"rgb24"``, (H, W) for ``"gray"``.
    :class:`~stgcma_fast.data.audio_io.MediaError` for a missing, empty or undecodable file."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "file not found")
    if path.stat().st_size == 0:
        raise MediaError(path, "empty file (0 bytes)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(path, "no image stream")
            frame = next(container.decode(video=0), None)
            if frame is None:
                raise MediaError(path, "no image decoded")
            return frame.to_ndarray(format=pixel_format)
    except MediaError:
        raise
    except _DECODE_ERRORS as exc:
        raise MediaError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from exc


def _same_size(images: Sequence[np.ndarray], paths: Sequence[Path], what: str, size: tuple[int, int]) -> None:
    for image, path in zip(images, paths, strict=True):
        if tuple(image.shape[:2]) != size:
            raise MediaError(path, f"{what} is {image.shape[1]} x {image.shape[0]} (W x H), expected the clip's "
                                   f"first frame size {size[1]} x {size[0]}")


def masks_like_frames(masks: torch.Tensor, settings: FrameSettings) -> torch.Tensor:
    """(N, H, W) {0, 1} float masks -> (N, 1, crop, crop) with the geometry :func:`preprocess_frames` gives frames in
    evaluation mode (shorter side resized, nearest-neighbour; the same centre crop)."""
    x = masks.unsqueeze(1)
    size = resized_size(x.shape[-2], x.shape[-1], settings.resize_shorter)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="nearest-exact")
    crop = settings.crop_size
    top, left = (x.shape[-2] - crop + 1) // 2, (x.shape[-1] - crop + 1) // 2  # the rounding of preprocess_frames
    return x[..., top: top + crop, left: left + crop].contiguous()


class S4Dataset(Dataset):
    """AVSBench-S4 clips of ONE split (see the module doc). Index with ``i`` or ``(i, epoch)`` (epoch unused: no
    augmentation).

    Args:
        root: the ``s4_data`` folder (``visual_frames/``, ``audio_wav/``, ``gt_masks/``).
        split: ``train`` (first-frame masks) / ``val`` / ``test`` (five masks).
        frames: frame settings (default :func:`s4_frame_settings`); ``num_frames`` must be 5.
        meta_csv: ``s4_meta_data.csv`` (default as :func:`~stgcma_fast.data.avs.s4_records`).
        records: use these records instead of reading ``meta_csv`` (all of ``split``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        frames: FrameSettings | None = None,
        meta_csv: str | Path | None = None,
        records: Sequence[S4Record] | None = None,
        sample_rate: int = SAMPLE_RATE,
        clip_seconds: float = S4_CLIP_SECONDS,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"expected split in {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.frames = frames or s4_frame_settings()
        if self.frames.num_frames != S4_NUM_FRAMES:
            raise ValueError(f"expected num_frames == {S4_NUM_FRAMES} (S4 clips have 5 frames), got "
                             f"{self.frames.num_frames}")
        self.sample_rate = sample_rate
        self.clip_seconds = clip_seconds
        # files are checked when each clip loads (bad ones are reported and skipped), not here
        self.records = list(records) if records is not None else s4_records(root, meta_csv, split, check_files=False)
        other = sorted({r.split for r in self.records} - {split})
        if other:
            raise ValueError(f"expected records of split {split!r} only, got splits {other} too")

    def __len__(self) -> int:
        return len(self.records)

    def default_frontend(self) -> AudioFrontEnd:
        """The authors' AVS front end (:func:`s4_frontend_settings`) at this dataset's sample rate."""
        return AudioFrontEnd(s4_frontend_settings(sample_rate=self.sample_rate))

    def has_mask(self, index: int) -> torch.Tensor:
        """(5,) bool: which frames of clip ``index`` have a ground-truth mask (train: the first only)."""
        flags = torch.zeros(S4_NUM_FRAMES, dtype=torch.bool)
        flags[: len(self.records[index].masks)] = True
        return flags

    def load(self, index: int, epoch: int = 0) -> dict[str, Any]:
        """Load clip ``index``; raises :class:`MediaError` for bad media."""
        record = self.records[index]
        images = [read_image(path, "rgb24") for path in record.frames]
        size = tuple(images[0].shape[:2])
        _same_size(images, record.frames, "frame", size)
        masks = [read_image(path, "gray") for path in record.masks]
        _same_size(masks, record.masks, "mask", size)
        video = preprocess_frames(torch.from_numpy(np.stack(images)), self.frames)
        binary = torch.from_numpy(np.stack(masks) >= MASK_THRESHOLD).to(torch.float32)
        waveform = decode_audio(record.audio, self.sample_rate, seconds=self.clip_seconds)
        return {"video": video, "waveform": waveform, "masks": masks_like_frames(binary, self.frames),
                "has_mask": self.has_mask(index), "category": record.category, "id": record.name, "index": index}

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | SkippedClip:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        try:
            return self.load(index, epoch)
        except MediaError as exc:
            return SkippedClip(index, self.records[index].name, str(exc.path), exc.reason)


class S4Loader(MediaLoader):
    """The one iterator over AVSBench-S4 batches: a :class:`~stgcma_fast.data.loader.MediaLoader` over an
    :class:`S4Dataset` (arguments as there); the default front end is the authors' AVS setting."""
