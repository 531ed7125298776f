"""Weight averaging of late epochs (the authors' reported AVE model: the mean of the epoch 8-20 weights) and EMA.

Both keep float32 copies of the TRAINABLE tensors only (the frozen backbone never changes), and both are part of
the training checkpoint so a resumed run continues them exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn


def _trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


class EpochAverage:
    """Running mean of the trainable weights at the end of each epoch from ``start_epoch`` (1-based) on."""

    def __init__(self, start_epoch: int) -> None:
        self.start_epoch = start_epoch
        self.count = 0
        self.mean: dict[str, torch.Tensor] = {}

    def update(self, module: nn.Module, epoch: int) -> None:
        """Call after epoch ``epoch`` (1-based) finished."""
        if epoch < self.start_epoch:
            return
        self.count += 1
        for name, p in _trainable(module).items():
            w = p.detach().float()
            if name not in self.mean:
                self.mean[name] = w.clone()
            else:
                self.mean[name] += (w - self.mean[name]) / self.count

    def ready(self) -> bool:
        return self.count > 0

    def state_dict(self) -> dict:
        return {"start_epoch": self.start_epoch, "count": self.count, "mean": dict(self.mean)}

    def load_state_dict(self, state: dict) -> None:
        self.start_epoch, self.count = int(state["start_epoch"]), int(state["count"])
        self.mean = {k: v.clone() for k, v in state["mean"].items()}


class EMA:
    """Exponential moving average of the trainable weights, updated after every optimizer step."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.mean = {name: p.detach().float().clone() for name, p in _trainable(module).items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for name, p in _trainable(module).items():
            self.mean[name].lerp_(p.detach().float(), 1.0 - self.decay)

    def ready(self) -> bool:
        return True

    def state_dict(self) -> dict:
        return {"decay": self.decay, "mean": dict(self.mean)}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.mean = {k: v.clone() for k, v in state["mean"].items()}


@contextmanager
def swapped_weights(module: nn.Module, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily load ``weights`` (trainable tensors by name) into ``module``; restores the originals after."""
    params = _trainable(module)
    missing = sorted(set(params) - set(weights))
    if missing:
        raise ValueError(f"expected averaged weights for every trainable tensor, missing {missing[:5]}")
    saved = {name: p.detach().clone() for name, p in params.items()}
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name])
