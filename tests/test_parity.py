"""FastSTGCMA against ReferenceSTGCMA: same weights -> same outputs and same gradients of every trainable tensor."""

from __future__ import annotations

import pytest
import torch

from stgcma_fast import AVEHead
from stgcma_fast.testing import assert_close

from .helpers import inputs, model_pair, tiny_config

# The parameter-free AV attention turns random weights into large scores and near one-hot softmaxes, which amplify
# rounding: float64 (weights std 0.3) gives a sharp comparison, fp32 runs with milder weights (std 0.1).
PRECISIONS = {
    "float64": (torch.float64, 0.3, 1e-9, 1e-7),
    "float32": (torch.float32, 0.1, 5e-5, 5e-4),
}
ATOL, RTOL = PRECISIONS["float64"][2:]

CASES = {
    "bidirectional": dict(fusion="bidirectional"),
    "a2v": dict(fusion="a2v"),
    "v2a": dict(fusion="v2a"),
    "no-fusion": dict(fusion="none"),
    "video-only": dict(branches="video"),
    "audio-only": dict(branches="audio"),
    "temporal-only": dict(stages=("temporal",)),
    "spatial+global": dict(stages=("spatial", "global")),
    "spatial-only": dict(stages=("spatial",)),
    "global-only": dict(stages=("global",)),
    "frozen-only": dict(stages=()),
    "shared-gates": dict(shared_gates=True),
    "sum-reduction": dict(audio_patch_reduction="sum"),
    "video-only-temporal": dict(branches="video", stages=("temporal", "global")),
    "r-48-one-frame": dict(adapter=48, num_frames=1),
}


def _run(model, video, audio, grad_out):
    model.zero_grad(set_to_none=True)
    out = model(video, audio)
    loss = sum((t * g).sum() for t, g in zip(_tensors(out), grad_out) if t is not None)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return out, grads


def _tensors(out):
    return (out.video_tokens, out.audio_tokens, out.logits)


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_outputs_and_gradients_match(case, precision):
    dtype, std, atol, rtol = PRECISIONS[precision]
    cfg = tiny_config(**CASES[case])
    ref, fast = model_pair(cfg, std=std, dtype=dtype)
    ref.eval(), fast.eval()
    video, audio = inputs(cfg, dtype=dtype)
    with torch.no_grad():
        expected = ref(video, audio)
    g = torch.Generator().manual_seed(3)
    grad_out = [None if t is None else torch.randn(t.shape, generator=g).to(dtype) for t in _tensors(expected)]
    out_r, grads_r = _run(ref, video, audio, grad_out)
    out_f, grads_f = _run(fast, video, audio, grad_out)
    for name in ("video_tokens", "audio_tokens", "video_cls", "audio_cls"):
        r, f = getattr(out_r, name), getattr(out_f, name)
        assert (r is None) == (f is None), name
        if r is not None:
            assert_close(f, r, atol, rtol, name)
    assert grads_r.keys() == grads_f.keys()
    for name, gr in grads_r.items():
        assert gr is not None, f"{name} got no gradient in the reference"
        assert grads_f[name] is not None, f"{name} got no gradient in FastSTGCMA"
        assert_close(grads_f[name], gr, atol, rtol * 10 if precision == "float32" else rtol, f"grad {name}")
    # Every trainable tensor must actually influence the loss (else its parity is vacuous), except the up/gate
    # tensors of a stage whose output is never read, which does not happen in these configs.
    dead = [n for n, gr in grads_r.items() if float(gr.abs().max()) == 0.0]
    assert not dead, f"trainable tensors with an all-zero gradient: {dead}"


def test_parity_with_head_and_logits():
    cfg = tiny_config()
    ref, fast = model_pair(cfg)
    ref.head = AVEHead(ref.embed_dim)
    fast.head = AVEHead(fast.embed_dim)
    fast.head.load_state_dict(ref.head.state_dict())
    ref.eval(), fast.eval()
    ref.head.double(), fast.head.double()
    video, audio = inputs(cfg, dtype=torch.float64)
    lr, lf = ref(video, audio).logits, fast(video, audio).logits
    assert lr.shape == (2, cfg.num_frames, 29)
    assert_close(lf, lr, ATOL, RTOL, "logits")


def test_gradient_checkpointing_matches():
    cfg = tiny_config()
    ref, fast = model_pair(cfg, grad_checkpointing=True)
    ref.eval(), fast.train()  # checkpointing is active in training mode; dropout/drop path are zero here
    video, audio = inputs(cfg, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        shapes = [t.shape for t in _tensors(ref(video, audio)) if t is not None]
    grad_out = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] + [None]
    _, grads_r = _run(ref, video, audio, grad_out)
    _, grads_f = _run(fast, video, audio, grad_out)
    for name, gr in grads_r.items():
        assert_close(grads_f[name], gr, ATOL, RTOL, f"grad {name}")


def test_state_dict_round_trip_between_implementations():
    cfg = tiny_config()
    ref, fast = model_pair(cfg)
    assert list(ref.state_dict()) == list(fast.state_dict())
    ref2 = type(ref)(cfg)
    missing, unexpected = ref2.load_state_dict(fast.state_dict(), strict=True)
    assert not missing and not unexpected


def test_drop_path_is_active_in_training_and_off_in_eval():
    cfg = tiny_config(drop_path_rate=0.9, stages=("temporal",))
    _, fast = model_pair(cfg)
    video, audio = inputs(cfg, dtype=torch.float64)
    fast.eval()
    with torch.no_grad():
        a, b = fast(video, audio).video_tokens, fast(video, audio).video_tokens
    assert torch.equal(a, b), "eval must be deterministic"
    fast.train()
    with torch.no_grad():
        c, d = fast(video, audio).video_tokens, fast(video, audio).video_tokens
    assert not torch.equal(c, d), "drop path at rate 0.9 should make training forwards differ"


def test_bf16_autocast_end_to_end_close_to_reference():
    """Under CPU bf16 autocast both implementations round the same GEMM inputs; outputs stay close and finite."""
    cfg = tiny_config()
    ref, fast = model_pair(cfg, std=0.1, dtype=torch.float32)
    ref.eval(), fast.eval()
    video, audio = inputs(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_r, out_f = ref(video, audio), fast(video, audio)
    for name in ("video_tokens", "audio_tokens"):
        r, f = getattr(out_r, name).float(), getattr(out_f, name).float()
        assert torch.isfinite(f).all()
        assert_close(f, r, 0.05, 0.01, name)  # bf16: 8 mantissa bits; observed max error 0.023 on |x| <= 4.4
    loss = out_f.video_cls.float().square().mean() + out_f.audio_cls.float().square().mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in fast.trainable_parameters())
