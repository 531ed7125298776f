"""Compatibility module: the AVE dataset and the shared pipeline used to live here together.

The shared machinery is in :mod:`stgcma_fast.data.pipeline`, the AVE dataset and loader in
:mod:`stgcma_fast.data.ave_loader`; the names below keep ``from stgcma_fast.data.loader import ...`` working.
"""

from stgcma_fast.data.ave_loader import SPLIT_FILES, VIDEO_DIR, AveDataset, AveItem, AveLoader, ave_items, read_split
from stgcma_fast.data.pipeline import (
    AUDIO_DIR,
    AUDIO_SOURCES,
    AUDIO_SUFFIXES,
    EMPTIED_ELSEWHERE,
    EMPTIED_HERE,
    ON_ERROR,
    VIDEO_SUFFIXES,
    BaseLoader,
    DroppedBatch,
    EpochSummary,
    MediaLoader,
    ShardSampler,
    SkippedClip,
    collate,
    default_rank_world,
    index_media_folder,
    item_generator,
    logger,
    resolve_media,
)

__all__ = [
    "AUDIO_DIR", "AUDIO_SOURCES", "AUDIO_SUFFIXES", "EMPTIED_ELSEWHERE", "EMPTIED_HERE", "ON_ERROR", "SPLIT_FILES",
    "VIDEO_DIR", "VIDEO_SUFFIXES", "AveDataset", "AveItem", "AveLoader", "BaseLoader", "DroppedBatch", "EpochSummary",
    "MediaLoader", "ShardSampler", "SkippedClip", "ave_items", "collate", "default_rank_world", "index_media_folder",
    "item_generator", "logger", "read_split", "resolve_media",
]
