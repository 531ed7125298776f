"""torch.compile(FastSTGCMA, fullgraph=True) traces with zero graph breaks (backend selection is static)."""

from __future__ import annotations

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
