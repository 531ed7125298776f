"""Memory traffic and FLOPs of a computation, op by op, and the fastest it could run on a device (its roofline).

The traffic model is the one that bounds an eager run: every op that launches a kernel reads each of its tensor
inputs once and writes each of its outputs once, and nothing stays in cache from one op to the next. An op then
takes at least ``max(bytes / bandwidth, FLOPs / tensor-core rate)``; summed over the ops of a run this is the floor
of that run on the device, and for a fused op (one of our custom ops counts as one op) the floor of the op.
Intermediates a fused op keeps on chip cost nothing here, which is the point of fusing; those it writes and reads
back inside (the AV-Adapter backward hands r-wide operands to cuBLAS weight GEMMs) are not seen, so a custom op's
count is its floor, not its cost.

Counted as moving no memory: views, allocations, and metadata (``prim``) ops; ``new_zeros`` / ``zeros_like`` and
their kind write their output without reading the tensor they take their shape from. A tensor broadcast along a
stride-0 axis is read once. ``copy_`` reads its source and writes its destination; an in-place op reads and writes its
target. FLOPs come from ``torch.utils.flop_counter``'s formulas (GEMMs, convolutions, attention; elementwise work is
not counted), which the kernel modules extend with formulas for the STG-CMA custom ops.

Counting needs no device and no computation: run the code on fake tensors (``FakeTensorMode``) and full-size shapes
are counted in seconds on a CPU. ``model_forward_traffic`` does that for a whole model's forward pass on a fake CUDA
device under bf16 autocast, with SDPA routed to the fused kernel SDPA's dispatcher picks on a GPU;
``model_train_traffic`` for a training step's forward and backward, on fake CPU tensors (see its caveats).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten

# Ops that launch no kernel: allocations (their contents are written by the op that fills them) and aliases.
_NO_TRAFFIC = {aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided, aten.detach,
               aten.alias, aten._unsafe_view, aten.lift_fresh}
# Ops that take a tensor for its shape, dtype and device only: they write their output without reading it.
_NO_READ = {aten.new_zeros, aten.new_ones, aten.new_full, aten.zeros_like, aten.ones_like, aten.full_like,
            aten.rand_like, aten.randn_like}
# flop_counter registers the CUDA flash-attention ops only; the CPU ones take the same leading arguments.
_EXTRA_FLOPS = {aten._scaled_dot_product_flash_attention_for_cpu: aten._scaled_dot_product_flash_attention,
                aten._scaled_dot_product_flash_attention_for_cpu_backward:
                    aten._scaled_dot_product_flash_attention_backward}


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements of ``t``: a stride-0 (broadcast) axis counts once."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


@dataclass(frozen=True)
class OpTraffic:
    """One kernel launch: its op name, bytes read and written, FLOPs."""

    name: str
    read: int
    written: int
    flops: int

    @property
    def bytes(self) -> int:
        return self.read + self.written

    def seconds(self, bandwidth: float, flop_rate: float) -> float:
        """Floor time at ``bandwidth`` bytes/s and ``flop_rate`` FLOP/s."""
        return max(self.bytes / bandwidth, self.flops / flop_rate)


@dataclass
class Traffic:
    """The ops of one run, in order."""

    ops: list[OpTraffic] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(op.bytes for op in self.ops)

    @property
    def flops(self) -> int:
        return sum(op.flops for op in self.ops)

    @property
    def launches(self) -> int:
        return len(self.ops)

    def seconds(self, bandwidth: float, flop_rate: float) -> float:
        """Floor time of the run: each op at the roofline of ``bandwidth`` bytes/s and ``flop_rate`` FLOP/s."""
        return sum(op.seconds(bandwidth, flop_rate) for op in self.ops)

    def by_op(self, bandwidth: float, flop_rate: float) -> list[tuple[str, int, int, int, float]]:
        """(op name, launches, bytes, FLOPs, floor seconds) per op name, largest floor first."""
        acc: dict[str, list] = defaultdict(lambda: [0, 0, 0, 0.0])
        for op in self.ops:
            entry = acc[op.name]
            entry[0] += 1
            entry[1] += op.bytes
            entry[2] += op.flops
            entry[3] += op.seconds(bandwidth, flop_rate)
        return sorted(((name, *v) for name, v in acc.items()), key=lambda row: -row[4])


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


class TrafficCounter(TorchDispatchMode):
    """Records an :class:`OpTraffic` for every kernel-launching op run inside it (see the module docstring).

    with TrafficCounter() as counter:
        fn()
    counter.traffic.bytes, counter.traffic.seconds(3.35e12, 989e12)
    """

    def __init__(self) -> None:
        super().__init__()
        self.traffic = Traffic()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        if func.is_view or packet in _NO_TRAFFIC or func.namespace == "prim":
            return out
        outputs = _tensors(out)
        if not outputs:  # metadata queries
            return out
        schema_args = func._schema.arguments
        written_inputs = [a for a, s in zip(args, schema_args) if s.alias_info is not None and s.alias_info.is_write]
        inputs = [] if packet in _NO_READ else _tensors((args, kwargs))
        if packet is aten.copy_:  # the destination is written, not read
            inputs = inputs[1:]
        # An in-place or out= op returns the tensor it wrote: count that write once.
        written = [t for t in outputs if not any(t is w for w in written_inputs)] + _tensors(written_inputs)
        formula = flop_registry.get(_EXTRA_FLOPS.get(packet, packet))
        flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        self.traffic.ops.append(OpTraffic(str(packet), sum(map(tensor_bytes, inputs)),
                                          sum(map(tensor_bytes, written)), flops))
        return out


def count(fn: Callable[[], object]) -> Traffic:
    """The traffic of ``fn()`` (run it on fake tensors to count full-size shapes without computing)."""
    with TrafficCounter() as counter:
        fn()
    return counter.traffic


class _FusedSDPA(TorchFunctionMode):
    """Routes ``F.scaled_dot_product_attention`` on CUDA tensors without a mask to the fused kernel SDPA's dispatcher
    picks on an sm80+ GPU (flash for 16-bit inputs with head dim <= 256, else memory-efficient). On fake CUDA
    tensors the dispatcher cannot query the device and takes the unfused math path, which a GPU would not run."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            extra = dict(zip(("attn_mask", "dropout_p", "is_causal", "scale"), args[3:])) | kwargs
            if q.device.type == "cuda" and q.dim() == 4 and extra.get("attn_mask") is None \
                    and not extra.get("dropout_p") and not extra.get("is_causal"):
                scale = extra.get("scale")
                if q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
                    return aten._scaled_dot_product_flash_attention(q, k, v, scale=scale)[0]
                return aten._scaled_dot_product_efficient_attention(q, k, v, None, False, scale=scale)[0]
        return func(*args, **kwargs)


