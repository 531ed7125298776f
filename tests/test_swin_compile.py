"""torch.compile(FastSTGCMA, fullgraph=True) on a Swin backbone: one graph (windows, shifts, masks, the temporal
bias and patch merging trace), the compiled forward and backward equal the reference."""

from __future__ import annotations

import torch

from stgcma_fast.testing import assert_close

from .helpers import inputs, model_pair
from .test_swin_model import swin_config


def test_swin_fullgraph_compile_matches_reference_forward_and_backward():
    from torch._dynamo.testing import CompileCounter

    cfg = swin_config()
    ref, fast = model_pair(cfg, std=0.1, dtype=torch.float32)
    fast.eval()
    video, audio = inputs(cfg)
    counter = CompileCounter()
    out = torch.compile(fast, fullgraph=True, backend=counter)(video, audio)
    assert counter.frame_count == 1, f"expected one graph, got {counter.frame_count}"
    expected = ref.eval()(video, audio)
    for name in ("video_tokens", "audio_tokens", "video_pooled", "audio_pooled"):
        assert_close(getattr(out, name), getattr(expected, name), 5e-5, 5e-4, name)
    for s, (a, b) in enumerate(zip(out.video_stages, expected.video_stages)):
        assert_close(a, b, 5e-5, 5e-4, f"video stage {s}")
    (out.video_pooled.square().sum() + out.audio_pooled.square().sum()).backward()
    (expected.video_pooled.square().sum() + expected.audio_pooled.square().sum()).backward()
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        if p.requires_grad:
            assert_close(p.grad, q.grad, 5e-5, 5e-3, f"grad {name}")


def test_swin_fullgraph_compile_in_training_with_recomputation():
    from torch._dynamo.testing import CompileCounter

    from stgcma_fast import FastSTGCMA

    torch._dynamo.reset()  # a graph traced earlier in the session (tests/test_compile.py) must not be reused here
    cfg = swin_config(drop_path_rate=0.0)
    _, plain = model_pair(cfg, std=0.1, dtype=torch.float32)
    lean = FastSTGCMA(cfg, recompute=("attention", "ffn"))
    lean.load_state_dict(plain.state_dict())
    lean.train()
    video, audio = inputs(cfg)
    counter = CompileCounter()
    out = torch.compile(lean, fullgraph=True, backend=counter)(video, audio)
    assert counter.frame_count == 1, f"expected one graph, got {counter.frame_count}"
    params = list(lean.trainable_parameters())
    grads = torch.autograd.grad(out.video_pooled.square().mean() + out.audio_pooled.square().mean(), params)
    eager = plain.train()(video, audio)
    expected = torch.autograd.grad(eager.video_pooled.square().mean() + eager.audio_pooled.square().mean(),
                                   list(plain.trainable_parameters()))  # fmt: skip
    for g, e in zip(grads, expected):
        assert_close(g, e, 1e-6, 1e-5, "compiled gradient with recompute")
