"""The synthetic AVE set of ``stgcma-fast train ave --synthetic`` and the small model and recipe it is trained with.

The set (:func:`make_synthetic_ave`) is written once by :func:`stgcma_fast.data.synth.synth_ave` in AVE's layout
(VP9 + Opus ``.mkv``, decodable by DALI's CPU decoder and PyAV), with the prepared 16 kHz ``audio_wav/`` of
``stgcma-fast prepare`` beside it. Its events are audio-visual as AVE defines them: a second is an event only when
its class's picture AND its sound are present; with ``distractor_prob`` a background second shows the picture
silently or plays the sound invisibly, so a model that only looks or only listens mislabels those seconds.

A completion marker (``synthetic.json``, the generation parameters) is written last; a later call with the same
parameters reuses the folder, anything else (a partial or older set) is generated again. Generation happens in a
temporary folder renamed into place, so an interrupted run leaves no half-written set under the final name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = "synthetic.json"
FORMAT_VERSION = 1  # bump when the generator's output changes, so older cached sets are regenerated


@dataclasses.dataclass(frozen=True)
class SyntheticAve:
    """A synthetic AVE set, the small STG-CMA trained on it, and the recipe.

    Data: ``clips`` clips (split train / val / test by ``splits``) of ``size`` x ``size`` pixels at ``fps``, events of
    the first ``num_events`` AVE categories, ``distractor_prob`` and ``full_event_prob`` as in
    :func:`~stgcma_fast.data.synth.synth_ave`. Model: ``backbone_kwargs`` for the CLIP ViT-B/16 timm name (a
    CLIP-shaped ViT: pre-norm, QuickGELU), adapter width ``adapter``, ``audio_size`` (T, F). Recipe: ``epochs``,
    ``batch_size``, ``lr`` (adapters; the head gets ``lr * head_lr_scale``), ``warmup_epochs``, ``min_lr``, and the
    :class:`~stgcma_fast.tasks.ave.task.AveOptions` overrides ``task_options``.
    """

    clips: int
    size: int
    fps: int
    num_events: int
    distractor_prob: float
    full_event_prob: float
    splits: tuple[float, float, float]
    codec: str
    backbone_kwargs: dict[str, Any]
    adapter: int
    audio_size: tuple[int, int]
    drop_path_rate: float
    epochs: int
    batch_size: int
    lr: float
    head_lr_scale: float
    warmup_epochs: float
    min_lr: float
    task_options: dict[str, Any]

    def generation_params(self, seed: int) -> dict[str, Any]:
        """What the completion marker records (a cached set is reused only when these match)."""
        return {"generator": "stgcma_fast.data.synth.synth_ave", "format_version": FORMAT_VERSION, "seed": seed,
                "clips": self.clips, "size": self.size, "fps": self.fps, "num_events": self.num_events,
                "distractor_prob": self.distractor_prob, "full_event_prob": self.full_event_prob,
                "splits": list(self.splits), "codec": self.codec, "audio": "audio_wav"}

    def model_config(self, branches: str = "audio-visual") -> Any:
        """The :class:`~stgcma_fast.config.STGCMAConfig` of the small model (``clip-b16-tiny`` shape)."""
        from stgcma_fast.config import STGCMAConfig

        return STGCMAConfig.preset("clip-b16-tiny", backbone_kwargs=dict(self.backbone_kwargs),
                                   adapter=self.adapter, audio_size=self.audio_size, num_frames=10,
                                   drop_path_rate=self.drop_path_rate, branches=branches)


# Tuned on a 2-core CPU shared with other jobs (times are single-thread CPU seconds, measured with
# time.process_time, which an idle machine's wall clock matches or beats; numbers of the tuning runs, seed 0):
# - a random-init CLIP-shaped ViT needs timm's "jax" init (xavier linears): with timm's default init (std 0.02) the
#   class tokens hardly depend on the input (per-feature std 0.02-0.05 against a constant ~0.8), and no run beat the
#   majority class in 8 epochs; with "jax" the spread is 0.24-0.49 and training takes off in 1-2 epochs;
# - 28 events (all of AVE's: distinct hues and well-separated tones), distractor_prob 1.0 (every background second
#   shows the picture or plays the sound alone), 300 clips at 32 px / 2 fps (180 train, 60 val, 60 test);
# - ViT 32 px, patch 16, D 192, depth 4, 3 heads, audio (T, F) = (48, 128), adapter width 16: 0.53 s CPU per
#   training step of 8 clips audio-visual, 0.41 s audio only, 0.09 s video only; decoding 23 ms CPU per clip
#   (VP9 frames 6 ms, the prepared WAV 12 ms); generating the set 0.23 s CPU per clip;
# - lr 1e-3 (adapters), 3e-3 (head), head dropout 0.1, no mixup / SpecAugment (regularisers a few-minute run does
#   not need), 8 epochs (cosine after 1 warm-up epoch), selection on val: test accuracy of an end-to-end run through
#   AveTask.build_loader (decoding every epoch, 1 thread): audio-visual 0.930, audio 0.617, video 0.405, majority
#   0.418; CPU seconds per run (train, val every epoch, test): 140 audio-visual, 117 audio, 50 video (~15 s / 5 s /
#   13 s per epoch), plus ~70 to generate the set once: ~380 CPU-seconds in all, about 5 minutes of wall clock on an
#   idle 2-core machine with 2 threads.
SYNTHETIC_SMALL = SyntheticAve(
    clips=300, size=32, fps=2, num_events=28, distractor_prob=1.0, full_event_prob=0.25, splits=(0.6, 0.2, 0.2),
    codec="vp9",
    backbone_kwargs={"img_size": 32, "embed_dim": 192, "depth": 4, "num_heads": 3, "weight_init": "jax"},
    adapter=16, audio_size=(48, 128), drop_path_rate=0.0,
    epochs=8, batch_size=8, lr=1e-3, head_lr_scale=3.0, warmup_epochs=1.0, min_lr=1e-5,
    task_options={"mixup_prob": 0.0, "spec_augment": False, "label_smoothing": 0.1, "head_dropout": 0.1,
                  "crop_scale": (0.6, 1.0)},
)
"""The CPU default of ``stgcma-fast train ave --synthetic`` (see the measurements above)."""

SYNTHETIC_FULL = dataclasses.replace(SYNTHETIC_SMALL, clips=1200, size=128, fps=4)
"""A larger set (``small=False``) at 128 px for GPU runs; not tuned (the model and recipe fields are the small
ones: a GPU run of a paper preset takes its own)."""


def synthetic_settings(small: bool = True) -> SyntheticAve:
    """:data:`SYNTHETIC_SMALL` or :data:`SYNTHETIC_FULL`."""
    return SYNTHETIC_SMALL if small else SYNTHETIC_FULL


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The completion marker's parameters, or None when it is missing or unreadable."""
    try:
        return json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def make_synthetic_ave(
    root: str | Path,
    seed: int = 0,
    small: bool = True,
    settings: SyntheticAve | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write (once) the synthetic AVE set under ``root`` and return its folder
    ``<root>/ave-synthetic-<small|full>-seed<seed>`` (pass it as the dataset root).

    ``settings`` overrides the set's parameters (default: :func:`synthetic_settings` ``(small)``); ``progress`` is
    called as ``progress(done, total)`` per clip written.
    """
    from stgcma_fast.data.prepare import prepare_audio
    from stgcma_fast.data.synth import synth_ave

    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"expected seed to be an int >= 0, got {seed!r}")
    s = settings if settings is not None else synthetic_settings(small)
    params = s.generation_params(seed)
    root = Path(root)
    folder = root / f"ave-synthetic-{'small' if small else 'full'}-seed{seed}"
    if read_marker(folder) == params:
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{folder.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    synth_ave(tmp, s.clips, codec=s.codec, seed=seed, size=s.size, fps=s.fps, num_classes=s.num_events,
              distractor_prob=s.distractor_prob, splits=s.splits, full_event_prob=s.full_event_prob,
              progress=progress)
    report = prepare_audio(tmp, check_video=True)  # in this process: a forked pool can deadlock after torch ran
    if report.failed:
        raise RuntimeError(f"the synthetic AVE set failed its own preparation: {report}")
    (tmp / MARKER).write_text(json.dumps(params, indent=1), encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)
    return folder
