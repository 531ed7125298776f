"""The traffic counter (stgcma_fast.roofline), the kernels' FLOP formulas, and the README's roofline block."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from bench import roofline as bench_roofline
from bench.cases import MODES, kernel_args
from stgcma_fast import FastSTGCMA, ReferenceSTGCMA
from stgcma_fast.flops import stgcma_flops
from stgcma_fast.roofline import count, model_forward_traffic, model_train_traffic, tensor_bytes

from .helpers import tiny_config


def _one(fn):
    traffic = count(fn)
    assert traffic.launches == 1, [op.name for op in traffic.ops]
    return traffic.ops[0]


def test_a_matmul_reads_its_operands_writes_its_result_and_counts_its_flops():
    a, b = torch.randn(6, 5), torch.randn(5, 3)
    op = _one(lambda: a @ b)
    assert (op.name, op.read, op.written, op.flops) == ("aten.mm", (30 + 15) * 4, 18 * 4, 2 * 6 * 5 * 3)
    assert op.seconds(bandwidth=1e3, flop_rate=1e9) == pytest.approx((45 + 18) * 4 / 1e3)  # memory-bound
    assert op.seconds(bandwidth=1e12, flop_rate=1.0) == 180.0  # compute-bound


def test_views_and_allocations_move_nothing_copies_and_in_place_ops_move_what_they_touch():
    x = torch.randn(4, 8, dtype=torch.float16)
    assert count(lambda: (x.view(8, 4), x.t(), x[1:], x.unsqueeze(0), torch.empty(3), x.detach())).launches == 0
    y = torch.empty(8, 4, dtype=torch.float32)
    op = _one(lambda: y.copy_(x.t()))  # reads the fp16 source once, writes the fp32 destination once
    assert (op.read, op.written) == (32 * 2, 32 * 4)
    z = torch.randn(4, 8, dtype=torch.float16)
    op = _one(lambda: z.add_(x))  # reads both, writes its target once (not again as its return value)
    assert (op.read, op.written) == (2 * 32 * 2, 32 * 2)
    op = _one(lambda: x.new_zeros(100))  # takes dtype and device from x, reads nothing
    assert (op.read, op.written) == (0, 100 * 2)


def test_by_op_sums_launches_bytes_flops_and_floor_per_op_name():
    a, b = torch.randn(6, 5), torch.randn(5, 3)
    traffic = count(lambda: (a @ b, a @ b, a + 1))
    rows = traffic.by_op(bandwidth=1e3, flop_rate=1e12)
    assert [(name, n) for name, n, *_ in rows] == [("aten.mm", 2), ("aten.add", 1)]
    assert rows[0][2:] == (2 * 63 * 4, 2 * 180, pytest.approx(2 * 63 * 4 / 1e3))
    assert sum(row[4] for row in rows) == pytest.approx(traffic.seconds(1e3, 1e12))


def test_a_broadcast_operand_is_read_once():
    bias = torch.randn(8)
    assert tensor_bytes(bias.expand(1000, 8)) == 8 * 4
    x = torch.randn(1000, 8)
    op = _one(lambda: x + bias.expand(1000, 8))
    assert op.read == (8000 + 8) * 4


def test_sdpa_flops_are_counted_on_cpu_too():
    q = torch.randn(2, 3, 10, 8)
    traffic = count(lambda: F.scaled_dot_product_attention(q, q, q))
    assert traffic.flops == 4 * 2 * 3 * 10 * 10 * 8


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op, dims", [
    ("av_adapter", dict(B=2, M=3, Nv=17, Na=7, D=48, r=24)),
    ("av_adapter", dict(B=1, M=4, Nv=197, Na=49, D=96, r=96)),
    ("t_adapter", dict(B=2, M=3, Nv=17, D=48, r=24)),
    ("temporal_attention", dict(B=2, M=5, Nv=9, D=48, H=4)),
])
def test_fused_ops_count_the_same_flops_as_the_torch_chain_they_replace(op, dims, mode):
    """The kernels' registered FLOP formulas agree with torch's count of the op chain, forward and backward."""
    counts = [bench_roofline.case_traffic(op, dims, mode, provider, torch.float32) for provider in ("fused", "torch")]
    fused, chain = counts
    assert fused.flops == chain.flops > 0
    assert fused.bytes < chain.bytes and fused.launches < chain.launches


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", ["quick_gelu", "layer_norm"])
def test_fused_elementwise_ops_move_less_than_the_torch_chain(op, mode):
    """QuickGELU (3 kernels forward, 8 backward in torch) and LayerNorm with its cast to bf16 (2 forward, 3 backward)
    against one pass each way, at the tiny case (B * M * N_v = 68 rows of D = 64, bf16); no FLOPs counted."""
    chain = bench_roofline.kernel_traffic(op, "tiny", mode, "torch")
    fused = bench_roofline.kernel_traffic(op, "tiny", mode, "fused")
    assert fused.flops == chain.flops == 0
    assert fused.launches == (1 if mode == "fwd" else 2) < chain.launches
    assert fused.bytes < chain.bytes
    rows, D = 1 * 4 * 17, 64
    if op == "quick_gelu":  # bf16 x read and y written; backward: x and the gradient read, dx written
        assert fused.bytes == (2 if mode == "fwd" else 5) * rows * 4 * D * 2
    else:  # fp32 x read, bf16 y written (+ fp32 weight and bias); backward: fp32 x, bf16 gradient, fp32 dx (+ weight)
        per_element, affine = (4 + 2, 2) if mode == "fwd" else (4 + 2 + 4 + 2 + 4, 3)
        assert fused.bytes == rows * D * per_element + affine * D * 4


@pytest.mark.parametrize("a2v, v2a", [(True, False), (False, False)])
def test_av_adapter_flops_follow_the_enabled_directions(a2v, v2a):
    from stgcma_fast.kernels.av_adapter import av_adapter
    from stgcma_fast.ops.torch_ops import av_adapter as chain

    d = dict(B=1, M=2, Nv=11, Na=5, D=32, r=16)
    flops = []
    for fn in (av_adapter, chain):
        with FakeTensorMode():
            args = kernel_args("av_adapter", d, lambda *s: torch.empty(s))
            flops.append(count(lambda: fn(*args, a2v=a2v, v2a=v2a)).flops)  # noqa: B023
    assert flops[0] == flops[1]


def test_a_fused_op_counts_its_inputs_and_outputs():
    from stgcma_fast.kernels.av_adapter import av_adapter

    d = dict(B=2, M=3, Nv=17, Na=7, D=48, r=24)
    with FakeTensorMode():
        args = kernel_args("av_adapter", d, lambda *s: torch.empty(s, dtype=torch.float16))
        traffic = count(lambda: av_adapter(*args))
    G, e = 6, 2
    inputs = 2 * G * (17 + 7) * 48 * e + 2 * (2 * 24 * 48 + 24 + 48) * e + 2 * e  # u and x, weights, gates
    assert traffic.launches == 1
    assert traffic.ops[0].read == inputs
    assert traffic.ops[0].written == G * (17 + 7) * 48 * e  # inference: the outputs, nothing saved for backward


@pytest.mark.parametrize("impl, kwargs", [(ReferenceSTGCMA, {}), (FastSTGCMA, {})], ids=["reference", "fast"])
def test_model_forward_counts_the_analytic_flops_on_a_fake_gpu(impl, kwargs):
    cfg = tiny_config()
    traffic = model_forward_traffic(impl, cfg, batch=2, **kwargs)
    with torch.device("meta"):
        expected = 2 * stgcma_flops(impl(cfg)).forward
    assert traffic.flops == expected
    names = {op.name for op in traffic.ops}
    assert "aten._softmax" in names if impl is ReferenceSTGCMA else "aten._scaled_dot_product_flash_attention" in names
    assert "aten._safe_softmax" not in names  # SDPA's unfused math path: a GPU runs the fused kernel


def test_model_forward_with_the_triton_kernels_counts_the_same_flops_and_moves_less():
    """On fake CPU tensors with fp16 autocast: in the tests the kernels run in the Triton interpreter, which takes
    CPU tensors and no bf16 (the README block below counts them as on a GPU, in a process of its own)."""
    cfg = tiny_config()
    providers = {"reference": (ReferenceSTGCMA, {}), "fast": (FastSTGCMA, {}),
                 "triton": (FastSTGCMA, {"backends": bench_roofline.TRITON_BACKENDS})}
    traffic = {name: model_forward_traffic(impl, cfg, batch=2, autocast_dtype=torch.float16, device="cpu", **kw)
               for name, (impl, kw) in providers.items()}
    with torch.device("meta"):
        expected = 2 * stgcma_flops(ReferenceSTGCMA(cfg)).forward
    assert {name: t.flops for name, t in traffic.items()} == dict.fromkeys(traffic, expected)
    names = {op.name for op in traffic["triton"].ops}
    assert {"stgcma_fast.av_adapter", "stgcma_fast.t_adapter", "stgcma_fast.temporal_attention"} <= names
    assert traffic["triton"].bytes < traffic["fast"].bytes < traffic["reference"].bytes


def test_training_step_counts_forward_and_backward():
    """The reference's count is the analytic training-step FLOPs (frozen layers: input gradients only; no backward
    into the patch embeddings); the fused ops move fewer bytes in fewer launches."""
    cfg = tiny_config()
    ref = model_train_traffic(ReferenceSTGCMA, cfg, batch=2)
    with torch.device("meta"):
        assert ref.flops == 2 * stgcma_flops(ReferenceSTGCMA(cfg)).train_step
    fast = model_train_traffic(FastSTGCMA, cfg, batch=2)
    triton = model_train_traffic(FastSTGCMA, cfg, batch=2, backends=bench_roofline.TRITON_BACKENDS)
    names = {op.name for op in triton.ops}
    assert {"stgcma_fast.av_adapter_backward", "stgcma_fast.quick_gelu_backward", "stgcma_fast.layer_norm_backward",
            "stgcma_fast.temporal_attention_backward", "stgcma_fast.t_adapter_backward"} <= names
    assert triton.bytes < fast.bytes < ref.bytes and triton.launches < fast.launches < ref.launches


def test_readme_roofline_block_is_current():
    """Rendered in a process of its own without TRITON_INTERPRET, as `python -m bench.roofline` runs (the tests'
    interpreter mode makes the kernels refuse bf16)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = bench_roofline.README.parent
    rendered = subprocess.run([sys.executable, "-m", "bench.roofline"], cwd=root, env=env, capture_output=True,
                              text=True, check=True).stdout
    readme = bench_roofline.README.read_text()
    block = readme.split(bench_roofline.START + "\n")[1].split("\n" + bench_roofline.END)[0]
    assert block + "\n" == rendered, "run `python -m bench.roofline --update-readme`"
