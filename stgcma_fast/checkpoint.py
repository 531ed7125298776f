"""Checkpoints of what STG-CMA trains: adapters, gates, temporal embeddings, final norm, head.

The frozen backbone comes from timm or its own file, so a checkpoint holds only the trainable tensors (about 11.5M
parameters for CLIP ViT-B/16 Base instead of 97M), the config they belong to and, optionally, optimizer state.
Files are written atomically: a temporary file in the same folder, flushed to disk, then renamed over the target,
so a crash mid-write never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config import STGCMAConfig

FORMAT = "stgcma-fast/1"


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``model`` that require gradients, by their state-dict names, detached."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (temporary file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    step: int | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the trainable tensors of an STG-CMA model (+ optimizer state, step, extra metadata) atomically."""
    payload = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "state_dict": trainable_state_dict(model),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": step,
        "extra": extra or {},
    }
    return atomic_save(payload, path)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint written by :func:`save_checkpoint` (tensors only, no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not an stgcma-fast checkpoint: expected format {FORMAT!r}, got {found!r}")
    return payload


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load trainable tensors (and optimizer state) into ``model``; returns the payload (``step``, ``extra``).

    The model must have the checkpoint's configuration and every trainable tensor it names; anything else is a
    ValueError that lists the differences.
    """
    payload = read_checkpoint(path, map_location)
    saved = STGCMAConfig.from_dict(payload["config"])
    if saved != model.config:
        diff = {k: (v, getattr(model.config, k)) for k, v in saved.to_dict().items()
                if v != model.config.to_dict()[k]}
        raise ValueError(f"checkpoint {path} was written for another configuration: (checkpoint, model) = {diff}")
    state = payload["state_dict"]
    expected = set(trainable_state_dict(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the model's trainable tensors: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]} (a task head attached on one side only?)")
    model.load_state_dict(state, strict=False)
    if optimizer is not None:
        if payload["optimizer"] is None:
            raise ValueError(f"checkpoint {path} holds no optimizer state")
        optimizer.load_state_dict(payload["optimizer"])
    return payload
