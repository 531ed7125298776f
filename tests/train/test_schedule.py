"""The per-iteration warm-up + cosine schedule against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from stgcma_fast.train.schedule import WarmupCosine, warmup_cosine_factor


def test_factor_by_hand() -> None:
    # 4 warm-up steps, 10 in all, floor 0.1: warm-up 1/4 .. 4/4, then cosine over steps 4..9 (5 intervals).
    f = [warmup_cosine_factor(s, 4, 10, 0.1) for s in range(12)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f[4] == pytest.approx(1.0)
    assert f[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 5)))
    assert f[9] == pytest.approx(0.1) and f[11] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[4:], f[5:]))


def test_groups_keep_their_ratio_and_floor() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-4}])
    sched = WarmupCosine(opt, warmup_steps=2, total_steps=6, min_lr=1e-5)
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx([5e-4, 5e-5])
    assert seen[1] == pytest.approx([1e-3, 1e-4])
    assert seen[5] == pytest.approx([1e-5, 1e-6])
    for big, small in seen:
        assert small == pytest.approx(big / 10)
    state = sched.state_dict()
    again = WarmupCosine(torch.optim.Adam([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-4}]), 2, 6, 1e-5)
    again.load_state_dict(state)
    assert again.last_epoch == sched.last_epoch


def test_bad_lengths_are_refused() -> None:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match="total_steps >= 1"):
        WarmupCosine(opt, 0, 0, 0.0)
