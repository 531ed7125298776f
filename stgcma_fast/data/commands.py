"""Data subcommands of the ``stgcma-fast`` command line: ``synth``, ``prepare``, ``stats``.

``stgcma_fast.cli`` registers them with :func:`add_data_commands`; each handler takes the parsed
``argparse.Namespace`` and returns an exit code (0 ok, 1 some media failed). Every value and path is checked while
parsing (the :mod:`stgcma_fast.cli_args` validators) or at the top of the handler (``UsageError``), before anything
is read or written; ``stgcma_fast.cli.main`` turns those errors into one line and exit code 2::

    stgcma-fast synth ave --out DIR --clips N [--codec h264|vp9|vp9-webm] [--seed S] [--size PX] [--fps F]
    stgcma-fast synth avs-s4 --out DIR --clips N [--seed S] [--size PX]
    stgcma-fast synth avqa --out DIR --videos N [--codec ...] [--seed S]
    stgcma-fast prepare ROOT [--out-dir DIR] [--format wav|flac] [--workers W] [--overwrite] [--no-check-video]
    stgcma-fast stats ROOT [--split train] [--setting vit|swin] [--max-clips N] [--json FILE]

Heavy modules (PyAV, the writers) are imported inside the handlers, so building the parser costs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from stgcma_fast.cli_args import (
    UsageError,
    existing_dir,
    int_range,
    nonneg_int,
    output_file,
    positive_float,
    positive_int,
    probability,
    writable_dir,
)

NUM_AVE_CATEGORIES = 28
"""AVE's event classes (``synth ave --num-classes`` takes 1..28)."""
SYNTH_SIZE = (16, 4096)
"""Frame sides ``synth`` accepts (``synth_ave`` / ``synth_avqa`` also need them even, for yuv420p)."""


def _progress(label: str, quiet: bool) -> Any:
    if quiet:
        return None

    def report(done: int, total: int) -> None:
        end = "\n" if done == total else ""
        print(f"\r{label}: {done}/{total}", end=end, file=sys.stderr, flush=True)

    return report


def synth_command(args: argparse.Namespace) -> int:
    """``stgcma-fast synth {ave,avs-s4,avqa}``."""
    from stgcma_fast.data import synth

    out = Path(args.out)
    if args.dataset == "ave":
        clips = synth.synth_ave(out, args.clips, codec=args.codec, seed=args.seed, size=args.size, fps=args.fps,
                                num_classes=args.num_classes, distractor_prob=args.distractor_prob,
                                progress=_progress("synth ave", args.quiet))
        counts = {s: sum(c.split == s for c in clips) for s in ("train", "val", "test")}
        print(f"wrote {len(clips)} AVE clips ({args.codec}) to {out}: {counts}")
    elif args.dataset == "avs-s4":
        clips = synth.synth_avs_s4(out, args.clips, seed=args.seed, size=args.size)
        print(f"wrote {len(clips)} AVSBench-S4 clips to {out} (s4_data/ and s4_meta_data.csv)")
    else:
        questions = synth.synth_avqa(out, args.videos, codec=args.codec, seed=args.seed, size=args.size, fps=args.fps)
        counts = {s: len(q) for s, q in questions.items()}
        print(f"wrote {args.videos} MUSIC-AVQA videos to {out}/videos and questions {counts}")
    return 0


def ave_folder(text: str) -> Path:
    """argparse ``type=``: an existing folder holding the AVE annotation file and/or the ``AVE/`` video folder."""
    from stgcma_fast.data.loader import VIDEO_DIR

    root = existing_dir(text)
    if not (root / "Annotations.txt").is_file() and not (root / VIDEO_DIR).is_dir():
        raise argparse.ArgumentTypeError(f"expected an AVE folder (with Annotations.txt and/or {VIDEO_DIR}/), got "
                                          f"{text!r} (it has neither)")
    return root


def prepare_command(args: argparse.Namespace) -> int:
    """``stgcma-fast prepare ROOT``: extract audio to WAV/FLAC and check every video."""
    from stgcma_fast.data.prepare import prepare_audio

    report = prepare_audio(args.root, args.out_dir, args.format, seconds=args.seconds, overwrite=args.overwrite,
                           workers=args.workers, check_video=not args.no_check_video, min_frames=args.frames,
                           progress=_progress("prepare", args.quiet))
    print(report)
    return 1 if report.failed else 0


