"""Experiment: audio and video tokens as ONE batch of rows through the shared frozen layers (the kernels issue's
"concatenated rows" question), measured before anything is built on it.

Both modalities go through the same frozen qkv / proj / fc1 / fc2 weights, today as two GEMMs each (video rows
G * N_v, audio rows G * N_a). Running them as one GEMM needs the rows in one buffer; within a frame, attention must
then stay block-diagonal (video tokens attend to video tokens, audio to audio). Cases, forward and forward+backward
(input gradients only: the weights are frozen):

- ``frozen_projections``: the four frozen projections of a block on both modalities (LN and activation left out:
  they are row-wise and cost the same either way).
  ``eager``: two GEMMs per projection, as FastSTGCMA runs them now. ``concat``: ``torch.cat`` of the two row sets
  before each GEMM, one GEMM, the result split by views (what a drop-in change would pay). ``joint``: the rows
  already live in one buffer, one GEMM and no copy: the most a joint layout of the residual stream could gain,
  which would also need every adapter kernel to read and write that layout.
- ``spatial_attention_joint``: attention within each frame on both modalities. ``sdpa``: two SDPA calls, as now.
  ``sdpa-masked``: one SDPA call over the N_v + N_a tokens of a frame with a block-diagonal boolean mask (does
  (N_v + N_a)^2 work instead of N_v^2 + N_a^2 and cannot use the flash kernel). ``xformers-blockdiag``: one
  xformers call over all rows with a ``BlockDiagonalMask`` of sequence lengths [N_v, N_a] * G (GPU only).

Every provider is checked against ``eager`` / ``sdpa`` on the case's own inputs before it is timed, so a fast wrong
answer cannot be reported. Keep the joint layout only if ``joint`` (and the attention that goes with it) beats
``eager`` by more than the adapters' extra complexity is worth; ``concat`` shows what the copies cost.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stgcma_fast.ops import torch_ops
from stgcma_fast.testing import DEFAULT_TOLERANCES, assert_close

from .common import CPU_ONLY, DEVICE, GPU_ONLY, HAS_CUDA, run_benchmark

DTYPE = torch.bfloat16 if HAS_CUDA else torch.float32
SHAPES = {  # G = B * M frames (8 clips of 10 frames on a GPU)
    "tiny": dict(G=4, Nv=17, Na=7, D=64, H=4, gpu=False),
    "vit-b16": dict(G=80, Nv=197, Na=49, D=768, H=12, gpu=True),
    "vit-l14": dict(G=80, Nv=257, Na=64, D=1024, H=16, gpu=True),
}
MODES = ("fwd", "fwd+bwd")
PROJECTIONS = ("qkv", "proj", "fc1", "fc2")


def _shape(name: str) -> dict:
    dims = SHAPES[name]
    if dims["gpu"] != HAS_CUDA:
        pytest.skip(GPU_ONLY if dims["gpu"] else CPU_ONLY)
    return dims


def _weights(D: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Frozen (weight, bias) of the four projections, as a ViT block holds them (fc1: D -> 4D, fc2: 4D -> D)."""
    dims = {"qkv": (3 * D, D), "proj": (D, D), "fc1": (4 * D, D), "fc2": (D, 4 * D)}
    return {name: ((torch.randn(o, i, device=DEVICE) / i**0.5).to(DTYPE),
                   (0.1 * torch.randn(o, device=DEVICE)).to(DTYPE)) for name, (o, i) in dims.items()}  # fmt: skip


def _inputs(rows: int, D: int, grad: bool) -> dict[str, torch.Tensor]:
    """Each projection's input rows (fc2 reads the 4D-wide hidden rows)."""
    return {name: torch.randn(rows, 4 * D if name == "fc2" else D, device=DEVICE).to(DTYPE).requires_grad_(grad)
            for name in PROJECTIONS}  # fmt: skip


def projections_provider(provider: str, w: dict, x_v: dict, x_a: dict, joint: dict, rows_v: int):
    """A callable computing every projection on both modalities, returning the outputs as (video, audio) row pairs."""
    if provider == "eager":
        return lambda: [(F.linear(x_v[n], *w[n]), F.linear(x_a[n], *w[n])) for n in PROJECTIONS]
    if provider == "concat":
        return lambda: [F.linear(torch.cat([x_v[n], x_a[n]]), *w[n]).split([rows_v, x_a[n].shape[0]])
                        for n in PROJECTIONS]  # fmt: skip
    if provider == "joint":
        return lambda: [F.linear(joint[n], *w[n]).split([rows_v, joint[n].shape[0] - rows_v]) for n in PROJECTIONS]
    raise ValueError(provider)


def _step(fn, leaves: list[torch.Tensor], mode: str):
    def run():
        outs = [t for pair in fn() for t in pair]
        if mode == "fwd+bwd":
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
            for t in leaves:
                t.grad = None
        return outs

    return run


