"""Dataset metadata readers (AVE, AVSBench-S4, MUSIC-AVQA), the batched Kaldi filterbank, the audio front end, and
the input pipelines.

Imported eagerly (no PyAV, no DALI): the metadata readers, ``fbank``, ``frontend``, ``augment``. Everything that needs
PyAV or DALI is importable from here too but loaded on first use (:data:`_LAZY` names the module of each), so
``import stgcma_fast.data`` works without PyAV or DALI: ``audio_io`` (decode / write audio), ``video`` (frames),
``pipeline`` (the shared sampler / collate / skip machinery and iterators), ``ave_loader`` (AVE), ``avs_loader``
(AVSBench-S4), ``avqa_loader`` (MUSIC-AVQA), ``synth`` (synthetic datasets), ``prepare`` (audio extraction,
statistics) and ``dali`` (the DALI path; DALI itself is imported only when a pipeline is built).
"""

from __future__ import annotations

import importlib
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
    AVS_S4_SWIN_MEAN,
    AVS_S4_SWIN_STD,
    AudioFrontEnd,
    AudioFrontEndSettings,
    compute_stats,
)

_LAZY_MODULES: dict[str, tuple[str, ...]] = {
    "audio_io": ("MediaError", "decode_audio", "write_audio"),
    "video": ("CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "FrameSettings", "VideoInfo", "decode_frames",
              "load_frames", "preprocess_frames", "probe_video", "sample_indices"),
    "ave_loader": ("AveDataset", "AveLoader"),
    "pipeline": ("BaseLoader", "DroppedBatch", "EpochSummary", "MediaLoader", "ShardSampler", "SkippedClip", "collate"),
    "avs_loader": ("S4Dataset", "S4Loader", "s4_frame_settings", "s4_frontend_settings"),
    "avqa_loader": ("AvqaDataset", "AvqaLoader", "avqa_frame_settings"),
    "synth": ("SynthAveClip", "SynthS4Clip", "synth_ave", "synth_avqa", "synth_avs_s4"),
    "prepare": ("FbankStats", "PrepareReport", "fbank_stats", "prepare_audio"),
    "dali": ("DaliAveLoader", "dali_status", "make_ave_loader"),
}
_LAZY: dict[str, str] = {name: module for module, names in _LAZY_MODULES.items() for name in names}
"""Public name -> the submodule it is loaded from on first use (these submodules import PyAV)."""

__all__ = [
    "ANSWERS", "AST_MIXUP", "AVE_CATEGORIES", "AVE_FBANK_MEAN", "AVE_FBANK_STD", "AVS_S4_CATEGORIES",
    "AVS_S4_SWIN_MEAN", "AVS_S4_SWIN_STD", "BACKGROUND", "NUM_CLASSES", "QUESTION_TYPES", "AudioFrontEnd",
    "AudioFrontEndSettings", "AveClip", "AvqaQuestion", "FbankConfig", "MissingFilesError", "MixupBatch",
    "QuestionVocab", "S4Record", "answer_index", "category_index", "compute_stats", "fill_template", "group_by_type",
    "kaldi_fbank", "mixup", "one_hot_labels", "per_second_labels", "per_type_accuracy", "read_ave_annotations",
    "read_ave_split", "read_avqa_questions", "read_s4_metadata", "s4_records", "spec_augment", *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
