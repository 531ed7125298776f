"""stgcma-fast: a fast, faithful STG-CMA (spatial-temporal-global cross-modal adaptation).

A frozen image-pretrained ViT encodes both video frames and audio spectrograms; small adapters learn the
audio-visual task. ``FastSTGCMA`` is the drop-in module, ``ReferenceSTGCMA`` the plain-PyTorch ground truth.

The names below load on first use (PEP 562), so ``import stgcma_fast.data`` (e.g. in a spawned DataLoader worker)
does not pay for importing timm and the model code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module (relative to this package) that defines it
_LAZY: dict[str, str] = {
    "AVEHead": ".modules",
    "FastSTGCMA": ".model",
    "PRESETS": ".config",
    "ParamReport": ".core",
    "ReferenceSTGCMA": ".reference",
    "STGCMAConfig": ".config",
    "STGCMAOutput": ".core",
    "build_model": ".model",
}

__all__ = ["AVEHead", "FastSTGCMA", "PRESETS", "ParamReport", "ReferenceSTGCMA", "STGCMAConfig", "STGCMAOutput",
           "build_model"]  # fmt: skip

if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from .config import PRESETS, STGCMAConfig
    from .core import ParamReport, STGCMAOutput
    from .model import FastSTGCMA, build_model
    from .modules import AVEHead
    from .reference import ReferenceSTGCMA


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
