"""The benchmark harness's GPU-only paths that a CPU can still check: out-of-memory cases of the batch-size sweep are
skipped with their reason (wherever in the case they run out, torch.compile's wrapping included), other errors are
raised."""

from __future__ import annotations

from pathlib import Path

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


def test_joint_rows_providers_match_and_a_wrong_answer_is_caught():
    """The joint-rows experiment checks each provider against the two-GEMM path before timing it; the check must see
    a provider that mixes up the modalities' rows."""
    from bench import test_joint_rows as jr

    torch.manual_seed(0)
    G, Nv, Na, D, H = 2, 5, 3, 32, 4
    w = jr._weights(D)
    x_v, x_a = jr._inputs(G * Nv, D, grad=False), jr._inputs(G * Na, D, grad=False)
    joint = {n: torch.cat([x_v[n], x_a[n]]) for n in jr.PROJECTIONS}
    flat = lambda pairs: [t for pair in pairs for t in pair]  # noqa: E731
    expected = flat(jr.projections_provider("eager", w, x_v, x_a, joint, G * Nv)())
    assert len(expected) == 2 * len(jr.PROJECTIONS) and expected[0].shape == (G * Nv, 3 * D)
    for provider in ("concat", "joint"):
        jr._check(flat(jr.projections_provider(provider, w, x_v, x_a, joint, G * Nv)()), expected, provider)
    swapped = {n: torch.cat([x_a[n], x_v[n]]) for n in jr.PROJECTIONS}  # audio rows first: wrong split
    with pytest.raises(AssertionError, match="output 0"):
        jr._check(flat(jr.projections_provider("joint", w, x_v, x_a, swapped, G * Nv)()), expected, "swapped")

    qkv_v, qkv_a = torch.randn(G, Nv, 3 * D), torch.randn(G, Na, 3 * D)
    qkv_joint = torch.cat([qkv_v, qkv_a], dim=1)
    expected = flat(jr.attention_provider("sdpa", qkv_v, qkv_a, qkv_joint, H, 0.5)())
    jr._check(flat(jr.attention_provider("sdpa-masked", qkv_v, qkv_a, qkv_joint, H, 0.5)()), expected, "masked")
    unmasked = torch.cat([qkv_v, qkv_a], dim=1)  # full attention across modalities: not block-diagonal
    q, k, v = unmasked.view(G, Nv + Na, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.5).transpose(1, 2).reshape(G, Nv + Na, D)
    with pytest.raises(AssertionError):
        jr._check(list(full.split([Nv, Na], dim=1)), expected, "unmasked")


class _FakeBenchmark:
    """What run_benchmark uses of pytest-benchmark's fixture (a real one would add the case to the session's JSON)."""

    def __init__(self) -> None:
        self.extra_info: dict = {}
        self.stats = None
        self.calls = 0

    def pedantic(self, fn, rounds: int, iterations: int, warmup_rounds: int) -> None:
        for _ in range(rounds * iterations):
            fn()
            self.calls += 1


def test_kernel_rows_ask_for_device_timing_and_the_cpu_keeps_the_host_clock():
    """bench/test_kernels.py times on the device on CUDA (CUDA graphs or events, bench.common.device_time); on a CPU
    the host clock stays, and says so."""
    from bench import common, test_kernels

    bench = _FakeBenchmark()
    x = torch.randn(64, 64)
    extra = common.run_benchmark(bench, lambda: x @ x, rounds=3, device_timer=True, bytes_moved=3 * x.numel() * 4)
    assert bench.calls == 3
    if common.HAS_CUDA:
        assert extra["timer"] in ("cuda-graph", "cuda-events") and extra["host_median_s"] > 0
    else:
        assert extra["timer"] == "host" and "host_median_s" not in extra
    assert extra["median_s"] > 0 and extra["gbps"] == pytest.approx(3 * x.numel() * 4 / extra["median_s"] / 1e9)
    assert bench.extra_info == extra
    source = Path(test_kernels.__file__).read_text()
    assert "device_timer=True" in source
