"""The DALI input pipeline: video decode + frame sampling + resize / crop / normalise (+ train augmentation) and WAV
decoding in one DALI graph, yielding the same batches as :class:`stgcma_fast.data.loader.AveLoader`.

Graph (``dali_device="gpu"``: ``fn.decoders.video`` on the ``mixed`` backend, NVDEC, and every image op on the GPU;
``"cpu"``: the same graph on DALI's CPU backend)::

    video bytes --decoders.video(frames=indices)--> (M, H, W, 3) uint8
       eval:  --resize(resize_shorter, linear, antialias, subpixel_scale=False)--> float
              --crop_mirror_normalize(crop, mean * 255, std * 255, FCHW)--> (M, 3, C, C)
       train: --random_resized_crop(size C, area, ratio)--crop_mirror_normalize(mirror=coin_flip)-->
    wav/flac bytes --decoders.audio(16 kHz, mono)--> (S,) float, then cut / padded in torch (audio_io.fit_length)

The Python side does what DALI cannot do per sample: it shards and shuffles with the same
:class:`~stgcma_fast.data.loader.ShardSampler`, times each video's frames from their presentation timestamps with a
PyAV demux (:func:`~stgcma_fast.data.video.probe_video`, which decodes only the first frame, for the orientation)
to compute the SAME frames as the PyAV path (:func:`~stgcma_fast.data.video.frame_indices`: the display-order
indices of the frames on screen at the sampling times, so a variable frame rate is sampled by time, not by index;
DALI's ``frames`` argument counts frames in display order too), and reports bad media (missing, empty, unreadable,
truncated, gapped, too short) with the clip id and reason before they reach DALI (DALI's decoder does not fail on
a corrupt stream: it returns what it could decode). Frames are sampled with ``frames=indices`` and
``pad_mode="none"``, so an index past the end is an error, never a padded (zero) frame.

What cannot go through DALI goes through PyAV, per clip, in the main process: on the CPU backend, codecs other than
VP8 / VP9 / MJPEG (DALI's CPU decoder has no H.264 / HEVC / AV1); videos with a display orientation (rotation
metadata: DALI's decoder ignores it, and PyAV applies it before the resize and crop); audio that was not prepared
as WAV/FLAC (``stgcma-fast prepare``, which places it on the video's timeline), since ``fn.decoders.audio`` reads
neither AAC nor Opus; and a whole batch whose DALI run raised. Evaluation-mode output matches the PyAV path to
:data:`~stgcma_fast.data.video.PARITY_ATOL` (a test checks the CPU backend; the GPU backend is untested here).
Training augmentation draws from DALI's own seeded RNG, so it is deterministic for a seed and a sharding but does
not equal the PyAV path's draws.

DALI is optional (``pip install nvidia-dali-cuda120``); :func:`dali_status` says whether it can be imported and why
not. Nothing here imports DALI at module import time.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stgcma_fast.data.audio_io import MediaError, decode_audio, fit_length
from stgcma_fast.data.ave_loader import AveDataset
from stgcma_fast.data.frontend import AudioFrontEnd
from stgcma_fast.data.pipeline import AUDIO_SUFFIXES, BaseLoader, SkippedClip, collate, logger
from stgcma_fast.data.video import IDENTITY, check_length, frame_indices, probe_video

CPU_CODECS: frozenset[str] = frozenset({"vp8", "vp9", "mjpeg"})
GPU_CODECS: frozenset[str] = CPU_CODECS | {"h264", "hevc", "av1", "mpeg4"}
DALI_DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")


def dali_status() -> tuple[bool, str]:
    """(importable, version or the reason it is not)."""
    try:
        dali = importlib.import_module("nvidia.dali")
    except Exception as exc:  # ImportError, or a broken install raising anything at import
        return False, f"nvidia.dali is not importable ({type(exc).__name__}: {exc}); pip install nvidia-dali-cuda120"
    return True, str(getattr(dali, "__version__", "unknown"))


def _require_dali() -> None:
    ok, why = dali_status()
    if not ok:
        raise RuntimeError(why)


def build_pipeline(
    dataset: AveDataset,
    batch_size: int,
    dali_device: str = "cpu",
    device_id: int | None = None,
    num_threads: int = 2,
    seed: int = 0,
    with_audio: bool = True,
) -> Any:
    """The DALI graph of the module doc for ``dataset``'s frame settings and train flag. Inputs (external sources,
    fed per batch): ``"video"`` (encoded bytes), ``"frames"`` (M int32 indices) and, with ``with_audio``, ``"audio"``
    (WAV/FLAC bytes). Outputs: frames (M, 3, C, C) float32 and, with audio, the decoded (S,) float32 waveform."""
    _require_dali()
    from nvidia.dali import fn, pipeline_def, types

    settings, train = dataset.frames, dataset.train
    gpu = dali_device == "gpu"
    mean = [255.0 * m for m in settings.mean]
    std = [255.0 * s for s in settings.std]
    crop = (settings.crop_size, settings.crop_size)

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id if gpu else None,
                  prefetch_queue_depth=1, seed=seed)
    def pipeline():
        encoded = fn.external_source(name="video", dtype=types.UINT8, ndim=1)
        indices = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        frames = fn.decoders.video(encoded, device="mixed" if gpu else "cpu", frames=indices, pad_mode="none")
        if train:
            frames = fn.random_resized_crop(frames, size=crop, random_area=list(settings.crop_scale),
                                            random_aspect_ratio=list(settings.crop_ratio), antialias=True,
                                            dtype=types.FLOAT)
            mirror = fn.random.coin_flip(probability=settings.flip_prob)
            frames = fn.crop_mirror_normalize(frames, mean=mean, std=std, mirror=mirror, output_layout="FCHW",
                                              dtype=types.FLOAT)
        else:
            frames = fn.resize(frames, resize_shorter=settings.resize_shorter, interp_type=types.INTERP_LINEAR,
                               antialias=True, subpixel_scale=False, dtype=types.FLOAT)
            frames = fn.crop_mirror_normalize(frames, crop=crop, mean=mean, std=std, output_layout="FCHW",
                                              dtype=types.FLOAT)
        if not with_audio:
            return frames
        wav = fn.external_source(name="audio", dtype=types.UINT8, ndim=1)
        audio, _ = fn.decoders.audio(wav, sample_rate=dataset.sample_rate, downmix=True, dtype=types.FLOAT)
        return frames, audio

    pipe = pipeline()
    pipe.build()
    return pipe


def _to_torch(tensor_list: Any, index: int) -> torch.Tensor:
    """Sample ``index`` of a DALI TensorList (CPU or GPU) as a torch tensor (a copy). A GPU sample is copied on the
    pipeline's GPU (its ``device_id``, whatever torch's current device is), ordered on torch's current stream there;
    the caller synchronises that stream before DALI may reuse its output buffers (see ``DaliAveLoader._run``)."""
    from nvidia.dali.plugin.pytorch import feed_ndarray

    sample = tensor_list[index]
    if type(tensor_list).__name__ == "TensorListGPU":
        device = torch.device("cuda", sample.device_id())
        out = torch.empty(tuple(sample.shape()), dtype=torch.float32, device=device)
        feed_ndarray(sample, out, cuda_stream=torch.cuda.current_stream(device))
    else:
        out = torch.empty(tuple(sample.shape()), dtype=torch.float32)
        feed_ndarray(sample, out)
    return out


class DaliAveLoader(BaseLoader):
    """AVE batches through DALI, in the format of :class:`~stgcma_fast.data.loader.AveLoader` (see the module doc).

    Args:
        dali_device: ``"gpu"`` (NVDEC + GPU ops), ``"cpu"`` (DALI CPU backend) or ``"auto"`` (gpu when CUDA is
            available).
        num_threads: DALI worker threads. Other arguments as :class:`~stgcma_fast.data.loader.AveLoader`.
    """

    def __init__(
        self,
        dataset: AveDataset,
        batch_size: int,
        device: str | torch.device = "cpu",
        dali_device: str = "auto",
        num_threads: int = 2,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        on_error: str = "skip",
        frontend: AudioFrontEnd | None | str = "default",
        pad: bool | None = None,
        device_id: int | None = None,
        sync_ranks: bool | None = None,
    ) -> None:
        super().__init__(dataset, batch_size, device, shuffle, seed, rank, world_size, on_error, frontend, pad,
                         sync_ranks)
        if dali_device not in DALI_DEVICES:
            raise ValueError(f"expected dali_device in {DALI_DEVICES}, got {dali_device!r}")
        if dali_device == "auto":
            dali_device = "gpu" if torch.cuda.is_available() else "cpu"
        if dali_device == "gpu" and not torch.cuda.is_available():
            raise RuntimeError("dali_device='gpu' needs a CUDA device; this machine has none (use dali_device='cpu')")
        self.dali_device = dali_device
        self.codecs = GPU_CODECS if dali_device == "gpu" else CPU_CODECS
        if device_id is None and dali_device == "gpu":
            device_id = torch.cuda.current_device()
        self.with_audio = all(i.audio is not None and i.audio.suffix.lower() in AUDIO_SUFFIXES for i in dataset.items)
        if not self.with_audio:
            logger.info("DALI path: some clips have no prepared WAV/FLAC; audio is decoded with PyAV "
                        "(run `stgcma-fast prepare` to let DALI decode it)")
        self.pipe = build_pipeline(dataset, batch_size, dali_device, device_id, num_threads, seed, self.with_audio)
        self.fallbacks = 0  # clips decoded with PyAV instead of DALI, over all passes

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def _plan(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """DALI inputs of clip ``index`` (video bytes, frame indices, audio bytes), or None for the PyAV path.
        Raises :class:`MediaError` for bad media."""
        ds, item = self.dataset, self.dataset.items[index]
        info = probe_video(item.video, orientation=True)
        check_length(info, ds.frames, item.video)
        if info.codec not in self.codecs or info.orientation != IDENTITY:
            return None
        video = np.fromfile(item.video, dtype=np.uint8)
        frames = np.asarray(frame_indices(info, ds.frames.num_frames), dtype=np.int32)
        audio = None
        if self.with_audio:
            if not Path(item.audio).is_file():
                raise MediaError(item.audio, "prepared audio file not found")
            audio = np.fromfile(item.audio, dtype=np.uint8)
        return video, frames, audio

    def _run(self, plans: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]
             ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        self.pipe.feed_input("video", [p[0] for p in plans])
        self.pipe.feed_input("frames", [p[1] for p in plans])
        if self.with_audio:
            self.pipe.feed_input("audio", [p[2] for p in plans])
        outputs = self.pipe.run()
        videos = [_to_torch(outputs[0], i) for i in range(len(plans))]
        audios = [_to_torch(outputs[1], i) for i in range(len(plans))] if self.with_audio else None
        if videos and videos[0].is_cuda:  # copies queued on torch's stream; DALI's next run may reuse its buffers
            torch.cuda.current_stream(videos[0].device).synchronize()
        return videos, audios

    def _batch(self, keys: list[tuple[int, int]]) -> dict[str, Any]:
        ds = self.dataset
        results: dict[int, dict[str, Any] | SkippedClip] = {}
        plans: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        for pos, (index, _) in enumerate(keys):
            item = ds.items[index]
            try:
                plan = self._plan(index)
            except MediaError as exc:
                results[pos] = SkippedClip(index, item.video_id, str(exc.path), exc.reason)
                continue
            if plan is not None:
                plans[pos] = plan
        if plans:
            try:
                videos, audios = self._run(list(plans.values()))
            except RuntimeError as exc:  # DALI failed on this batch: PyAV decodes (and diagnoses) its clips
                logger.warning("DALI failed on a batch (%s); decoding its %d clips with PyAV", str(exc)[:200],
                               len(plans))
                plans = {}
            else:
                samples = round(ds.clip_seconds * ds.sample_rate)
                for j, pos in enumerate(plans):
                    index = keys[pos][0]
                    item = ds.items[index]
                    try:
                        if audios is not None:
                            waveform = fit_length(audios[j].cpu(), samples, round(0.1 * ds.sample_rate), item.audio)
                        else:
                            waveform = decode_audio(item.video, ds.sample_rate, seconds=ds.clip_seconds)
                    except MediaError as exc:
                        results[pos] = SkippedClip(index, item.video_id, str(exc.path), exc.reason)
                        continue
                    results[pos] = {"video": videos[j], "waveform": waveform,
                                    "labels": torch.tensor(item.labels, dtype=torch.long), "id": item.video_id,
                                    "index": index}
        for pos, key in enumerate(keys):
            if pos not in results:
                self.fallbacks += 1
                results[pos] = ds[key]
        items = [results[pos] for pos in range(len(keys))]
        items = [x if isinstance(x, SkippedClip) else {**x, "video": x["video"].to(self.device)} for x in items]
        return collate(items)

    def _raw_batches(self) -> Iterator[dict[str, Any]]:
        keys = list(self.sampler)
        for start in range(0, len(keys), self.batch_size):
            yield self._batch(keys[start: start + self.batch_size])


def make_ave_loader(dataset: AveDataset, batch_size: int, backend: str = "auto", **kwargs: Any) -> BaseLoader:
    """The AVE iterator for ``backend``: ``"pyav"`` (:class:`~stgcma_fast.data.loader.AveLoader`), ``"dali"``
    (:class:`DaliAveLoader`) or ``"auto"``: DALI when importable and either a GPU is present or every video is one
    DALI's CPU decoder reads (VP8/VP9/MJPEG, judged by the file suffix .mkv/.webm), else PyAV. Keyword arguments go
    to the chosen class (``num_workers``, ``drop_last``, ``persistent_workers``, ``prefetch_factor`` and
    ``pin_memory`` only to PyAV's; ``dali_device``, ``num_threads``, ``device_id`` only to DALI's)."""
    from stgcma_fast.data.ave_loader import AveLoader

    if backend not in ("auto", "pyav", "dali"):
        raise ValueError(f"expected backend in ('auto', 'pyav', 'dali'), got {backend!r}")
    pyav_only = {"num_workers", "drop_last", "persistent_workers", "prefetch_factor", "pin_memory"}
    dali_only = {"dali_device", "num_threads", "device_id"}
    if backend == "auto":
        vp9_like = all(i.video.suffix.lower() in (".mkv", ".webm") for i in dataset.items)
        backend = "dali" if dali_status()[0] and (torch.cuda.is_available() or vp9_like) else "pyav"
    if backend == "dali":
        return DaliAveLoader(dataset, batch_size, **{k: v for k, v in kwargs.items() if k not in pyav_only})
    return AveLoader(dataset, batch_size, **{k: v for k, v in kwargs.items() if k not in dali_only})