def _write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def stats_command(args: argparse.Namespace) -> int:
    """``stgcma-fast stats ROOT``: fbank mean/std of a split."""
    from stgcma_fast.data.frontend import AudioFrontEndSettings
    from stgcma_fast.data.loader import SPLIT_FILES
    from stgcma_fast.data.prepare import fbank_stats

    name = SPLIT_FILES[args.split]
    if not (Path(args.root) / name).is_file():
        raise UsageError(f"argument root: expected an AVE folder holding {name} (--split {args.split}), got "
                         f"'{args.root}' (no {name})")
    settings = AudioFrontEndSettings.vit() if args.setting == "vit" else AudioFrontEndSettings.swin()
    stats = fbank_stats(args.root, args.split, settings, args.audio_dir, args.max_clips)
    print(stats)
    for vid, path, reason in stats.failed:
        print(f"  failed {vid} ({path}): {reason}")
    if args.json:
        _write_text_atomic(args.json, json.dumps({"mean": stats.mean, "std": stats.std, "clips": stats.clips,
                                                  "split": args.split, "setting": args.setting}, indent=2))
    return 1 if stats.failed else 0


def add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``synth``, ``prepare`` and ``stats`` on ``subparsers`` (from ``parser.add_subparsers()``)."""
    synth = subparsers.add_parser("synth", help="write a synthetic dataset in a real dataset's exact layout")
    kinds = synth.add_subparsers(dest="dataset", required=True)
    even_size = int_range(*SYNTH_SIZE, even=True)
    size_help = f"frame side in pixels, {SYNTH_SIZE[0]}..{SYNTH_SIZE[1]}"
    ave = kinds.add_parser("ave", help="AVE: videos with audio, Annotations.txt and the split files")
    ave.add_argument("--out", type=writable_dir, required=True, help="output folder (the AVE_Dataset folder)")
    ave.add_argument("--clips", type=positive_int, required=True, help="number of 10 s clips")
    ave.add_argument("--codec", choices=("h264", "vp9", "vp9-webm"), default="h264",
                     help="h264: .mp4 + AAC; vp9: .mkv + Opus (DALI's CPU decoder reads VP9); vp9-webm: .webm")
    ave.add_argument("--size", type=even_size, default=128, help=size_help + ", even")
    ave.add_argument("--fps", type=positive_int, default=8)
    ave.add_argument("--num-classes", type=int_range(1, NUM_AVE_CATEGORIES), default=NUM_AVE_CATEGORIES,
                     help=f"use only the first N of the {NUM_AVE_CATEGORIES} categories")
    ave.add_argument("--distractor-prob", type=probability, default=0.0,
                     help="chance that a background second shows the motif silently or plays the sound unseen")
    s4 = kinds.add_parser("avs-s4", help="AVSBench-S4: frames, wavs, masks, s4_meta_data.csv")
    s4.add_argument("--out", type=writable_dir, required=True, help="output folder (the Single-source folder)")
    s4.add_argument("--clips", type=positive_int, required=True)
    s4.add_argument("--size", type=int_range(*SYNTH_SIZE), default=64, help=size_help)
    avqa = kinds.add_parser("avqa", help="MUSIC-AVQA: videos and avqa-{train,val,test}.json")
    avqa.add_argument("--out", type=writable_dir, required=True)
    avqa.add_argument("--videos", type=positive_int, required=True)
    avqa.add_argument("--codec", choices=("h264", "vp9", "vp9-webm"), default="h264")
    avqa.add_argument("--size", type=even_size, default=128, help=size_help + ", even")
    avqa.add_argument("--fps", type=positive_int, default=8)
    for p in (ave, s4, avqa):
        p.add_argument("--seed", type=nonneg_int, default=0)
        p.add_argument("--quiet", action="store_true", help="no progress line")
        p.set_defaults(func=synth_command)

    prep = subparsers.add_parser("prepare", help="extract each video's audio to 16 kHz mono WAV/FLAC; check videos")
    prep.add_argument("root", type=ave_folder, help="the AVE_Dataset folder (AVE/ videos, Annotations.txt)")
    prep.add_argument("--out-dir", type=writable_dir, default=None, help="default: ROOT/audio_wav")
    prep.add_argument("--format", choices=("wav", "flac"), default="wav")
    prep.add_argument("--seconds", type=positive_float, default=10.0, help="exact output length")
    prep.add_argument("--frames", type=positive_int, default=10, help="frames M each video must allow")
    prep.add_argument("--workers", type=positive_int, default=1)
    prep.add_argument("--overwrite", action="store_true")
    prep.add_argument("--no-check-video", action="store_true", help="skip the video stream checks")
    prep.add_argument("--quiet", action="store_true")
    prep.set_defaults(func=prepare_command)

    stats = subparsers.add_parser("stats", help="dataset mean/std of the fbank features (for normalisation)")
    stats.add_argument("root", type=existing_dir, help="the AVE_Dataset folder")
    stats.add_argument("--split", choices=("train", "val", "test", "all"), default="train")
    stats.add_argument("--setting", choices=("vit", "swin"), default="vit")
    stats.add_argument("--audio-dir", type=existing_dir, default=None, help="prepared audio (default ROOT/audio_wav)")
    stats.add_argument("--max-clips", type=positive_int, default=None)
    stats.add_argument("--json", type=output_file, default=None, help="also write the result to this JSON file")
    stats.set_defaults(func=stats_command)
