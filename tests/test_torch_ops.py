"""The plain-torch op contracts: the attention ops against explicit softmax math, and the layouts they hand SDPA."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from stgcma_fast.ops import torch_ops


def _explicit_attention(q, k, v, scale):  # (..., L, hd)
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Record the inputs torch_ops passes to F.scaled_dot_product_attention (and still run it)."""
    calls = []
    real = torch_ops.F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append((q, k, v))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch_ops.F, "scaled_dot_product_attention", spy)
    return calls


@pytest.mark.parametrize("B,M,N,H,hd", [(2, 10, 5, 3, 8), (1, 4, 17, 2, 16)])
def test_temporal_attention_is_attention_over_frames_with_4d_sdpa_inputs(B, M, N, H, hd, sdpa_calls):
    qkv = torch.randn(B, M, N, 3 * H * hd, dtype=torch.float64)
    out = torch_ops.temporal_attention(qkv, H, hd**-0.5)
    # SDPA's fused CUDA kernels take 4-D inputs only (5-D falls back to the unfused math path)
    assert [t.dim() for t in sdpa_calls[0]] == [4, 4, 4]
    assert tuple(sdpa_calls[0][0].shape) == (B * N, H, M, hd)
    q, k, v = qkv.view(B, M, N, 3, H, hd).unbind(3)  # (B, M, N, H, hd)
    q, k, v = (t.permute(0, 2, 3, 1, 4) for t in (q, k, v))  # (B, N, H, M, hd): frames are the sequence
    expected = _explicit_attention(q, k, v, hd**-0.5).permute(0, 3, 1, 2, 4).reshape(B, M, N, H * hd)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)


def test_spatial_attention_is_attention_over_tokens_with_4d_sdpa_inputs(sdpa_calls):
    G, N, H, hd = 3, 7, 2, 8
    qkv = torch.randn(G, N, 3 * H * hd, dtype=torch.float64)
    out = torch_ops.spatial_attention(qkv, H, hd**-0.5)
    assert [t.dim() for t in sdpa_calls[0]] == [4, 4, 4]
    q, k, v = qkv.view(G, N, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (G, H, N, hd)
    expected = _explicit_attention(q, k, v, hd**-0.5).transpose(1, 2).reshape(G, N, H * hd)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)


def _explicit_temporal(qkv, H, scale, bias):  # softmax over frames j of q_i . k_j * scale + bias[h, i, j]
    B, M, N, C3 = qkv.shape
    hd = C3 // (3 * H)
    q, k, v = qkv.view(B, M, N, 3, H, hd).unbind(3)  # (B, M, N, H, hd)
    s = torch.einsum("binhd,bjnhd->bnhij", q, k) * scale + bias
    return torch.einsum("bnhij,bjnhd->binhd", s.softmax(-1), v).reshape(B, M, N, H * hd)


@pytest.mark.parametrize("H", [4, 8, 16, 32])
def test_temporal_attention_bias_and_its_gradient(H, sdpa_calls):
    """Swin's temporal relative-position bias: (H, M, M) gathered from a (2M - 1, H) table, added to the score of
    frame i vs frame j; output, dqkv and dbias (the sum of dL/dscores over batch and tokens) match fp64 explicit
    math, and the gradient reaches the table through the gather."""
    B, M, N, hd = 2, 10, 3, 32
    g = torch.Generator().manual_seed(H)
    qkv = torch.randn(B, M, N, 3 * H * hd, dtype=torch.float64, generator=g)
    table = torch.randn(2 * M - 1, H, dtype=torch.float64, generator=g)
    idx = torch.arange(M)[:, None] - torch.arange(M)[None, :] + M - 1  # (M, M): i - j + M - 1
    leaves = [qkv.clone().requires_grad_(), table.clone().requires_grad_()]
    out = torch_ops.temporal_attention(leaves[0], H, hd**-0.5, leaves[1][idx].permute(2, 0, 1))
    assert tuple(sdpa_calls[0][0].shape) == (B * N, H, M, hd)
    refs = [qkv.clone().requires_grad_(), table.clone().requires_grad_()]
    ref = _explicit_temporal(refs[0], H, hd**-0.5, refs[1][idx].permute(2, 0, 1))
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    up = torch.randn(out.shape, dtype=torch.float64, generator=g)
    for a, b in zip(torch.autograd.grad(out, leaves, up), torch.autograd.grad(ref, refs, up)):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)


