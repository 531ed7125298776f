"""Memory-lean pieces of the fast path keep less for backward and compute the same gradients."""

from __future__ import annotations

import pytest
import torch
from timm.layers import QuickGELU

from stgcma_fast.memory import saved_activation_bytes
from stgcma_fast.ops.activations import lean_activation, quick_gelu
from stgcma_fast.testing import assert_close


def test_quick_gelu_matches_timm_and_keeps_only_its_input():
    x = torch.randn(64, 96, dtype=torch.float64, requires_grad=True)
    g = torch.randn(64, 96, dtype=torch.float64)
    expected = QuickGELU()(x)
    (dx_expected,) = torch.autograd.grad(expected, x, g)
    got = quick_gelu(x)
    (dx,) = torch.autograd.grad(got, x, g)
    assert_close(got, expected, 1e-12, 1e-12, "quick_gelu")
    assert_close(dx, dx_expected, 1e-12, 1e-12, "d quick_gelu")
    assert torch.autograd.gradcheck(quick_gelu, (x[:3, :4].detach().clone().requires_grad_(),))
    y = x.detach().float().requires_grad_()
    lean = saved_activation_bytes(lambda: quick_gelu(y * 1))
    plain = saved_activation_bytes(lambda: QuickGELU()(y * 1))
    assert lean == y.numel() * 4 and plain == 2 * lean


def test_lean_activation_mapping():
    assert lean_activation(QuickGELU()) is quick_gelu
    x = torch.randn(5)
    assert torch.equal(lean_activation(torch.nn.GELU(approximate="tanh"))(x), torch.nn.GELU(approximate="tanh")(x))
    relu = torch.nn.ReLU()
    assert lean_activation(relu) is relu


def _frozen_weight_casts(model, video, audio) -> tuple[dict[str, int], object]:
    """Under CPU bf16 autocast, a training forward of ``model``: (how many distinct bf16 storages saved for backward
    hold the cast of each frozen projection weight, the output). Casts are recognised by value: a saved bf16 tensor
    equal to the bf16 rounding of a weight (or of its transpose)."""
    weights = {name: p.detach().to(torch.bfloat16) for name, p in model.backbone.named_parameters()
               if name.startswith("blocks.") and name.endswith(("qkv.weight", "proj.weight", "fc1.weight",
                                                                "fc2.weight"))}  # fmt: skip
    storages: dict[str, set[int]] = {name: set() for name in weights}

    def pack(t):
        if t.dtype == torch.bfloat16:
            for name, w in weights.items():  # a GEMM saves the weight or its transposed view
                if any(t.shape == v.shape and torch.equal(t, v) for v in (w, w.t())):
                    storages[name].add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(video, audio)
    return {name: len(s) for name, s in storages.items()}, out


def test_frozen_weights_are_cast_once_per_block_under_autocast(monkeypatch):
    """Autocast caches the casts of weights that require grad only; FastSTGCMA casts each frozen projection once per
    block, so its four GEMMs (temporal and spatial, video and audio) keep one copy for backward, not four, and the
    outputs and gradients are bit-identical to casting at every GEMM as autocast would."""
    from stgcma_fast import model as model_module

    from .helpers import inputs, model_pair, tiny_config

    cfg = tiny_config()
    _, fast = model_pair(cfg, std=0.1, dtype=torch.float32)
    fast.train()
    video, audio = inputs(cfg)
    counts, out = _frozen_weight_casts(fast, video, audio)
    assert counts and all(n == 1 for n in counts.values()), counts
    loss = out.video_cls.float().square().mean() + out.audio_cls.float().square().mean()
    grads = torch.autograd.grad(loss, list(fast.trainable_parameters()))

    def per_gemm_casts(block, device_type):  # the former behaviour: autocast casts the fp32 weight at each GEMM
        layers = (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2)
        return model_module.FrozenWeights(*((m.weight, m.bias) for m in layers))

    monkeypatch.setattr(model_module, "frozen_weights", per_gemm_casts)
    counts_before, out_before = _frozen_weight_casts(fast, video, audio)
    assert counts_before["blocks.0.attn.qkv.weight"] == 4 and counts_before["blocks.0.mlp.fc1.weight"] == 2
    loss_before = out_before.video_cls.float().square().mean() + out_before.audio_cls.float().square().mean()
    grads_before = torch.autograd.grad(loss_before, list(fast.trainable_parameters()))
    assert torch.equal(out.video_tokens, out_before.video_tokens)
    assert torch.equal(out.audio_tokens, out_before.audio_tokens)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_before))


