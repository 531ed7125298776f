"""Activations of the frozen FFN that keep less for backward.

Autograd keeps both ``x`` and ``sigmoid(1.702 x)`` for ``x * sigmoid(1.702 x)`` (CLIP's QuickGELU): two tensors of
the FFN's 4D width per token. :class:`QuickGELU` keeps only ``x`` and recomputes the sigmoid in backward, halving
the largest activation a frozen block stores.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import QuickGELU as TimmQuickGELU


class QuickGELUFunction(torch.autograd.Function):
    """``x * sigmoid(1.702 x)``, saving only ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * torch.sigmoid(1.702 * x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(1.702 * x)
        return grad * (s + 1.702 * x * s * (1.0 - s))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return QuickGELUFunction.apply(x)


def lean_activation(act: nn.Module):
    """The memory-lean equivalent of a timm MLP activation module (the module itself where none is needed)."""
    if isinstance(act, TimmQuickGELU):
        return quick_gelu
    if isinstance(act, nn.GELU):
        return lambda x: F.gelu(x, approximate=act.approximate)  # already keeps only its input
    return act
