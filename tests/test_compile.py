"""torch.compile(FastSTGCMA, fullgraph=True) traces with zero graph breaks (backend selection is static)."""

from __future__ import annotations

import pytest
import torch

from stgcma_fast.testing import assert_close

from .helpers import inputs, model_pair, tiny_config


def test_fullgraph_compile_matches_eager_forward_and_backward():
    cfg = tiny_config()
    ref, fast = model_pair(cfg, std=0.1, dtype=torch.float32)
    fast.eval()
    video, audio = inputs(cfg)
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    out = compiled(video, audio)
    expected = ref.eval()(video, audio)
    assert_close(out.video_tokens, expected.video_tokens, 5e-5, 5e-4, "video_tokens")
    assert_close(out.audio_tokens, expected.audio_tokens, 5e-5, 5e-4, "audio_tokens")
    (out.video_cls.sum() + out.audio_cls.sum()).backward()
    (expected.video_cls.sum() + expected.audio_cls.sum()).backward()
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        if p.requires_grad:
            assert_close(p.grad, q.grad, 5e-5, 5e-3, f"grad {name}")


def test_fullgraph_compile_under_autocast_matches_eager():
    """Under bf16 autocast the per-block cast of the frozen weights (autocast state queried in forward) traces into
    the one graph too, and computes what eager does."""
    from torch._dynamo.testing import CompileCounter

    cfg = tiny_config()
    _, fast = model_pair(cfg, std=0.1, dtype=torch.float32)
    fast.train()
    video, audio = inputs(cfg)
    counter = CompileCounter()
    compiled = torch.compile(fast, fullgraph=True, backend=counter)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = compiled(video, audio), fast(video, audio)
    assert counter.frame_count == 1, f"expected one graph, got {counter.frame_count}"
    assert torch.equal(out.video_tokens, expected.video_tokens) and torch.equal(out.audio_tokens,
                                                                               expected.audio_tokens)


@pytest.mark.parametrize("kwargs", [dict(recompute=("attention", "ffn")), dict(grad_checkpointing=True)],
                         ids=["recompute", "grad_checkpointing"])
def test_fullgraph_compile_with_recomputation(kwargs):
    """Recomputed segments and blocks (non-reentrant checkpoints) trace into the one graph (the dispatcher's record
    of its choices is no side effect under compile); the compiled training step gives the eager gradients."""
    from torch._dynamo.testing import CompileCounter

    from stgcma_fast import FastSTGCMA

    cfg = tiny_config()
    _, plain = model_pair(cfg, std=0.1, dtype=torch.float32)
    lean = FastSTGCMA(cfg, **kwargs)
    lean.load_state_dict(plain.state_dict())
    lean.train()
    video, audio = inputs(cfg)
    counter = CompileCounter()
    out = torch.compile(lean, fullgraph=True, backend=counter)(video, audio)
    assert counter.frame_count == 1, f"expected one graph, got {counter.frame_count}"
    params = list(lean.trainable_parameters())
    grads = torch.autograd.grad(out.video_cls.square().mean() + out.audio_cls.square().mean(), params)
    eager = lean(video, audio)
    expected = torch.autograd.grad(eager.video_cls.square().mean() + eager.audio_cls.square().mean(), params)
    for g, e in zip(grads, expected):
        assert_close(g, e, 1e-6, 1e-5, "compiled gradient with recompute")
