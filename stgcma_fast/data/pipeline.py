"""The input pipeline every task shares (PyAV path): a sharded seeded sampler, the collate and skip-and-report
machinery, and the iterators :class:`BaseLoader` / :class:`MediaLoader`.

The task datasets plug into it: AVE (:mod:`stgcma_fast.data.ave_loader`), AVSBench-S4
(:mod:`stgcma_fast.data.avs_loader`), MUSIC-AVQA (:mod:`stgcma_fast.data.avqa_loader`); the DALI path
(:mod:`stgcma_fast.data.dali`) reuses :class:`BaseLoader`. A dataset for :class:`MediaLoader` has ``frames``
(:class:`FrameSettings`, M), takes ``(index, epoch)`` keys, returns an item dict (``"id"``, ``"index"``,
``"waveform"`` and tensors of equal shapes across items) or a :class:`SkippedClip`, and may offer
``default_frontend()``. Bad media (missing, empty, corrupt, too short) never raise inside a worker: the item comes
back as a :class:`SkippedClip` naming the clip id, the file and the reason.

Per batch a loader yields, on ``device``, the stacked item tensors plus ``"ids"`` (list[str]) and ``"index"`` (B,)
int64; ``"audio"`` (B, K, T, F) is computed AFTER the batch reaches the device, by the batched ``AudioFrontEnd``
(so on a GPU the filterbank runs there); pass ``frontend=None`` to get ``"waveform": (B, S)`` instead.

- Sharding: :class:`ShardSampler` gives rank ``r`` of ``w`` the positions ``r, r + w, ...`` of the epoch's order;
  with ``pad=True`` (the default when ``world_size > 1``, as ``DistributedSampler``) the order is first padded by
  repeating its head so every rank gets the same count; ``pad=False`` keeps the shards disjoint.
- Determinism: the epoch's order is ``torch.randperm(n, generator=seed + epoch)``; training augmentation of clip
  ``i`` in epoch ``e`` draws from a generator seeded with ``(seed, e, i)``; so batches do not depend on the number of
  workers. The epoch advances by one after each complete pass, or is set with :meth:`AveLoader.set_epoch`.
- Bad media: ``on_error="skip"`` (default) drops the clip from its batch (never zero-filled; a batch left empty is
  not yielded) and records it; ``on_error="raise"`` raises :class:`~stgcma_fast.data.audio_io.MediaError` naming the
  clip id, the file and the reason. Each pass ends with an :class:`EpochSummary` (``loader.last_summary``), logged
  as a warning listing every skipped clip and every dropped batch.
- DDP: a skipped clip only shrinks its batch, but a batch whose clips are ALL bad cannot be yielded; alone, that rank
  would take one step fewer and DDP's gradient all-reduce would hang. So with ``sync_ranks`` (default: on when a
  ``torch.distributed`` group of more than one process is initialised, the loader shards over it and pads) every
  rank contributes the number of clips its raw batch loaded to one ``all_reduce(MIN)`` of a tiny int64 tensor (on the
  CPU for gloo, on the current CUDA device for nccl) and, when any rank's batch is empty, ALL ranks skip that step:
  the others' batches are dropped and recorded in the summary (``dropped``: "batch emptied on another rank"). Every
  rank then yields the same number of batches, at the cost of one tiny collective per batch (plus one at the end of
  the pass, which turns unequal batch counts into an error instead of a hang; with nccl, reading the count back also
  waits for the work already queued on the GPU). Padded shards have the same number of raw batches on every rank;
  unpadded ones (``pad=False``) may not, so the collective could hang: ``sync_ranks`` is off for them by default and
  refused when asked for. ``on_error="raise"`` raises on the rank that met the bad clip, as without DDP.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from stgcma_fast.data.audio_io import MediaError
from stgcma_fast.data.frontend import AudioFrontEnd

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mkv", ".webm", ".avi", ".mov")
AUDIO_SUFFIXES: tuple[str, ...] = (".wav", ".flac")
ON_ERROR: tuple[str, ...] = ("skip", "raise")
AUDIO_SOURCES: tuple[str, ...] = ("auto", "wav", "video")
AUDIO_DIR = "audio_wav"


# ----------------------------------------------------------------------------------------------- items and files


@dataclasses.dataclass(frozen=True)
class SkippedClip:
    """An item that could not be loaded: which (index, id), which file, and why. ``video_id`` is the item's id: the
    AVE video id, the S4 clip name, or the MUSIC-AVQA question id (as a string; the file path names the video)."""

    index: int
    video_id: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.video_id} ({self.path}): {self.reason}"

    def error(self) -> MediaError:
        return MediaError(self.path, f"clip {self.video_id!r} (index {self.index}): {self.reason}")



def index_media_folder(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """stem -> file for the files of ``folder`` with one of ``suffixes`` (the first suffix in order wins)."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    rank = {s: i for i, s in enumerate(suffixes)}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path = Path(entry.path)
        suffix = path.suffix.lower()
        if suffix in rank and (path.stem not in found or rank[suffix] < rank[found[path.stem].suffix.lower()]):
            found[path.stem] = path
    return found


