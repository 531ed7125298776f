"""The benchmark harness's GPU-only paths that a CPU can still check: out-of-memory cases of the batch-size sweep are
skipped with their reason (wherever in the case they run out, torch.compile's wrapping included), other errors are
raised."""

from __future__ import annotations

import pytest
import torch

from bench import test_model
from bench.common import out_of_memory


def _oom() -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_out_of_memory_sees_through_wrapping_exceptions():
    assert out_of_memory(_oom())
    try:
        try:
            raise _oom()
        except torch.cuda.OutOfMemoryError as inner:
            raise RuntimeError("backend compiler failed") from inner
    except RuntimeError as wrapped:
        assert out_of_memory(wrapped)
    assert not out_of_memory(ValueError("shape mismatch"))
    assert not out_of_memory(None)


def test_out_of_memory_in_a_model_case_skips_it(monkeypatch):
    def measure(*args, **kwargs):
        raise _oom()

    monkeypatch.setattr(test_model, "_config", lambda preset, frames=None: None)
    monkeypatch.setattr(test_model, "_measure", measure)
    with pytest.raises(pytest.skip.Exception, match="batch 64 does not fit in memory for clip-b16-base / fast"):
        test_model._bench(None, "clip-b16-base", "fast", 64, "train")


def test_other_errors_in_a_model_case_are_raised(monkeypatch):
    def measure(*args, **kwargs):
        raise ValueError("backend 'triton' (forced) cannot run av_adapter")

    monkeypatch.setattr(test_model, "_config", lambda preset, frames=None: None)
    monkeypatch.setattr(test_model, "_measure", measure)
    with pytest.raises(ValueError, match="forced"):
        test_model._bench(None, "clip-b16-base", "fast-triton", 8, "train")
