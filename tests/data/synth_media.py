"""Synthetic media shared by the video / loader / DALI / synth tests, built once per test session.

The test modules import :func:`synth_dataset` and call it from their own fixtures with pytest's session-scoped
``tmp_path_factory``; the datasets are cached here by their parameters, so each is encoded once per process however
many modules use it. Clips are tiny (64 px, 4 fps, 10 s) to keep the suite fast on a 2-core CPU machine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from stgcma_fast.data.ave import read_ave_annotations
from stgcma_fast.data.synth import SynthAveClip, ave_clip_media, synth_ave, write_av_clip

SIZE = 64
FPS = 4
_CACHE: dict[tuple, tuple[Path, list[SynthAveClip]]] = {}
_DAMAGED: dict[str, tuple[Path, dict[str, str], list[str]]] = {}


def synth_dataset(factory: pytest.TempPathFactory, codec: str = "vp9", clips: int = 6, seed: int = 0,
                  num_classes: int = 28) -> tuple[Path, list[SynthAveClip]]:
    """(root, clips) of a synthetic AVE set; do not modify it (copy it with :func:`copy_dataset` first)."""
    key = (codec, clips, seed, num_classes)
    if key not in _CACHE:
        root = factory.mktemp(f"ave_{codec}_{clips}_{seed}")
        _CACHE[key] = (root, synth_ave(root, clips, codec=codec, seed=seed, size=SIZE, fps=FPS,
                                       num_classes=num_classes))
    return _CACHE[key]


def copy_dataset(root: Path, dest: Path) -> Path:
    """A private copy of a synthetic dataset that a test may damage."""
    shutil.copytree(root, dest)
    return dest


def corrupt_middle(path: Path) -> None:
    """Overwrite a third of the file from its middle with a constant byte (the demuxer loses sync there)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    data[start: start + len(data) // 3] = bytes([7]) * (len(data) // 3)
    path.write_bytes(bytes(data))


def truncate(path: Path, fraction: float = 0.5) -> None:
    """Keep only the first ``fraction`` of the file's bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def garbage(path: Path, size: int = 4000) -> None:
    """Replace the file by random bytes (no container can open it)."""
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())


def damaged_dataset(factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], list[str]]:
    """A copy of the 6-clip VP9 set with 4 bad clips: missing, garbage, truncated, too short (4 s).

    Returns (root, {bad id: expected reason fragment}, good ids in annotation order).
    """
    if "vp9" not in _DAMAGED:
        root = copy_dataset(synth_dataset(factory, "vp9", clips=6)[0], factory.mktemp("damaged") / "ave")
        clips = read_ave_annotations(root / "Annotations.txt")
        video = {c.video_id: root / "AVE" / f"{c.video_id}.mkv" for c in clips}
        bad = {clips[0].video_id: "file not found", clips[2].video_id: "cannot open video",
               clips[3].video_id: "truncated or corrupt", clips[5].video_id: "too short"}
        video[clips[0].video_id].unlink()
        garbage(video[clips[2].video_id])
        truncate(video[clips[3].video_id])
        frame, _, audio, _, _ = ave_clip_media(1, 0, 4, np.random.default_rng(0), size=SIZE, fps=FPS, seconds=4)
        write_av_clip(video[clips[5].video_id], frame, 4 * FPS, audio, fps=FPS, codec="vp9")
        _DAMAGED["vp9"] = (root, bad, [c.video_id for c in clips if c.video_id not in bad])
    return _DAMAGED["vp9"]
