"""AVE (audio-visual event localisation) on STG-CMA: :class:`AveTask` (registered as ``"ave"``), its options, metrics,
the authors' audio-only mixup and the synthetic set of ``stgcma-fast train ave --synthetic``."""

from stgcma_fast.tasks.ave.metrics import AveMetrics
from stgcma_fast.tasks.ave.mixup import AudioMixup, audio_mixup
from stgcma_fast.tasks.ave.synthetic import SYNTHETIC_FULL, SYNTHETIC_SMALL, SyntheticAve, make_synthetic_ave
from stgcma_fast.tasks.ave.task import AveOptions, AveTask

__all__ = ["SYNTHETIC_FULL", "SYNTHETIC_SMALL", "AudioMixup", "AveMetrics", "AveOptions", "AveTask", "SyntheticAve",
           "audio_mixup", "make_synthetic_ave"]
