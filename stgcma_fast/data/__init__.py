"""Dataset metadata readers (AVE, AVSBench-S4, MUSIC-AVQA), the batched Kaldi filterbank and the audio front end.

``decode_audio``, ``write_audio`` and ``MediaError`` live in :mod:`stgcma_fast.data.audio_io`, which needs PyAV;
they are importable from here too but loaded on first use, so ``import stgcma_fast.data`` works without PyAV.
"""

from __future__ import annotations

from typing import Any

from stgcma_fast.data.augment import AST_MIXUP, MixupBatch, mixup, spec_augment
from stgcma_fast.data.ave import (
    AVE_CATEGORIES,
    BACKGROUND,
    NUM_CLASSES,
    AveClip,
    category_index,
    one_hot_labels,
    per_second_labels,
    read_ave_annotations,
    read_ave_split,
)
from stgcma_fast.data.avqa import (
    ANSWERS,
    QUESTION_TYPES,
    AvqaQuestion,
    QuestionVocab,
    answer_index,
    fill_template,
    group_by_type,
    per_type_accuracy,
    read_avqa_questions,
)
from stgcma_fast.data.avs import AVS_S4_CATEGORIES, MissingFilesError, S4Record, read_s4_metadata, s4_records
from stgcma_fast.data.fbank import FbankConfig, kaldi_fbank
from stgcma_fast.data.frontend import (
    AVE_FBANK_MEAN,
    AVE_FBANK_STD,
    AudioFrontEnd,
    AudioFrontEndSettings,
    compute_stats,
)

_AUDIO_IO = ("MediaError", "decode_audio", "write_audio")

__all__ = [
    "ANSWERS", "AST_MIXUP", "AVE_CATEGORIES", "AVE_FBANK_MEAN", "AVE_FBANK_STD", "AVS_S4_CATEGORIES", "BACKGROUND",
    "NUM_CLASSES", "QUESTION_TYPES", "AudioFrontEnd", "AudioFrontEndSettings", "AveClip", "AvqaQuestion",
    "FbankConfig", "MissingFilesError", "MixupBatch", "QuestionVocab", "S4Record", "answer_index", "category_index",
    "compute_stats", "fill_template", "group_by_type", "kaldi_fbank", "mixup", "one_hot_labels", "per_second_labels",
    "per_type_accuracy", "read_ave_annotations", "read_ave_split", "read_avqa_questions", "read_s4_metadata",
    "s4_records", "spec_augment", *_AUDIO_IO,
]


def __getattr__(name: str) -> Any:
    if name in _AUDIO_IO:
        from stgcma_fast.data import audio_io

        return getattr(audio_io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