def _check(got: list[torch.Tensor], expected: list[torch.Tensor], what: str) -> None:
    atol, rtol = DEFAULT_TOLERANCES[DTYPE]
    for i, (g, e) in enumerate(zip(got, expected)):
        assert_close(g.float(), e.float(), atol * 10, rtol, f"{what} output {i}")  # sums over D: a few ulps more


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ["eager", "concat", "joint"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_frozen_projections(benchmark, shape, provider, mode):
    d = _shape(shape)
    G, Nv, Na, D = d["G"], d["Nv"], d["Na"], d["D"]
    grad = mode == "fwd+bwd"
    w = _weights(D)
    x_v, x_a = _inputs(G * Nv, D, grad), _inputs(G * Na, D, grad)
    joint = {n: torch.cat([x_v[n], x_a[n]]).detach().requires_grad_(grad) for n in PROJECTIONS}
    fn = projections_provider(provider, w, x_v, x_a, joint, G * Nv)
    with torch.no_grad():
        expected = [t for pair in projections_provider("eager", w, x_v, x_a, joint, G * Nv)() for t in pair]
        _check([t for pair in fn() for t in pair], expected, provider)
    leaves = list(joint.values()) if provider == "joint" else [*x_v.values(), *x_a.values()]
    flops = 2 * G * (Nv + Na) * D * D * (3 + 1 + 4 + 4) * (1 if mode == "fwd" else 2)
    run_benchmark(benchmark, _step(fn, leaves, mode), flops=flops, op="frozen_projections", provider=provider,
                  mode=mode, shape=shape, dtype=str(DTYPE), dims=d)


def _xformers_blockdiag(qkv_joint: torch.Tensor, G: int, Nv: int, Na: int, H: int, scale: float) -> torch.Tensor:
    """Block-diagonal attention over joint rows (G * (Nv + Na), 3D), frame g's video rows then its audio rows."""
    import xformers.ops as xops
    from xformers.ops.fmha.attn_bias import BlockDiagonalMask

    rows, C3 = qkv_joint.shape
    hd = C3 // (3 * H)
    q, k, v = qkv_joint.view(1, rows, 3, H, hd).unbind(2)  # each (1, rows, H, hd): BMHK with every frame in M
    if torch.is_grad_enabled() and qkv_joint.requires_grad:
        q, k, v = (t.contiguous() for t in (q, k, v))
    mask = BlockDiagonalMask.from_seqlens([Nv, Na] * G)
    return xops.memory_efficient_attention(q, k, v, attn_bias=mask, scale=scale).view(rows, H * hd)


def attention_provider(provider: str, qkv_v: torch.Tensor, qkv_a: torch.Tensor, qkv_joint: torch.Tensor, H: int,
                       scale: float):  # fmt: skip
    """A callable returning [(out_v, out_a)]: out_v (G, Nv, D), out_a (G, Na, D). ``qkv_joint`` (G, Nv + Na, 3D):
    frame g's video rows, then its audio rows."""
    G, Nv, Na = qkv_v.shape[0], qkv_v.shape[1], qkv_a.shape[1]
    if provider == "sdpa":
        return lambda: [(torch_ops.spatial_attention(qkv_v, H, scale), torch_ops.spatial_attention(qkv_a, H, scale))]
    if provider == "sdpa-masked":
        idx = torch.arange(Nv + Na, device=qkv_v.device) < Nv
        mask = idx[:, None] == idx[None, :]  # True where the two tokens are of the same modality

        def masked():
            C3 = qkv_joint.shape[-1]
            hd = C3 // (3 * H)
            q, k, v = qkv_joint.view(G, Nv + Na, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
            return [out.transpose(1, 2).reshape(G, Nv + Na, H * hd).split([Nv, Na], dim=1)]

        return masked
    if provider == "xformers-blockdiag":
        try:
            import xformers.ops  # noqa: F401
        except ImportError as err:
            pytest.skip(f"xformers not installed: {err}")
        if qkv_joint.device.type != "cuda":
            pytest.skip("xformers has no CPU kernels")
        rows = qkv_joint.flatten(0, 1)
        return lambda: [_xformers_blockdiag(rows, G, Nv, Na, H, scale).view(G, Nv + Na, -1).split([Nv, Na], 1)]
    raise ValueError(provider)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ["sdpa", "sdpa-masked", "xformers-blockdiag"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_spatial_attention_joint(benchmark, shape, provider, mode):
    d = _shape(shape)
    G, Nv, Na, D, H = d["G"], d["Nv"], d["Na"], d["D"], d["H"]
    grad = mode == "fwd+bwd"
    scale = (D // H) ** -0.5
    qkv_v = torch.randn(G, Nv, 3 * D, device=DEVICE).to(DTYPE).requires_grad_(grad)
    qkv_a = torch.randn(G, Na, 3 * D, device=DEVICE).to(DTYPE).requires_grad_(grad)
    qkv_joint = torch.cat([qkv_v, qkv_a], dim=1).detach().requires_grad_(grad)  # (G, Nv + Na, 3D), frame by frame
    fn = attention_provider(provider, qkv_v, qkv_a, qkv_joint, H, scale)
    with torch.no_grad():
        expected = [t for pair in attention_provider("sdpa", qkv_v, qkv_a, qkv_joint, H, scale)() for t in pair]
        _check([t for pair in fn() for t in pair], expected, provider)
    leaves = [qkv_joint] if provider != "sdpa" else [qkv_v, qkv_a]
    flops = 4 * G * (Nv * Nv + Na * Na) * D * (1 if mode == "fwd" else 3)  # the useful work (masked does more)
    run_benchmark(benchmark, _step(fn, leaves, mode), flops=flops, op="spatial_attention_joint", provider=provider,
                  mode=mode, shape=shape, dtype=str(DTYPE), dims=d)
