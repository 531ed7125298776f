"""stgcma-fast: a fast, faithful STG-CMA (spatial-temporal-global cross-modal adaptation).

A frozen image-pretrained ViT encodes both video frames and audio spectrograms; small adapters learn the
audio-visual task. ``FastSTGCMA`` is the drop-in module, ``ReferenceSTGCMA`` the plain-PyTorch ground truth.
"""

from .config import PRESETS, STGCMAConfig
from .core import ParamReport, STGCMAOutput
from .model import FastSTGCMA, build_model
from .modules import AVEHead
from .reference import ReferenceSTGCMA

__version__ = "0.1.0"

__all__ = [
    "AVEHead",
    "FastSTGCMA",
    "PRESETS",
    "ParamReport",
    "ReferenceSTGCMA",
    "STGCMAConfig",
    "STGCMAOutput",
    "build_model",
]