def test_frozen_weights_without_autocast_are_the_parameters():
    from stgcma_fast.model import frozen_weights

    from .helpers import model_pair, tiny_config

    _, fast = model_pair(tiny_config(), dtype=torch.float32)
    block = fast.backbone.blocks[0]
    w = frozen_weights(block, "cpu")
    assert w.qkv[0] is block.attn.qkv.weight and w.fc2[1] is block.mlp.fc2.bias
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = frozen_weights(block, "cpu")
        assert w.fc1[0].dtype == torch.bfloat16 and torch.equal(w.fc1[0], block.mlp.fc1.weight.to(torch.bfloat16))
        assert frozen_weights(block, "cuda").qkv[0] is block.attn.qkv.weight  # autocast is on for cpu only


RECOMPUTE_CASES = [("ffn",), ("attention",), ("attention", "ffn")]


def _run(model, video, audio, amp: bool):
    """(bytes saved for backward, output, gradients of the trainable parameters) of one training step."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        saved = saved_activation_bytes(lambda: model(video, audio), exclude=model.parameters())
        out = model(video, audio)
    loss = out.video_cls.float().square().mean() + out.audio_cls.float().square().mean()
    return saved, out, torch.autograd.grad(loss, list(model.trainable_parameters()))


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("recompute", RECOMPUTE_CASES, ids="+".join)
def test_recompute_is_exact_and_keeps_less(recompute, amp):
    """Selective recomputation reruns the same ops in backward: outputs and gradients are bit-identical, and what the
    step keeps shrinks by what the recomputed segments would have kept."""
    from stgcma_fast import FastSTGCMA

    from .helpers import inputs, model_pair, tiny_config

    cfg = tiny_config()
    _, plain = model_pair(cfg, std=0.1, dtype=torch.float32)
    lean = FastSTGCMA(cfg, recompute=recompute)
    lean.load_state_dict(plain.state_dict())
    plain.train(), lean.train()
    video, audio = inputs(cfg)
    saved_plain, out_plain, grads_plain = _run(plain, video, audio, amp)
    saved_lean, out_lean, grads_lean = _run(lean, video, audio, amp)
    assert torch.equal(out_lean.video_tokens, out_plain.video_tokens)
    assert torch.equal(out_lean.audio_tokens, out_plain.audio_tokens)
    assert all(torch.equal(a, b) for a, b in zip(grads_lean, grads_plain))
    B, M, D = video.shape[0], cfg.num_frames, plain.embed_dim
    rows = B * M * (plain.num_video_tokens + plain.num_audio_tokens)  # token rows of both modalities, per pass
    e = 2 if amp else 4  # bytes of a GEMM output (bf16 under autocast)
    ffn = plain.depth * rows * 4 * D * e  # the fc1 output
    attention = plain.depth * 2 * rows * 4 * D * e  # temporal and spatial: q, k, v and the attention output
    expected = (ffn if "ffn" in recompute else 0) + (attention if "attention" in recompute else 0)
    saved = saved_plain - saved_lean
    # Beyond those: the layer norms' per-row statistics and the attention's per-row log-sum-exp, a few % more.
    assert expected <= saved <= expected * 1.05, (saved, expected)
    if recompute == ("ffn",) and not amp:  # exactly the fc1 output and LN2's fp32 mean and rstd
        assert saved == ffn + plain.depth * rows * 2 * 4, (saved, ffn)


def test_recompute_option_is_checked():
    from stgcma_fast import FastSTGCMA

    from .helpers import tiny_config

    model = FastSTGCMA(tiny_config(), recompute="ffn")
    assert model.recompute == {"ffn"}
    with pytest.raises(ValueError, match=r"expected recompute to be a subset of \('attention', 'ffn'\), got \['mlp'\]"):
        FastSTGCMA(tiny_config(), recompute=("ffn", "mlp"))