def resolve_media(
    video_ids: Sequence[str],
    video_dir: str | Path,
    audio_dir: str | Path | None = None,
    audio_source: str = "auto",
) -> list[tuple[Path, Path | None]]:
    """(video, audio) files of each id: ``<video_dir>/<id>.{mp4,mkv,webm,...}`` and ``<audio_dir>/<id>.{wav,flac}``.

    ``audio_source``: ``"wav"`` requires the prepared file (a missing one is reported when the item loads),
    ``"video"`` always decodes the video's audio track (audio None), ``"auto"`` uses the prepared file when it exists.
    A video that is absent keeps the path ``<id>.mp4`` and is reported when it loads.
    """
    if audio_source not in AUDIO_SOURCES:
        raise ValueError(f"expected audio_source in {AUDIO_SOURCES}, got {audio_source!r}")
    if audio_source == "wav" and audio_dir is None:
        raise ValueError("audio_source='wav' needs audio_dir (the folder `stgcma-fast prepare` wrote)")
    videos = index_media_folder(Path(video_dir), VIDEO_SUFFIXES)
    audios = index_media_folder(Path(audio_dir), AUDIO_SUFFIXES) if audio_dir is not None else {}
    files: list[tuple[Path, Path | None]] = []
    for vid in video_ids:
        video = videos.get(vid, Path(video_dir) / f"{vid}.mp4")
        if audio_source == "video":
            audio = None
        elif audio_source == "wav":
            audio = audios.get(vid, Path(audio_dir) / f"{vid}.wav")
        else:
            audio = audios.get(vid)
        files.append((video, audio))
    return files



# ----------------------------------------------------------------------------------------------- items


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The augmentation generator of item ``index`` in ``epoch``: fixed by the triple, whatever the worker count."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))



def collate(items: Sequence[dict[str, Any] | SkippedClip]) -> dict[str, Any]:
    """Stack the loaded items; skipped ones go to ``"skipped"`` (a batch may hold only skipped clips).

    ``"id"`` becomes the list ``"ids"``, ``"index"`` a (B,) int64 tensor; every other key keeps its name: tensors are
    stacked (B, ...), anything else (strings) becomes a list."""
    good = [x for x in items if not isinstance(x, SkippedClip)]
    batch: dict[str, Any] = {"skipped": [x for x in items if isinstance(x, SkippedClip)],
                             "ids": [x["id"] for x in good]}
    if good:
        batch["index"] = torch.tensor([x["index"] for x in good], dtype=torch.long)
        for key in good[0]:
            if key in ("id", "index"):
                continue
            values = [x[key] for x in good]
            if isinstance(values[0], torch.Tensor):
                shapes = {tuple(v.shape) for v in values}
                if len(shapes) > 1:
                    raise ValueError(f"expected {key!r} of one shape across the batch, got {sorted(shapes)} for ids "
                                     f"{batch['ids']}")
                batch[key] = torch.stack(values)
            else:
                batch[key] = values
    return batch


# ----------------------------------------------------------------------------------------------- sampler