@contextlib.contextmanager
def _autocast(device: str, dtype: torch.dtype) -> Iterator[None]:
    """Autocast on ``device`` even on a machine without a GPU (``torch.autocast("cuda")`` disables itself there),
    for fake CUDA tensors: the same state ``torch.autocast`` sets."""
    prev, prev_dtype = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
    torch.set_autocast_enabled(device, True)
    torch.set_autocast_dtype(device, dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled(device, prev)
        torch.set_autocast_dtype(device, prev_dtype)


@contextlib.contextmanager
def _fake_model(model_cls: type, config, batch: int, device: str, train: bool, model_kwargs: dict):
    """``model_cls(config, **model_kwargs)`` and a batch of inputs as fake tensors on ``device`` (built on the meta
    device: no weights are made), inside the fake mode that made them."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with torch.device("meta"):
        model = model_cls(config, **model_kwargs).train(train)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to_empty(device=device)
        H, W = model.img_size
        video = torch.empty(batch, config.num_frames, 3, H, W, device=device) if config.has_video else None
        audio = torch.empty(batch, config.num_frames, *config.audio_size, device=device) if config.has_audio else None
        yield model, video, audio


def model_forward_traffic(model_cls: type, config, batch: int, autocast_dtype: torch.dtype | None = torch.bfloat16,
                          device: str = "cuda", **model_kwargs) -> Traffic:
    """Traffic of one forward pass (inference) of ``model_cls(config, **model_kwargs)`` (``ReferenceSTGCMA`` or
    ``FastSTGCMA``) on ``batch`` clips on a ``device`` ("cuda": as on a GPU; "cpu": CPU dispatch and autocast rules)
    under ``autocast_dtype`` autocast (None: fp32), counted on fake tensors: no GPU, no weights and no computation
    are needed, so full-size presets count in seconds."""
    with _fake_model(model_cls, config, batch, device, False, model_kwargs) as (model, video, audio), torch.no_grad():
        amp = _autocast(device, autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
        with _FusedSDPA(), TrafficCounter() as counter, amp:
            model(video, audio)
    return counter.traffic


def model_train_traffic(model_cls: type, config, batch: int, autocast_dtype: torch.dtype | None = torch.float16,
                        **model_kwargs) -> Traffic:
    """Traffic of one training step, forward and backward into the trainable parameters (the optimizer step, a few
    reads and writes of the adapters, is left out), from a loss on the class tokens.

    Counted on fake CPU tensors: the autograd engine needs a real CUDA device to run a backward pass on CUDA tensors,
    so CPU dispatch and CPU autocast rules apply. They differ from CUDA's where CPU autocast leaves softmax in the
    16-bit dtype (CUDA runs it in fp32: the reference's explicit attention moves more there than counted) and in
    SDPA's CPU flash kernel, which reads and writes what CUDA's does. The Triton kernels accept CPU tensors only
    under TRITON_INTERPRET=1, which refuses bf16 dots: fp16 autocast, the same bytes."""
    with _fake_model(model_cls, config, batch, "cpu", True, model_kwargs) as (model, video, audio):
        params = [p for p in model.parameters() if p.requires_grad]
        amp = _autocast("cpu", autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
        with TrafficCounter() as counter:
            with amp:
                out = model(video, audio)
            loss = sum(t.float().sum() for t in (out.video_cls, out.audio_cls) if t is not None)
            torch.autograd.grad(loss, params)
    return counter.traffic
