"""Large cross-attention scores (the AV-Adapter softmax has no 1/sqrt(r)) stay finite in both implementations."""

from __future__ import annotations

import pytest
import torch

from stgcma_fast import FastSTGCMA, ReferenceSTGCMA
from stgcma_fast.ops import torch_ops
from stgcma_fast.testing import assert_close

from .helpers import inputs, tiny_config


@pytest.mark.parametrize("impl", [ReferenceSTGCMA, FastSTGCMA])
def test_scores_around_1e4_give_finite_outputs_and_gradients(impl):
    cfg = tiny_config()
    model = impl(cfg).eval()
    with torch.no_grad():
        for ad in model.adapters:
            for av in (ad.spatial, ad.global_):
                for t in (av.video, av.audio):
                    t.down.bias.fill_(100.0)  # h ~ 100 in every channel -> h_v . h_a ~ r * 1e4
                    t.up.weight.normal_(std=1e-3)
            for name in ("spatial_alpha", "spatial_beta", "global_alpha", "global_beta"):
                getattr(ad, name).fill_(0.5)
    video, audio = inputs(cfg)
    out = model(video, audio)
    av = model.adapters[0].spatial
    # premise: h_v . h_a is far beyond exp's range
    assert float(av.video.down.bias.detach() @ av.audio.down.bias.detach()) > 1e5
    loss = out.video_tokens.square().mean() + out.audio_tokens.square().mean()
    loss.backward()
    assert torch.isfinite(out.video_tokens).all() and torch.isfinite(out.audio_tokens).all()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n


def test_op_softmax_is_max_subtracted_at_1e4():
    """The op chain at scores ~1e4 equals the same maths in float64 (a naive exp would overflow to inf/NaN)."""
    G, Nv, Na, D, r = 2, 5, 3, 8, 4
    g = torch.Generator().manual_seed(0)
    t = lambda *s, scale=1.0: (scale * torch.randn(*s, generator=g)).requires_grad_()  # noqa: E731
    args = [t(G, Nv, D, scale=30.0), t(G, Na, D, scale=30.0), t(G, Nv, D), t(G, Na, D),
            t(r, D), t(r), t(D, r), t(D), t(r, D), t(r), t(D, r), t(D), t(()), t(())]
    out32 = torch_ops.av_adapter(*args)
    out64 = torch_ops.av_adapter(*[a.detach().double() for a in args])
    for a, b, name in zip(out32, out64, ("video", "audio")):
        assert torch.isfinite(a).all(), name
        assert_close(a, b, 1e-2, 1e-3, name)
    sum(o.sum() for o in out32).backward()
    assert all(torch.isfinite(a.grad).all() for a in args)
