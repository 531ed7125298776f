"""The MUSIC-AVQA input pipeline (PyAV path): one item per QUESTION -> the one iterator.

:class:`AvqaDataset` turns question ``i`` into::

    {"video": (M, 3, C, C) float32, "waveform": (S,) float32, "question": (L,) int64, "answer": () int64,
     "qtype": () int64, "video_id": str, "id": question_id (int), "index": int}

and :class:`AvqaLoader` (a :class:`~stgcma_fast.data.loader.MediaLoader`: sharding, seeded per-epoch shuffling of the
questions, skip-and-report, epoch summaries, the audio front end on the target device) yields per batch::

    {"video": (B, M, 3, C, C), "audio": (B, K = M, T, F), "question": (B, L) int64, "answer": (B,) int64,
     "qtype": (B,) int64, "video_id": list[str], "ids": list[int] (question ids), "index": (B,) int64}

Conventions:

- Files: questions from ``<root>/avqa-<split>.json`` (:func:`~stgcma_fast.data.avqa.read_avqa_questions`); videos
  ``<video_dir>/<video_id>.{mp4,mkv,webm,...}`` with ``video_dir`` defaulting to ``<root>/videos`` (the layout
  :func:`~stgcma_fast.data.synth.synth_avqa` writes); prepared audio ``<root>/audio_wav/<video_id>.{wav,flac}`` is
  used when present (``audio_source`` as in :func:`~stgcma_fast.data.loader.resolve_media`), else the video's track.
- Frames: MUSIC-AVQA clips last 60 s; the official code samples one frame per second (60 frames). STG-CMA feeds M
  frames, M = 10 by default (its setup, as for AVE): :func:`~stgcma_fast.data.video.load_frames` samples them
  uniformly, frame m from the middle of the m-th 6 s window (``floor((m + 0.5) * N / M)``). M is configurable
  (:func:`avqa_frame_settings`). Normalisation: CLIP mean/std by default (the ViT backbones); ``train=True`` applies
  video.py's random resized crop + flip, seeded per (seed, epoch, question index).
- Audio: the clip's 60 s waveform at 16 kHz through the front end; K = M one-second segments spread over the clip
  (``linspace``, see :mod:`stgcma_fast.data.frontend`), so segment m pairs with frame m. Default front end: the ViT
  setting (128 bins, T = 102) with AVE's fbank statistics: compute MUSIC-AVQA's own with
  :func:`~stgcma_fast.data.frontend.compute_stats` and pass ``frontend=`` for real training.
- Question tokens: the filled template (:func:`~stgcma_fast.data.avqa.fill_template`) encoded by a
  :class:`~stgcma_fast.data.avqa.QuestionVocab` (default: built from ``<root>/avqa-train.json`` in official order,
  ``<pad>`` = 0, unknown words -> ``<unk>``), padded / cut to ``max_len`` = 14. ``answer``: the official 42-way index
  (:data:`~stgcma_fast.data.avqa.ANSWERS`). ``qtype``: the index of (modality, kind) in
  :data:`~stgcma_fast.data.avqa.QUESTION_TYPES`.
- Bad media: a question whose video (or audio) is missing, corrupt or shorter than the clip length (``check_length``
  with ``min_seconds = clip_seconds``; audio beyond a 0.1 s shortfall) is a
  :class:`~stgcma_fast.data.loader.SkippedClip` with the question id (its ``path`` names the video): skipped and
  listed in the epoch summary, or raised with ``on_error="raise"``. Every question of a bad video is reported.
- Cost: each question decodes its video; a video with q questions is decoded q times per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from stgcma_fast.data.audio_io import SAMPLE_RATE, MediaError, decode_audio
from stgcma_fast.data.avqa import (
    DEFAULT_MAX_LEN,
    QUESTION_TYPES,
    AvqaQuestion,
    QuestionVocab,
    answer_index,
    read_avqa_questions,
)
from stgcma_fast.data.frontend import AudioFrontEnd, AudioFrontEndSettings
from stgcma_fast.data.pipeline import AUDIO_DIR, MediaLoader, SkippedClip, item_generator, resolve_media
from stgcma_fast.data.video import FrameSettings, load_frames

AVQA_CLIP_SECONDS: float = 60.0
AVQA_NUM_FRAMES: int = 10
AVQA_SPLITS: tuple[str, ...] = ("train", "val", "test")
VIDEO_DIR = "videos"


def avqa_frame_settings(num_frames: int = AVQA_NUM_FRAMES, clip_seconds: float = AVQA_CLIP_SECONDS,
                        **overrides: Any) -> FrameSettings:
    """Frame settings of the AVQA pipeline: M = ``num_frames`` (default 10) frames of a ``clip_seconds`` clip (a
    shorter video is reported as too short), 224 x 224, CLIP mean/std; ``overrides`` replace any field."""
    return FrameSettings(**{"num_frames": num_frames, "min_seconds": float(clip_seconds), **overrides})


class AvqaDataset(Dataset):
    """MUSIC-AVQA questions with their video's frames and audio (see the module doc). Index with ``i`` or
    ``(i, epoch)`` (the epoch seeds training augmentation).

    Args:
        root: the folder with ``avqa-{train,val,test}.json`` (and, by default, ``videos/`` and ``audio_wav/``).
        split: ``train`` / ``val`` / ``test``.
        frames: frame settings (default :func:`avqa_frame_settings` with ``clip_seconds``): M, crop, mean/std.
        vocab: question vocabulary (default: built from ``<root>/avqa-train.json``, the official order).
        max_len: question length L in tokens.
        questions: use these questions instead of reading ``avqa-<split>.json``.
        video_dir, audio_dir, audio_source: where the media are (see the module doc).
        train: apply the random resized crop + flip; seed: base seed of that augmentation.
        clip_seconds: clip length (60 s for MUSIC-AVQA): audio is cut to it, shorter media are reported.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        frames: FrameSettings | None = None,
        vocab: QuestionVocab | None = None,
        max_len: int = DEFAULT_MAX_LEN,
        questions: Sequence[AvqaQuestion] | None = None,
        video_dir: str | Path | None = None,
        audio_dir: str | Path | None = None,
        audio_source: str = "auto",
        train: bool = False,
        seed: int = 0,
        sample_rate: int = SAMPLE_RATE,
        clip_seconds: float = AVQA_CLIP_SECONDS,
    ) -> None:
        if split not in AVQA_SPLITS:
            raise ValueError(f"expected split in {AVQA_SPLITS}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.frames = frames or avqa_frame_settings(clip_seconds=clip_seconds)
        self.max_len = max_len
        self.train = train
        self.seed = seed
        self.sample_rate = sample_rate
        self.clip_seconds = clip_seconds
        if questions is None:
            questions = read_avqa_questions(self.root / f"avqa-{split}.json")
        self.questions = list(questions)
        if vocab is None:
            train_questions = self.questions if split == "train" else read_avqa_questions(self.root / "avqa-train.json")
            vocab = QuestionVocab.from_questions(train_questions)
        self.vocab = vocab
        self.answers = [answer_index(q.answer) for q in self.questions]  # an unknown answer fails here, not in a worker
        video_ids = sorted({q.video_id for q in self.questions})
        audio_dir = Path(audio_dir) if audio_dir is not None else self.root / AUDIO_DIR
        files = resolve_media(video_ids, video_dir or self.root / VIDEO_DIR, audio_dir, audio_source)
        self.files: dict[str, tuple[Path, Path | None]] = dict(zip(video_ids, files, strict=True))

    def __len__(self) -> int:
        return len(self.questions)

    def default_frontend(self) -> AudioFrontEnd:
        """The ViT front end with K = M segments (see the module doc for the statistics)."""
        return AudioFrontEnd(AudioFrontEndSettings.vit(num_segments=self.frames.num_frames,
                                                       sample_rate=self.sample_rate))

    def tokens(self, index: int) -> torch.Tensor:
        """(max_len,) int64 tokens of question ``index``."""
        return self.vocab.encode_question(self.questions[index], self.max_len)

    def load(self, index: int, epoch: int = 0) -> dict[str, Any]:
        """Load question ``index``; raises :class:`MediaError` for bad media."""
        question = self.questions[index]
        video_path, audio_path = self.files[question.video_id]
        generator = item_generator(self.seed, epoch, index) if self.train else None
        video = load_frames(video_path, self.frames, train=self.train, generator=generator)
        waveform = decode_audio(audio_path or video_path, self.sample_rate, seconds=self.clip_seconds)
        return {"video": video, "waveform": waveform, "question": self.tokens(index),
                "answer": torch.tensor(self.answers[index], dtype=torch.long),
                "qtype": torch.tensor(QUESTION_TYPES.index(question.type), dtype=torch.long),
                "video_id": question.video_id, "id": question.question_id, "index": index}

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | SkippedClip:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        try:
            return self.load(index, epoch)
        except MediaError as exc:
            return SkippedClip(index, str(self.questions[index].question_id), str(exc.path), exc.reason)


class AvqaLoader(MediaLoader):
    """The one iterator over MUSIC-AVQA batches: a :class:`~stgcma_fast.data.loader.MediaLoader` over an
    :class:`AvqaDataset` (arguments as there; one item per question); the default front end has K = M segments."""
