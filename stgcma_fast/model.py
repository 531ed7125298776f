"""`FastSTGCMA`: the drop-in STG-CMA module; every heavy step runs through the per-instance op dispatcher."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import QuickGELU as TimmQuickGELU
from torch.utils.checkpoint import checkpoint

from .backbones import BlockParts, GlobalAttention, ShiftedWindows
from .config import STGCMAConfig
from .core import STGCMABase, STGCMAOutput
from .modules import AVAdapter, BlockAdapters, TAdapter
from .ops.activations import lean_activation
from .ops.dispatch import OPS, Dispatcher

RECOMPUTE = ("attention", "ffn")  # what FastSTGCMA(recompute=...) can recompute in backward instead of keeping


class FrozenWeights(NamedTuple):
    """One block's frozen projections, as its GEMMs read them: (weight, bias) of attn.qkv, attn.proj, mlp.fc1 and
    mlp.fc2, cast once to the autocast dtype when autocast is on."""

    qkv: tuple[torch.Tensor, torch.Tensor | None]
    proj: tuple[torch.Tensor, torch.Tensor | None]
    fc1: tuple[torch.Tensor, torch.Tensor | None]
    fc2: tuple[torch.Tensor, torch.Tensor | None]


def frozen_weights(block: nn.Module | BlockParts, device_type: str) -> FrozenWeights:
    """The (weight, bias) pairs of ``block``'s frozen projections (a timm block or its :class:`BlockParts`: anything
    with ``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``); under autocast, cast to its dtype ONCE for the
    block. Autocast caches the casts of weights that require grad only, so a frozen weight would otherwise be cast
    again by each of its GEMMs (qkv and proj 4 times per block: temporal and spatial, video and audio; fc1 and fc2
    twice), and every cast copy would be kept for backward, where the GEMM computes the input gradient with it. Cast
    once, all its GEMMs share (and save) one copy. The values are the same: autocast would round the same weight to
    the same dtype."""
    layers = (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2)
    if not torch.is_autocast_enabled(device_type):
        return FrozenWeights(*((m.weight, m.bias) for m in layers))
    dtype = torch.get_autocast_dtype(device_type)
    cast = lambda t: None if t is None else t.to(dtype) if t.is_floating_point() else t  # noqa: E731
    return FrozenWeights(*((cast(m.weight), cast(m.bias)) for m in layers))


def _adapter_weights(ad: TAdapter) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return ad.down.weight, ad.down.bias, ad.up.weight, ad.up.bias


class FastSTGCMA(STGCMABase):
    """STG-CMA for training and inference; same constructor, parameter names and outputs as ``ReferenceSTGCMA``.

    One block recipe (temporal -> spatial + AV-Adapter -> FFN + AV-Adapter) runs on every block of every stage of
    the backbone seam (``self.arch``), with the seam's downsampling between stages.

    Args (beyond :class:`stgcma_fast.core.STGCMABase`):
        backends: per-op backend overrides, e.g. ``{"temporal_attention": "sdpa"}``; see :meth:`backends`.
        grad_checkpointing: recompute each block in backward instead of keeping its activations.
        recompute: selective recomputation in training, any of :data:`RECOMPUTE`. ``"attention"``: LN1 -> qkv ->
            attention (temporal and spatial) run again in backward, so q, k, v and the attention output are not kept
            (4 of the about 23 token-rows-times-D 16-bit units a block keeps per modality under bf16 autocast, per
            pass). ``"ffn"``: LN2 -> fc1 -> activation run again, so the 4D-wide hidden is not kept (4 units). The
            frozen GEMMs they rerun add about 19% (attention) and 12.5% (ffn) to a block's frozen-GEMM FLOPs; the
            values computed are the same. Ignored where ``grad_checkpointing`` already recomputes whole blocks.

    ``model(video, audio)`` takes video (B, M, 3, H, W) and audio (B, K, T, F), K = M, and returns
    :class:`stgcma_fast.core.STGCMAOutput`.
    """

    def __init__(self, config: STGCMAConfig, pretrained: bool = False, checkpoint_path: str | Path | None = None,
                 head: nn.Module | None = None, backends: dict[str, str] | None = None,
                 grad_checkpointing: bool = False, recompute: Iterable[str] = ()) -> None:
        super().__init__(config, pretrained=pretrained, checkpoint_path=checkpoint_path, head=head)
        self.ops = Dispatcher(backends)
        self.grad_checkpointing = grad_checkpointing
        recompute = (recompute,) if isinstance(recompute, str) else tuple(recompute)
        unknown = sorted(set(recompute) - set(RECOMPUTE))
        if unknown:
            raise ValueError(f"expected recompute to be a subset of {RECOMPUTE}, got {unknown}")
        self.recompute = frozenset(recompute)
        layouts = {type(self.arch.block_parts(i).layout).__name__ for i in range(self.depth)}
        if layouts - {GlobalAttention.__name__, ShiftedWindows.__name__}:
            raise NotImplementedError(f"FastSTGCMA runs spatial attention layouts GlobalAttention and ShiftedWindows,"
                                      f" got {layouts}")
        self._init_window_orders()
        act = self.arch.block_parts(0).mlp.act
        self._quick_gelu = isinstance(act, TimmQuickGELU)  # CLIP's: a dispatched op (fused kernel or lean torch)
        self._lean_act = lean_activation(act)

    # ---------------------------------------------------------------- window orders (Swin)
    def _init_window_orders(self) -> None:
        """Swin: inside a stage the fast path keeps each modality's tokens in the window order of the current block
        (:meth:`ShiftedWindows.order`), so the window attention and the per-window AV-Adapter read windows as plain
        views and no block cuts or reassembles windows. Everything else in a block is per token (norms, GEMMs,
        adapters, the temporal pass) or over all the tokens of a frame (the global AV-Adapter, whose parameter-free
        attention does not depend on their order). Non-persistent index buffers: ``_order_in_{i}`` regathers the
        tokens before block i where its window order differs from the previous block's (or from row-major at the
        start of a stage), ``_order_out_{s}`` restores row-major order at the end of stage s (for the stage map and
        the patch merging); None where nothing moves."""
        device = self.arch.patch_weight.device
        for stage in self.arch.stages:
            prev = None  # the order the tokens are in: None = row-major, else the layout whose window order it is
            for i in stage.blocks:
                layout = self.arch.block_parts(i).layout
                target = layout if isinstance(layout, ShiftedWindows) and not layout.row_major else None
                self._set_index(f"_order_in_{i}", _reorder_index(prev, target, device))
                prev = target
            self._set_index(f"_order_out_{stage.index}", _reorder_index(prev, None, device))

    def _set_index(self, name: str, index: torch.Tensor | None) -> None:
        if name in self._buffers:
            self._buffers[name] = index
        else:
            self.register_buffer(name, index, persistent=False)

    def to_empty(self, *, device: torch.device | str | None, recurse: bool = True) -> FastSTGCMA:
        """``nn.Module.to_empty``; the backbone's and the window orders' non-persistent buffers are recomputed."""
        super().to_empty(device=device, recurse=recurse)
        self._init_window_orders()
        return self

    # ---------------------------------------------------------------- backends
    def set_backend(self, op: str, name: str | None) -> None:
        """Force ``op`` (one of ``OPS``) onto backend ``name`` for this instance; None restores automatic choice."""
        self.ops.set_backend(op, name)

    def backends(self, dtype: torch.dtype | None = None) -> dict[str, str]:
        """The backend each op runs on for this model's device, probed with one small frame.

        ``dtype``: the activation dtype, e.g. the autocast dtype; then, as under autocast, frozen-layer outputs are
        ``dtype`` while the residual stream and the adapter weights keep the parameters' dtype. ``self.ops.last``
        holds what the last forward actually used."""
        p = self.arch.patch_weight
        D, r, H = self.embed_dim, self.bottleneck, self.num_heads
        Nv, Na, M = self.num_video_tokens, self.num_audio_tokens, self.config.num_frames
        act = lambda *shape: torch.zeros(shape, device=p.device, dtype=dtype or p.dtype)  # noqa: E731
        z = lambda *shape: torch.zeros(shape, device=p.device, dtype=p.dtype)  # noqa: E731
        w = (z(r, D), z(r), z(D, r), z(D))
        first = self.arch.block_parts(0)
        norm = first.norm1
        probes = {
            "temporal_attention": (act(1, M, Nv, 3 * D), H, 1.0),
            "spatial_attention": (act(1, Nv, 3 * D), H, 1.0),
            "t_adapter": (act(Nv, D), z(Nv, D), *w),
            "av_adapter": (act(1, Nv, D), act(1, Na, D), z(1, Nv, D), z(1, Na, D), *w, *w, z(), z()),
            "quick_gelu": (act(Nv, first.mlp.fc1.out_features),),
            "layer_norm": (z(Nv, D), norm.weight, norm.bias, norm.eps, dtype or p.dtype),
        }
        unused = {"quick_gelu": not self._quick_gelu,  # a GELU backbone runs F.gelu
                  "layer_norm": not isinstance(norm, nn.LayerNorm) or len(norm.normalized_shape) != 1}
        used = [op for op in OPS if not unused.get(op)]
        return {op: self.ops.select(op, *probes[op]).name for op in used}

    # ---------------------------------------------------------------- stages
    def _segment(self, part: str, fn: Callable[..., torch.Tensor], *args) -> torch.Tensor:
        """``fn(*args)``, recomputed in backward (not kept) when ``part`` is in ``self.recompute`` and this forward
        builds a graph that whole-block checkpointing does not already recompute."""
        if (part in self.recompute and self.training and torch.is_grad_enabled()
                and not self.grad_checkpointing):  # fmt: skip
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    # The recomputable segments take their frozen weights as tensor arguments: checkpoint keeps its tensor arguments
    # for the recomputation as saved tensors (which saved_activation_bytes then counts), others by reference only.
    def _temporal_mhsa_core(self, i: int, qkv_w: torch.Tensor, qkv_b: torch.Tensor | None, x: torch.Tensor,
                            bias: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """LN1 -> qkv -> attention over the M frames of every token (+ ``bias`` (H, M, M) on the scores: Swin's
        temporal relative-position bias); (B, M, N, D) before the output projection."""
        p = self.arch.block_parts(i)
        qkv = F.linear(self._norm(p.norm1, x), qkv_w, qkv_b)  # (B, M, N, 3D)
        if bias is None:
            return self.ops("temporal_attention", qkv, p.num_heads, p.scale)  # reads qkv in place
        return self.ops("temporal_attention", qkv, p.num_heads, p.scale, bias)

    def _temporal(self, i: int, w: FrozenWeights, ad: TAdapter, x: torch.Tensor,
                  bias_table: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """x + DropPath(Ad_T(MHSA over frames)) on x (B, M, N, D); attention reads the qkv layout in place. Swin:
        ``bias_table`` (2M - 1, H), entry i - j + M - 1 added to the score of frame i vs frame j."""
        B, M, N, D = x.shape
        bias = None
        if bias_table is not None:
            frames = torch.arange(M, device=x.device)
            bias = bias_table[frames[:, None] - frames[None, :] + (M - 1)].permute(2, 0, 1)  # (H, M, M)
        o = self._segment("attention", self._temporal_mhsa_core, i, *w.qkv, x, bias)  # (B, M, N, D)
        o = self.arch.block_parts(i).ls1(F.linear(o, *w.proj))
        row_scale = None
        rate = self.drop_path_rates[i]
        if self.training and rate > 0.0:  # drop path per (clip, token) sequence, as on the (B * N, M, D) view
            keep = torch.empty(B, 1, N, device=x.device, dtype=torch.float32).bernoulli_(1.0 - rate) / (1.0 - rate)
            row_scale = keep.expand(B, M, N).reshape(-1)
        out = self.ops("t_adapter", o.reshape(-1, D), x.reshape(-1, D), *_adapter_weights(ad), row_scale)
        return out.view(B, M, N, D)

    def _spatial_mhsa_core(self, i: int, qkv_w: torch.Tensor, qkv_b: torch.Tensor | None,
                           x: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """LN1 -> qkv -> attention over the N tokens of every frame (the GlobalAttention layout); (B * M, N, D)
        before the output projection."""
        p = self.arch.block_parts(i)
        B, M, N, D = x.shape
        qkv = F.linear(self._norm(p.norm1, x), qkv_w, qkv_b).view(B * M, N, 3 * D)
        return self.ops("spatial_attention", qkv, p.num_heads, p.scale)

    def _window_mhsa_core(self, i: int, qkv_w: torch.Tensor, qkv_b: torch.Tensor | None,
                          x: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Swin, x (B, M, N, D) in block i's window order: LN1 -> qkv -> W-MSA / SW-MSA with the frozen
        relative-position bias and shift mask over the windows (a view); (B * M * nW, area, D) before the output
        projection."""
        p = self.arch.block_parts(i)
        layout: ShiftedWindows = p.layout
        B, M, N, D = x.shape
        qkv = F.linear(self._norm(p.norm1, x), qkv_w, qkv_b).view(B * M * layout.num_windows, layout.area, -1)
        bias, mask = self.arch.attention_bias(i), self.arch.attention_mask(i)
        return self.ops("spatial_attention", qkv, p.num_heads, p.scale, bias, mask)

    def _spatial_mhsa(self, i: int, w: FrozenWeights, x: torch.Tensor) -> torch.Tensor:
        """The frozen spatial attention of block i on x (B, M, N, D) -> (B, M, N, D): over all the tokens of a frame
        (ViT), or (Swin, x in the block's window order) within each window."""
        windows = isinstance(self.arch.block_parts(i).layout, ShiftedWindows)
        core = self._window_mhsa_core if windows else self._spatial_mhsa_core
        o = self._segment("attention", core, i, *w.qkv, x)  # (B*M, N, D) or (B*M*nW, area, D)
        return self.arch.block_parts(i).ls1(F.linear(o, *w.proj)).view_as(x)

    def _spatial_cross_modal(self, i: int, ad: BlockAdapters, s_v: torch.Tensor | None, s_a: torch.Tensor | None,
                             x_v: torch.Tensor | None, x_a: torch.Tensor | None):  # fmt: skip
        """x + s + AVA_S(s_v, s_a). Swin (tokens in the block's window order): the AV-Adapter pairs video window w
        of frame m with audio window w of segment m, each a view of nW consecutive groups of ``area`` tokens."""
        layout = self.arch.block_parts(i).layout
        av = ad.spatial
        if not isinstance(layout, ShiftedWindows) or av is None or x_v is None or x_a is None:
            return self._cross_modal(ad, "spatial", av, s_v, s_a, x_v, x_a)  # whole frame, or per token
        B, M, N, D = x_v.shape
        win = lambda t: t.view(B * M, layout.num_windows, layout.area, D)  # noqa: E731
        out_v, out_a = self._cross_modal(ad, "spatial", av, win(s_v), win(s_a), win(x_v), win(x_a))
        return out_v.view_as(x_v), out_a.view_as(x_a)

    def _norm(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A block's frozen LayerNorm on the residual stream x through the dispatcher, its output in the dtype the
        following GEMM reads: the autocast dtype under autocast (where torch runs layer_norm in fp32 and the linear
        layer casts its output), else x's."""
        if not isinstance(norm, nn.LayerNorm) or len(norm.normalized_shape) != 1:
            return norm(x)
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        return self.ops("layer_norm", x, norm.weight, norm.bias, norm.eps, dtype)

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        """The FFN activation on fc1's output; QuickGELU through the dispatcher."""
        return self.ops("quick_gelu", h) if self._quick_gelu else self._lean_act(h)

    def _ffn_hidden(self, i: int, fc1_w: torch.Tensor, fc1_b: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """LN2 -> fc1 -> activation: the FFN's 4D-wide hidden, as fc2 reads it."""
        p = self.arch.block_parts(i)
        h = self._act(F.linear(self._norm(p.norm2, x), fc1_w, fc1_b))  # lean: keeps only the fc1 output
        return p.mlp.norm(p.mlp.drop1(h))

    def _ffn(self, i: int, w: FrozenWeights, x: torch.Tensor) -> torch.Tensor:
        p = self.arch.block_parts(i)
        h = self._segment("ffn", self._ffn_hidden, i, *w.fc1, x)  # fc2's weight is frozen: it keeps no input
        return p.ls2(p.mlp.drop2(F.linear(h, *w.fc2)))

    def _cross_modal(self, ad: BlockAdapters, stage: str, av: AVAdapter | None, u_v: torch.Tensor | None,
                     u_a: torch.Tensor | None, x_v: torch.Tensor | None, x_a: torch.Tensor | None):
        """x + u + AVA(u_v, u_a) for both modalities (x + u where the stage is disabled)."""
        if av is None:
            return (None if x_v is None else x_v + u_v), (None if x_a is None else x_a + u_a)
        if x_v is not None and x_a is not None:
            alpha, beta = ad.gates(stage)
            zero = u_v.new_zeros(())
            B, M, Nv, D = x_v.shape
            Na = x_a.shape[2]
            out_v, out_a = self.ops(
                "av_adapter", u_v.reshape(B * M, Nv, D), u_a.reshape(B * M, Na, D), x_v.reshape(B * M, Nv, D),
                x_a.reshape(B * M, Na, D), *_adapter_weights(av.video), *_adapter_weights(av.audio),
                zero if alpha is None else alpha, zero if beta is None else beta, alpha is not None, beta is not None)
            return out_v.view_as(x_v), out_a.view_as(x_a)
        x, u, single = (x_v, u_v, av.video) if x_v is not None else (x_a, u_a, av.audio)
        D = x.shape[-1]
        out = self.ops("t_adapter", u.reshape(-1, D), (x + u).reshape(-1, D), *_adapter_weights(single)).view_as(x)
        return (out, None) if x_v is not None else (None, out)

    def _block(self, i: int, x_v: torch.Tensor | None, x_a: torch.Tensor | None):
        """The block recipe on block i (global index) of any stage."""
        ad: BlockAdapters = self.adapters[i]
        stages = self.config.stages
        w = frozen_weights(self.arch.block_parts(i), (x_v if x_v is not None else x_a).device.type)
        if "temporal" in stages and self.arch.block_parts(i).temporal:
            x_v = self._temporal(i, w, ad.temporal_v, x_v, ad.temporal_bias("v")) if x_v is not None else None
            x_a = self._temporal(i, w, ad.temporal_a, x_a, ad.temporal_bias("a")) if x_a is not None else None
        s_v = self._spatial_mhsa(i, w, x_v) if x_v is not None else None
        s_a = self._spatial_mhsa(i, w, x_a) if x_a is not None else None
        x_v, x_a = self._spatial_cross_modal(i, ad, s_v, s_a, x_v, x_a)
        f_v = self._ffn(i, w, x_v) if x_v is not None else None
        f_a = self._ffn(i, w, x_a) if x_a is not None else None
        return self._cross_modal(ad, "global", ad.global_, f_v, f_a, x_v, x_a)

    def forward(self, video: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> STGCMAOutput:
        """video (B, M, 3, H, W), audio (B, K, T, F) with K = M (None for a disabled branch)."""
        self.check_inputs(video, audio)
        arch, reduction = self.arch, self.config.audio_patch_reduction
        x_v = arch.embed_video(video, self.temporal_embed_v) if video is not None else None
        x_a = arch.embed_audio(audio, self.temporal_embed_a, reduction) if audio is not None else None
        stages_v, stages_a = [], []  # each stage's last tokens, before the next stage's downsampling
        for stage in arch.stages:
            if stage.downsample:
                x_v = arch.downsample(stage, x_v) if x_v is not None else None
                x_a = arch.downsample(stage, x_a) if x_a is not None else None
            for i in stage.blocks:
                order = getattr(self, f"_order_in_{i}")  # into block i's window order (Swin), where it changes
                x_v, x_a = _reorder(x_v, order), _reorder(x_a, order)
                if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                    x_v, x_a = checkpoint(self._block, i, x_v, x_a, use_reentrant=False)
                else:
                    x_v, x_a = self._block(i, x_v, x_a)
            order = getattr(self, f"_order_out_{stage.index}")
            x_v, x_a = _reorder(x_v, order), _reorder(x_a, order)
            stages_v.append(x_v)
            stages_a.append(x_a)
        x_v = arch.final_norm(x_v) if x_v is not None else None
        x_a = arch.final_norm(x_a) if x_a is not None else None
        stages_v[-1], stages_a[-1] = x_v, x_a
        return self.collect_output(x_v, x_a, stages_v, stages_a)


def _reorder_index(cur: ShiftedWindows | None, target: ShiftedWindows | None,
                   device: torch.device) -> torch.Tensor | None:  # fmt: skip
    """The gather index taking tokens from ``cur``'s window order to ``target``'s (None: row-major), or None when
    the two orders are the same: x_target = x_cur[:, :, index]."""
    if cur == target:
        return None
    if cur is None:
        return target.order(device)
    inverse = torch.argsort(cur.order(device))  # row-major index -> position in cur's order
    return inverse if target is None else inverse[target.order(device)]


def _reorder(x: torch.Tensor | None, index: torch.Tensor | None) -> torch.Tensor | None:
    """x (B, M, N, D) with its tokens gathered by ``index`` (N,) (one copy), or x itself when index is None."""
    return x if x is None or index is None else x.index_select(2, index)


def build_model(config: STGCMAConfig | str, **kwargs) -> FastSTGCMA:
    """``FastSTGCMA`` from a config or a preset name (``STGCMAConfig.preset``)."""
    cfg = STGCMAConfig.preset(config) if isinstance(config, str) else config
    return FastSTGCMA(cfg, **kwargs)
