"""One-off dataset preparation: extract each video's audio to 16 kHz mono WAV/FLAC, and dataset fbank statistics.

``prepare_audio`` decodes the first audio track of every video of an AVE folder with PyAV
(:func:`~stgcma_fast.data.audio_io.decode_audio`), placed on the video's timeline by the streams' timestamps (sample
0 of the file is the sound at the first video frame: a late audio start is preceded by the silence it leaves, an
early one is cut), cuts or pads it to exactly ``seconds * sample_rate`` samples (a shortfall over 0.1 s is reported,
never padded) and writes ``<root>/audio_wav/<VideoID>.wav`` (16-bit PCM) or ``.flac``: the files DALI's
``fn.decoders.audio`` and the PyAV path both read, later without the video, so segment m of the file covers the same
second as frame m. It also checks each video (its timeline against the declared and expected duration, gaps, frame
count: :func:`~stgcma_fast.data.video.check_length`) so bad media are found before training. Every failure is
listed with the video id and the reason in the returned :class:`PrepareReport`.

``fbank_stats`` computes the dataset mean/std of the raw log-mel spectrograms that the normalisation
``(fbank - mean) / (2 * std)`` needs, with :func:`~stgcma_fast.data.frontend.compute_stats` (the authors' / AST
recipe), over the prepared audio of a split (train by default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from stgcma_fast.cli_args import check_existing_dir, check_float, check_int, check_writable_dir
from stgcma_fast.data.audio_io import SAMPLE_RATE, MediaError, decode_audio, write_audio
from stgcma_fast.data.ave import CLIP_SECONDS
from stgcma_fast.data.ave_loader import VIDEO_DIR, ave_items, read_split
from stgcma_fast.data.frontend import AudioFrontEnd, AudioFrontEndSettings, compute_stats
from stgcma_fast.data.pipeline import AUDIO_DIR, VIDEO_SUFFIXES, index_media_folder
from stgcma_fast.data.video import FrameSettings, check_length, probe_video

AUDIO_FORMATS: tuple[str, ...] = ("wav", "flac")


@dataclasses.dataclass
class PrepareReport:
    """What :func:`prepare_audio` did: files written, files already there, and failures (id, path, reason)."""

    written: list[str] = dataclasses.field(default_factory=list)
    existing: list[str] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        head = f"{len(self.written)} written, {len(self.existing)} already present, {len(self.failed)} failed"
        return head + "".join(f"\n  failed {vid} ({path}): {reason}" for vid, path, reason in self.failed)


def _prepare_one(video: Path, target: Path, seconds: float, sample_rate: int, check_video: bool,
                 min_frames: int) -> tuple[str, str, str] | None:
    """Extract one file; returns None or (id, path, reason) of the failure."""
    try:
        if check_video:
            check_length(probe_video(video), FrameSettings(num_frames=min_frames, min_seconds=seconds), video)
        waveform = decode_audio(video, sample_rate, seconds=seconds)
        tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
        write_audio(tmp, waveform, sample_rate)
        tmp.replace(target)  # atomic: an interrupted run never leaves a half-written file under the final name
    except MediaError as exc:
        return video.stem, str(exc.path), exc.reason
    return None


def prepare_audio(
    root: str | Path,
    out_dir: str | Path | None = None,
    audio_format: str = "wav",
    seconds: float = CLIP_SECONDS,
    sample_rate: int = SAMPLE_RATE,
    video_ids: Sequence[str] | None = None,
    overwrite: bool = False,
    workers: int = 1,
    check_video: bool = True,
    min_frames: int = 10,
    progress: Callable[[int, int], None] | None = None,
) -> PrepareReport:
    """Extract the audio of the videos under ``<root>/AVE`` (or of ``video_ids``; default: every id of
    ``Annotations.txt``, else every video in the folder) to ``out_dir`` (default ``<root>/audio_wav``).

    Args:
        audio_format: ``"wav"`` (16-bit PCM) or ``"flac"``.
        seconds: exact output length (AVE: 10 s).
        overwrite: re-extract files that exist. workers: processes (1: in this process).
        check_video: also check the video stream (frame count, truncation); min_frames: the M it must allow.
        progress: called as ``progress(done, total)``.
    """
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"expected audio_format in {AUDIO_FORMATS}, got {audio_format!r}")
    root = check_existing_dir("root", root)  # every argument before anything is written
    if not (root / "Annotations.txt").is_file() and not (root / VIDEO_DIR).is_dir():
        raise FileNotFoundError(f"expected root to be an AVE folder (with Annotations.txt and/or {VIDEO_DIR}/), got "
                                f"'{root}' (it has neither)")
    check_float("seconds", seconds, 0, lo_open=True)
    check_int("sample_rate", sample_rate, 8000, 192000)
    check_int("workers", workers, 1)
    check_int("min_frames", min_frames, 1)
    if isinstance(video_ids, (str, bytes)):
        raise ValueError(f"expected video_ids to be a sequence of ids or None, got {video_ids!r} (a string)")
    out = check_writable_dir("out_dir", out_dir if out_dir is not None else root / AUDIO_DIR)
    videos = index_media_folder(root / VIDEO_DIR, VIDEO_SUFFIXES)
    if video_ids is None:
        annotations = root / "Annotations.txt"
        video_ids = [c.video_id for c in read_split(root, "all")] if annotations.is_file() else sorted(videos)
    report = PrepareReport()
    jobs = []
    for vid in dict.fromkeys(video_ids):  # unique, in order (46 real AVE videos carry two events)
        target = out / f"{vid}.{audio_format}"
        if target.is_file() and not overwrite:
            report.existing.append(vid)
            continue
        video = videos.get(vid)
        if video is None:
            report.failed.append((vid, str(root / VIDEO_DIR / f"{vid}.mp4"), "video file not found"))
            continue
        jobs.append((vid, video, target))
    if jobs:  # created only when there is something to write into it
        out.mkdir(parents=True, exist_ok=True)
    args = [(video, target, seconds, sample_rate, check_video, min_frames) for _, video, target in jobs]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_prepare_one, *zip(*args), chunksize=max(1, len(jobs) // (8 * workers)))
            outcomes = []
            for done, outcome in enumerate(results, start=1):
                outcomes.append(outcome)
                if progress is not None:
                    progress(done, len(jobs))
    else:
        outcomes = []
        for done, a in enumerate(args, start=1):
            outcomes.append(_prepare_one(*a))
            if progress is not None:
                progress(done, len(jobs))
    for (vid, _, _), failure in zip(jobs, outcomes):
        if failure is None:
            report.written.append(vid)
        else:
            report.failed.append((vid, failure[1], failure[2]))
    return report


@dataclasses.dataclass(frozen=True)
class FbankStats:
    """Dataset statistics of raw log-mel spectrograms, and how many clips / failures went into them."""

    mean: float
    std: float
    clips: int
    failed: tuple[tuple[str, str, str], ...] = ()

    def __str__(self) -> str:
        return f"mean {self.mean:.4f} std {self.std:.4f} over {self.clips} clips ({len(self.failed)} failed)"


def fbank_stats(
    root: str | Path,
    split: str = "train",
    settings: AudioFrontEndSettings | None = None,
    audio_dir: str | Path | None = None,
    max_clips: int | None = None,
    per_item: bool = True,
    device: str | torch.device = "cpu",
) -> FbankStats:
    """Mean/std of the un-normalised fbank segments (``AudioFrontEnd.raw_fbank``) of ``split``'s clips.

    Audio comes from the prepared files (default ``<root>/audio_wav``) or, where there is none, the video's track.
    Clips whose audio fails are listed in ``failed`` and left out. ``per_item``: see ``compute_stats``.
    """
    root = check_existing_dir("root", root)  # every argument before any work
    if max_clips is not None:
        check_int("max_clips", max_clips, 1)
    if audio_dir is not None:
        check_existing_dir("audio_dir", audio_dir)
    settings = settings or AudioFrontEndSettings.vit()
    front = AudioFrontEnd(settings)
    clips = read_split(root, split)
    items = ave_items(clips, root / VIDEO_DIR, Path(audio_dir) if audio_dir is not None else root / AUDIO_DIR)
    unique = list({i.video_id: i for i in items}.values())[: max_clips if max_clips is not None else None]
    failed: list[tuple[str, str, str]] = []
    used = 0

    def spectrograms():
        nonlocal used
        for item in unique:
            source = item.audio if item.audio is not None else item.video
            try:
                wave = decode_audio(source, settings.sample_rate, seconds=CLIP_SECONDS)
            except MediaError as exc:
                failed.append((item.video_id, str(exc.path), exc.reason))
                continue
            used += 1
            yield front.raw_fbank(wave.to(device))

    mean, std = compute_stats(spectrograms(), per_item=per_item)
    return FbankStats(mean, std, used, tuple(failed))