def default_rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised ``torch.distributed`` process group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardSampler(Sampler):
    """Yields ``(index, epoch)`` pairs: this rank's share of the epoch's (shuffled) order. See the module doc."""

    def __init__(self, num_items: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                 pad: bool | None = None) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"expected 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.num_items, self.rank, self.world_size = num_items, rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.pad = world_size > 1 if pad is None else pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int | None = None) -> list[int]:
        """The whole epoch's order (before sharding and padding)."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return list(range(self.num_items))
        return torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()

    def indices(self, epoch: int | None = None) -> list[int]:
        """This rank's indices for ``epoch``."""
        order = self.order(epoch)
        if self.pad and order and len(order) % self.world_size:
            extra = self.world_size - len(order) % self.world_size
            order = order + (order * (extra // len(order) + 1))[:extra]
        return order[self.rank:: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(i, epoch) for i in self.indices(epoch)])

    def __len__(self) -> int:
        if self.pad:
            return -(-self.num_items // self.world_size)
        return len(range(self.rank, self.num_items, self.world_size))


# ----------------------------------------------------------------------------------------------- iterator


EMPTIED_HERE = "every clip failed to load"
EMPTIED_ELSEWHERE = "batch emptied on another rank"


@dataclasses.dataclass(frozen=True)
class DroppedBatch:
    """A raw batch that was not yielded: its 0-based position in the pass (the same on every rank), the ids it
    had loaded on this rank (none when all its clips failed here) and why (:data:`EMPTIED_HERE` or
    :data:`EMPTIED_ELSEWHERE`)."""

    step: int
    ids: tuple[str, ...]
    reason: str

    def __str__(self) -> str:
        ids = f" ({len(self.ids)} loaded clips dropped: {', '.join(self.ids)})" if self.ids else ""
        return f"batch {self.step}: {self.reason}{ids}"


@dataclasses.dataclass
class EpochSummary:
    """What one pass over a shard loaded, skipped and dropped. ``loaded`` and ``batches`` count what was yielded;
    ``dropped`` lists the raw batches that were not (with ``sync_ranks``, the same steps on every rank)."""

    epoch: int
    rank: int
    world_size: int
    loaded: int = 0
    batches: int = 0
    skipped: list[SkippedClip] = dataclasses.field(default_factory=list)
    dropped: list[DroppedBatch] = dataclasses.field(default_factory=list)

    @property
    def dropped_batches(self) -> int:
        return len(self.dropped)

    def __str__(self) -> str:
        head = (f"epoch {self.epoch} (rank {self.rank}/{self.world_size}): {self.loaded} clips in {self.batches} "
                f"batches, {len(self.skipped)} skipped")
        if self.dropped:
            head += f", {self.dropped_batches} batches dropped"
        return (head + "".join(f"\n  skipped {s}" for s in self.skipped)
                + "".join(f"\n  dropped {d}" for d in self.dropped))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class BaseLoader:
    """What every iterator shares (AVE, S4, AVQA; PyAV or DALI): sampler, epoch, skip handling, epoch summaries,
    device transfer, audio front end. Subclasses implement :meth:`_raw_batches` (collated CPU batches of
    :func:`collate`'s format). ``frontend="default"`` takes ``dataset.default_frontend()`` when the dataset has one,
    else ``AudioFrontEnd()`` (the ViT setting). ``sync_ranks``: keep every DDP rank's step count equal (module doc);
    None: on when ``torch.distributed`` is initialised with more than one process, this loader shards over all of
    them and pads; True without an initialised group, or with ``pad=False``, is a ``ValueError``."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        device: str | torch.device = "cpu",
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        on_error: str = "skip",
        frontend: AudioFrontEnd | None | str = "default",
        pad: bool | None = None,
        sync_ranks: bool | None = None,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"expected on_error in {ON_ERROR}, got {on_error!r}")
        if batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {batch_size}")
        if rank is None or world_size is None:
            rank, world_size = default_rank_world()
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.on_error = on_error
        if isinstance(frontend, str):
            if frontend != "default":
                raise ValueError(f"expected frontend 'default', None or an AudioFrontEnd, got {frontend!r}")
            make = getattr(dataset, "default_frontend", None)
            frontend = make() if make is not None else AudioFrontEnd()
        self.frontend = frontend
        if self.frontend is not None and self.frontend.settings.num_segments != dataset.frames.num_frames:
            raise ValueError(f"expected audio segments K == video frames M, got K = "
                             f"{self.frontend.settings.num_segments} and M = {dataset.frames.num_frames}")
        self.sampler = ShardSampler(len(dataset), rank, world_size, shuffle, seed, pad)
        self.sync_ranks = self._resolve_sync_ranks(sync_ranks)
        self.summaries: list[EpochSummary] = []

    def _resolve_sync_ranks(self, sync_ranks: bool | None) -> bool:
        dist = torch.distributed
        group = dist.is_available() and dist.is_initialized()
        group_size = dist.get_world_size() if group else 1
        if sync_ranks is None:
            return group and group_size > 1 and self.sampler.world_size == group_size and self.sampler.pad
        if not sync_ranks:
            return False
        if not group:
            raise ValueError("sync_ranks=True needs an initialised torch.distributed process group "
                             "(call torch.distributed.init_process_group first, or pass sync_ranks=False)")
        if self.sampler.world_size != group_size:
            raise ValueError(f"sync_ranks=True needs the loader sharded over the whole process group, got "
                             f"world_size={self.sampler.world_size} for a group of {group_size} processes")
        if not self.sampler.pad:
            raise ValueError("sync_ranks=True needs padded shards (pad=True): with pad=False the ranks can have "
                             "different numbers of batches, and the per-batch collective would hang")
        return True

    def _min_over_ranks(self, values: Sequence[int]) -> list[int]:
        """Element-wise minimum of ``values`` over the ranks: one ``all_reduce(MIN)`` of a small int64 tensor (on
        the current CUDA device for nccl, else on the CPU)."""
        dist = torch.distributed
        backend = str(dist.get_backend())  # "gloo", "nccl", or e.g. "cpu:gloo,cuda:nccl" (CPU tensors go to gloo)
        cuda = "nccl" in backend and "gloo" not in backend
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else None
        tensor = torch.tensor(list(values), dtype=torch.int64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return tensor.tolist()

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s order and augmentation for the next pass."""
        self.sampler.set_epoch(epoch)

    @property
    def last_summary(self) -> EpochSummary | None:
        return self.summaries[-1] if self.summaries else None

    def _raw_batches(self) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = {key: value.to(self.device, non_blocking=True) if isinstance(value, torch.Tensor) else value
               for key, value in batch.items() if key != "skipped"}
        if self.frontend is not None:
            out["audio"] = self.frontend(out.pop("waveform"))
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        summary = EpochSummary(self.sampler.epoch, self.sampler.rank, self.sampler.world_size)
        self.summaries.append(summary)
        steps = 0
        for batch in self._raw_batches():
            step, steps = steps, steps + 1
            if batch["skipped"]:
                if self.on_error == "raise":
                    raise batch["skipped"][0].error()
                for skipped in batch["skipped"]:
                    logger.warning("skipping clip %s", skipped)
                summary.skipped.extend(batch["skipped"])
            # With sync_ranks each rank sends [clips loaded, 0]; one whose pass is over sends [-1, 1] (below).
            loaded = self._min_over_ranks([len(batch["ids"]), 0])[0] if self.sync_ranks else len(batch["ids"])
            if loaded < 0:
                raise self._unequal_passes(f"had a raw batch {step} while another rank's pass had ended")
            if not loaded:
                reason = EMPTIED_ELSEWHERE if batch["ids"] else EMPTIED_HERE
                summary.dropped.append(DroppedBatch(step, tuple(batch["ids"]), reason))
                if batch["ids"]:
                    logger.warning("dropping batch %d (%d clips) on rank %d: %s", step, len(batch["ids"]),
                                   self.sampler.rank, reason)
                continue
            summary.loaded += len(batch["ids"])
            summary.batches += 1
            yield self._to_device(batch)
        if self.sync_ranks and not self._min_over_ranks([-1, 1])[1]:  # another rank still had batches
            raise self._unequal_passes(f"ended its pass after {steps} raw batches while another rank went on")
        (logger.warning if summary.skipped or summary.dropped else logger.info)("%s", summary)
        self.sampler.set_epoch(summary.epoch + 1)

    def _unequal_passes(self, what: str) -> RuntimeError:
        return RuntimeError(f"sync_ranks: the ranks' passes have different numbers of batches: rank "
                            f"{self.sampler.rank} {what}; every rank of the group must iterate as many raw batches")


class MediaLoader(BaseLoader):
    """The iterator over any item dataset (PyAV decoding in DataLoader workers); see the module doc. The task
    classes (:class:`AveLoader`, ``S4Loader``, ``AvqaLoader``) only name it.

    Args:
        dataset: an :class:`AveDataset`, ``S4Dataset`` or ``AvqaDataset``.
        batch_size: clips per batch before skips.
        device: where the yielded tensors live (the audio front end runs there).
        frontend: waveform -> (B, K, T, F); default the dataset's ``default_frontend()``, else ``AudioFrontEnd()``
            (ViT setting); None yields waveforms.
        on_error: ``"skip"`` or ``"raise"``.
        rank, world_size: DDP shard (default: from ``torch.distributed`` if initialised).
        pad: pad the epoch's order so every rank gets as many clips (default: when world_size > 1).
        sync_ranks: skip a step on every rank when any rank's batch lost all its clips, so DDP ranks stay in step
            (one tiny collective per batch; default: on under an initialised multi-process group with padded
            shards; see the module doc and :class:`BaseLoader`).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        device: str | torch.device = "cpu",
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        on_error: str = "skip",
        frontend: AudioFrontEnd | None | str = "default",
        pad: bool | None = None,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory: bool | None = None,
        sync_ranks: bool | None = None,
    ) -> None:
        super().__init__(dataset, batch_size, device, shuffle, seed, rank, world_size, on_error, frontend, pad,
                         sync_ranks)
        pin = self.device.type == "cuda" if pin_memory is None else pin_memory
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, num_workers=num_workers, collate_fn=collate,
            drop_last=drop_last, pin_memory=pin, worker_init_fn=_worker_init if num_workers else None,
            prefetch_factor=prefetch_factor if num_workers else None,
            persistent_workers=persistent_workers and num_workers > 0,
        )

    def __len__(self) -> int:
        """Raw batches per pass (before batches emptied by skips, here or on another rank, are dropped)."""
        return len(self.loader)

    def _raw_batches(self) -> Iterator[dict[str, Any]]:
        return iter(self.loader)