def test_temporal_attention_without_bias_is_unchanged():
    qkv = torch.randn(1, 10, 4, 3 * 4 * 32, dtype=torch.float64)
    zero = torch.zeros(4, 10, 10, dtype=torch.float64)
    torch.testing.assert_close(torch_ops.temporal_attention(qkv, 4, 0.2),
                               torch_ops.temporal_attention(qkv, 4, 0.2, zero), atol=1e-14, rtol=1e-14)


@pytest.mark.parametrize("shift", [0, 3], ids=["W-MSA", "SW-MSA"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_window_attention_matches_timm(shift, dtype):
    """spatial_attention with Swin's relative-position bias and shift mask equals timm's own WindowAttention (qkv
    projection before, output projection after) on the windows of a tiny shifted / unshifted block."""
    from timm.models.swin_transformer import SwinTransformerBlock

    torch.manual_seed(0)
    C, H, res, B = 64, 2, 14, 3  # 2 x 2 windows of 7 x 7 per image
    block = SwinTransformerBlock(C, (res, res), num_heads=H, window_size=7, shift_size=shift).to(dtype).eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_(0, 1.0)
    attn = block.attn
    windows = torch.randn(B * 4, 49, C, dtype=dtype)
    mask = block.attn_mask  # (nW, 49, 49) or None
    assert (mask is None) == (shift == 0)
    with torch.no_grad():
        expected = attn(windows, mask=mask)
        qkv = attn.qkv(windows)
        got = attn.proj(torch_ops.spatial_attention(qkv, H, attn.scale, attn._get_rel_pos_bias()[0], mask))
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


def test_spatial_attention_rejects_a_mask_that_does_not_fit():
    qkv = torch.randn(6, 49, 3 * 2 * 8)
    with pytest.raises(ValueError, match=r"expected mask of shape \(nW, 49, 49\) with nW dividing G = 6, got \(4, 49"):
        torch_ops.spatial_attention(qkv, 2, 1.0, None, torch.zeros(4, 49, 49))
    with pytest.raises(ValueError, match=r"expected bias of shape \(H, N, N\) = \(2, 49, 49\), got \(3, 49, 49\)"):
        torch_ops.spatial_attention(qkv, 2, 1.0, torch.zeros(3, 49, 49))


# ----------------------------------------------------------------------------------------------------------------------
# The global AV-Adapter of a Swin stage 1 runs over N = 3,136 tokens per frame: the torch backend must never hold an
# N x N score matrix (SDPA with a head axis: its fused kernels, tiled on CPU too, never write one).
def _plain_av_adapter(u_v, u_a, x_v, x_a, wdv, bdv, wuv, buv, wda, bda, wua, bua, alpha, beta):
    """The AV-Adapter as plain matmul + softmax (materialises both N_v x N_a score matrices)."""
    h_v, h_a = F.gelu(F.linear(u_v, wdv, bdv)), F.gelu(F.linear(u_a, wda, bda))
    hv = h_v + alpha * torch.softmax(h_v @ h_a.transpose(-1, -2), -1) @ h_a
    ha = h_a + beta * torch.softmax(h_a @ h_v.transpose(-1, -2), -1) @ h_v
    return x_v + u_v + F.linear(hv, wuv, buv), x_a + u_a + F.linear(ha, wua, bua)


def _av_args(G: int, N_v: int, N_a: int, D: int, r: int, dtype=torch.float32, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rn(*shape, std=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * std).to(dtype).requires_grad_()

    w = lambda: [rn(r, D, std=D**-0.5), rn(r, std=0.1), rn(D, r, std=r**-0.5), rn(D, std=0.1)]  # noqa: E731
    return [rn(G, N_v, D), rn(G, N_a, D), rn(G, N_v, D), rn(G, N_a, D), *w(), *w(), rn(()), rn(())]


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any aten op returns (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.numel, self.op = 0, ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.op = t.numel(), str(func)
        return out


@pytest.mark.parametrize("G, N_v, N_a, D, r", [(2, 17, 9, 24, 16), (1, 49, 49, 40, 24), (3, 5, 11, 16, 48)])
def test_av_adapter_matches_the_plain_chain(G, N_v, N_a, D, r):
    """Output and every gradient of the SDPA formulation equal the plain matmul + softmax chain (fp64)."""
    args = _av_args(G, N_v, N_a, D, r, torch.float64)
    out, ref = torch_ops.av_adapter(*args), _plain_av_adapter(*args)
    up = [torch.randn_like(o) for o in out]
    got = torch.autograd.grad(out, args, up)
    want = torch.autograd.grad(ref, args, up)
    for o, e in zip(out, ref):
        torch.testing.assert_close(o, e, atol=1e-12, rtol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("fn, holds_scores", [(torch_ops.av_adapter, False), (_plain_av_adapter, True)],
                         ids=["torch-backend", "plain-chain"])  # fmt: skip
def test_global_av_adapter_at_3136_tokens_never_holds_n_by_n(fn, holds_scores):
    """One frame of the Swin-B stage-1 global AV-Adapter (N_v = N_a = 3,136, r = 32, C = 128), forward and backward:
    no aten op returns a tensor of N * N / 4 elements or more (the plain chain, which does, shows the check bites)."""
    N = 3136
    args = _av_args(1, N, N, 128, 32)
    with _LargestOutput() as seen:
        out_v, out_a = fn(*args)
        (out_v.sum() + out_a.square().sum()).backward()
    assert (seen.numel >= N * N // 4) == holds_scores, (seen.numel, seen.op)
    if not holds_scores:
        assert seen.numel <= N * 128, (seen.numel, seen.op)  # nothing wider than an (N, C) activation


_PEAK_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_torch_ops import _av_args, _plain_av_adapter
from stgcma_fast.ops import torch_ops


def status(field):  # kB, from /proc/self/status (VmHWM: this process's peak resident set since the last reset)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))


torch.set_num_threads(1)
fn = torch_ops.av_adapter if sys.argv[1] == "torch" else _plain_av_adapter
fn(*_av_args(1, 64, 64, 128, 32))  # warm up (allocator, kernels) before measuring
args = _av_args(1, 3136, 3136, 128, 32)
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current resident set
base = status("VmRSS")
out_v, out_a = fn(*args)
(out_v.sum() + out_a.sum()).backward()
print((status("VmHWM") - base) * 1024)
"""


def test_global_av_adapter_peak_memory_in_a_fresh_process():
    """Peak resident memory of one frame's forward + backward at N = 3,136 in a fresh process (torch's CPU allocator
    is invisible to tracemalloc; the process's peak resident set VmHWM, reset just before the call, sees everything;
    not ru_maxrss, which keeps the forked pytest parent's peak across exec): the torch backend stays below two fp32
    N x N matrices (39 MB each; it measures about half of one: a few dozen (N, C) activations and gradients, and
    allocator slack), the plain chain needs more than four (scores, probabilities and their gradients both ways)."""
    import subprocess
    import sys
    from pathlib import Path

    script = _PEAK_SCRIPT.format(tests=str(Path(__file__).parent))
    peak = {}
    for name in ("torch", "plain"):
        run = subprocess.run([sys.executable, "-c", script, name], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        peak[name] = int(run.stdout.split()[-1])
    n_by_n = 3136 * 3136 * 4
    assert peak["torch"] < 2 * n_by_n, peak  # the scores and probabilities of one direction alone would be 2
    assert peak["plain"] > 4 * n_by_n, peak
