"""`ReferenceSTGCMA`: plain PyTorch, written to read like the spec (``docs/model.md``), equation by equation.

It is the ground truth of every parity test and benchmark, and shares no forward code with the fast path.
Layouts: x_v (B, M, N_v, D), x_a (B, K, N_a, D), K = M; ViT: class token first; Swin: the stage's token map,
row-major.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import drop_path
from timm.models.swin_transformer import window_partition, window_reverse
from timm.models.vision_transformer import Attention

from .backbones import BlockParts, ShiftedWindows
from .backbones.swin import audio_patch_conv
from .backbones.vit import audio_patch_weight, audio_pos_embed
from .core import STGCMABase, STGCMAOutput
from .modules import AVAdapter, BlockAdapters, TAdapter


def mhsa(attn: Attention, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The frozen multi-head self-attention over the second-to-last axis of x (..., L, D) -> (..., L, D); ``bias``
    (broadcastable to (..., H, L, L)) is added to the scaled scores before the softmax."""
    *lead, L, D = x.shape
    H = attn.num_heads
    hd = attn.qkv.out_features // (3 * H)
    qkv = attn.qkv(x).reshape(*lead, L, 3, H, hd)
    q, k, v = (qkv[..., i, :, :].transpose(-3, -2) for i in range(3))  # each (..., H, L, hd)
    scores = (q @ k.transpose(-2, -1)) * attn.scale  # (..., H, L, L)
    weights = torch.softmax(scores if bias is None else scores + bias, dim=-1)
    out = (weights @ v).transpose(-3, -2).reshape(*lead, L, H * hd)
    return attn.proj(out)


def adapter(ad: TAdapter, z: torch.Tensor) -> torch.Tensor:
    """``Ad(z) = GELU(z W_d + b_d) W_u + b_u``."""
    return F.gelu(z @ ad.down.weight.T + ad.down.bias) @ ad.up.weight.T + ad.up.bias


def temporal_bias(table: torch.Tensor, M: int) -> torch.Tensor:
    """Swin's temporal relative-position bias (H, M, M) from its table (2M - 1, H): bias[h, i, j] = table[i - j +
    M - 1, h], added to the score of frame i vs frame j."""
    frames = torch.arange(M, device=table.device)
    return table[frames[:, None] - frames[None, :] + M - 1].permute(2, 0, 1)


def to_windows(x: torch.Tensor, layout: ShiftedWindows) -> torch.Tensor:
    """(B, M, N, C) -> (B, M, nW, area, C): the frame's token map cyclically shifted by -shift, cut into windows
    (timm's ``window_partition``)."""
    B, M, N, C = x.shape
    x = torch.roll(x.reshape(B * M, *layout.grid, C), shifts=tuple(-s for s in layout.shift), dims=(1, 2))
    return window_partition(x, layout.window).reshape(B, M, layout.num_windows, layout.area, C)


def from_windows(w: torch.Tensor, layout: ShiftedWindows) -> torch.Tensor:
    """Inverse of :func:`to_windows`: (B, M, nW, area, C) -> (B, M, N, C)."""
    B, M, nW, area, C = w.shape
    x = window_reverse(w.reshape(B * M * nW, *layout.window, C), layout.window, *layout.grid)
    return torch.roll(x, shifts=layout.shift, dims=(1, 2)).reshape(B, M, -1, C)


def av_adapter(av: AVAdapter, alpha: torch.Tensor | None, beta: torch.Tensor | None,
               u_v: torch.Tensor | None, u_a: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """AV-Adapter on per-frame features u_v (..., N_v, D), u_a (..., N_a, D); a None gate is fixed at zero.

    h_v' = h_v + alpha * softmax(h_v h_a^T) h_a   (softmax over audio tokens, no 1/sqrt(r))
    h_a' = h_a + beta  * softmax(h_a h_v^T) h_v   (softmax over video tokens)
    """
    h_v = F.gelu(u_v @ av.video.down.weight.T + av.video.down.bias) if u_v is not None else None
    h_a = F.gelu(u_a @ av.audio.down.weight.T + av.audio.down.bias) if u_a is not None else None
    hv_new, ha_new = h_v, h_a
    if alpha is not None:
        hv_new = h_v + alpha * (torch.softmax(h_v @ h_a.transpose(-2, -1), dim=-1) @ h_a)
    if beta is not None:
        ha_new = h_a + beta * (torch.softmax(h_a @ h_v.transpose(-2, -1), dim=-1) @ h_v)
    out_v = hv_new @ av.video.up.weight.T + av.video.up.bias if h_v is not None else None
    out_a = ha_new @ av.audio.up.weight.T + av.audio.up.bias if h_a is not None else None
    return out_v, out_a


class ReferenceSTGCMA(STGCMABase):
    """STG-CMA in plain PyTorch. Same constructor, parameter names and outputs as ``FastSTGCMA``.

    The frozen parts of each block come from the backbone seam (``self.arch.block_parts(i)``); the embeddings and
    every equation are written out here.
    """

    def embed_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, M, 3, H, W) -> (B, M, N_v, D): patches, class token, position, temporal embedding, pre-norm."""
        bb = self.backbone
        B, M = video.shape[:2]
        x = bb.patch_embed(video.flatten(0, 1))  # (B*M, N_v - 1, D)
        x = torch.cat([bb.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + bb.pos_embed
        x = x.reshape(B, M, -1, self.embed_dim) + self.temporal_embed_v[None, :, None, :]
        return bb.norm_pre(x)

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, K, T, F) -> (B, K, N_a, D): the spectrogram as a 1-channel image (rows = time)."""
        bb = self.backbone
        B, K = audio.shape[:2]
        weight = audio_patch_weight(bb, self.config.audio_patch_reduction)
        x = F.conv2d(audio.flatten(0, 1).unsqueeze(1), weight, bb.patch_embed.proj.bias,
                     stride=bb.patch_embed.patch_size)  # (B*K, D, T/p, F/p)
        x = bb.patch_embed.norm(x.flatten(2).transpose(1, 2))
        pos = audio_pos_embed(bb.pos_embed, bb.patch_embed.grid_size, self.audio_grid)
        x = torch.cat([bb.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
        x = x.reshape(B, K, -1, self.embed_dim) + self.temporal_embed_a[None, :, None, :]
        return bb.norm_pre(x)

    def embed_video_swin(self, video: torch.Tensor) -> torch.Tensor:
        """Swin: (B, M, 3, H, W) -> (B, M, N, C): the frozen 4 x 4 patch embedding and patch norm of every frame."""
        B, M = video.shape[:2]
        x = self.backbone.patch_embed(video.flatten(0, 1))  # (B*M, H/4, W/4, C), channels last
        return x.reshape(B, M, -1, x.shape[-1])

    def embed_audio_swin(self, audio: torch.Tensor) -> torch.Tensor:
        """Swin: (B, K, T, F) -> (B, K, N, C): each segment a 1-channel image (rows = time) through the separate
        frozen audio patch embedding (RGB-reduced conv, copied bias and patch norm)."""
        B, K = audio.shape[:2]
        x = audio_patch_conv(self.audio_patch_embed, audio.flatten(0, 1).unsqueeze(1))  # (B*K, T/4, F/4, C)
        return x.reshape(B, K, -1, x.shape[-1])

    def temporal(self, p: BlockParts, ad: TAdapter, x: torch.Tensor, drop_rate: float,
                 bias_table: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """x + DropPath(Ad_T(MHSA(LN1(x)))) with attention across time: x viewed as (B * N, M, D); Swin adds the
        temporal relative-position bias from ``bias_table`` (2M - 1, H) to the scores."""
        B, M, N, D = x.shape
        xt = x.transpose(1, 2).reshape(B * N, M, D)
        bias = temporal_bias(bias_table, M) if bias_table is not None else None
        delta = adapter(ad, p.ls1(mhsa(p.attn, p.norm1(xt), bias)))
        xt = xt + drop_path(delta, drop_rate, self.training)
        return xt.reshape(B, N, M, D).transpose(1, 2)

    def spatial_mhsa(self, i: int, p: BlockParts, z: torch.Tensor) -> torch.Tensor:
        """The frozen spatial attention of block i on z (B, M, N, D) = LN1(x): over all the tokens of a frame (ViT),
        or W-MSA / SW-MSA (Swin): within each window of the shifted map, with the relative-position bias and the
        shift mask, shifted back."""
        if not isinstance(p.layout, ShiftedWindows):
            return mhsa(p.attn, z)
        bias = self.arch.attention_bias(i)  # (H, area, area)
        mask = self.arch.attention_mask(i)  # (nW, area, area) or None
        if mask is not None:
            bias = bias + mask[:, None]  # (nW, H, area, area): window w of every frame gets mask[w]
        return from_windows(mhsa(p.attn, to_windows(z, p.layout), bias), p.layout)

    def cross_modal(self, av, gates, layout, u_v: torch.Tensor | None, u_a: torch.Tensor | None):
        """AV-Adapter per frame: on the whole map (ViT; Swin's global adapter), or (Swin's spatial adapter) per
        window, video window w of frame m with audio window w of segment m after the same shift, no mask."""
        if not isinstance(layout, ShiftedWindows):
            return av_adapter(av, *gates, u_v, u_a)
        w_v, w_a = (to_windows(u, layout) if u is not None else None for u in (u_v, u_a))
        d_v, d_a = av_adapter(av, *gates, w_v, w_a)
        return (from_windows(d, layout) if d is not None else None for d in (d_v, d_a))

    def block(self, i: int, x_v: torch.Tensor | None, x_a: torch.Tensor | None):
        p: BlockParts = self.arch.block_parts(i)  # LN1, MHSA, LN2, FFN: frozen, shared by both modalities
        ad: BlockAdapters = self.adapters[i]
        stages = self.config.stages
        # 1. temporal adaptation, each modality separately (Swin: in the unshifted blocks only)
        if "temporal" in stages and p.temporal:
            if x_v is not None:
                x_v = self.temporal(p, ad.temporal_v, x_v, self.drop_path_rates[i], ad.temporal_bias("v"))
            if x_a is not None:
                x_a = self.temporal(p, ad.temporal_a, x_a, self.drop_path_rates[i], ad.temporal_bias("a"))
        # 2. cross-modal spatial adaptation: s = MHSA(LN1(x)) within each frame (Swin: window); x = x + s + AVA_S
        s_v = p.ls1(self.spatial_mhsa(i, p, p.norm1(x_v))) if x_v is not None else None
        s_a = p.ls1(self.spatial_mhsa(i, p, p.norm1(x_a))) if x_a is not None else None
        d_v, d_a = self.cross_modal(ad.spatial, ad.gates("spatial"), p.layout, s_v, s_a) if "spatial" in stages \
            else (None, None)  # fmt: skip
        x_v = _add(x_v, s_v, d_v)
        x_a = _add(x_a, s_a, d_a)
        # 3. cross-modal global adaptation: f = FFN(LN2(x)); x = x + f + AVA_G(f_v, f_a)
        f_v = p.ls2(p.mlp(p.norm2(x_v))) if x_v is not None else None
        f_a = p.ls2(p.mlp(p.norm2(x_a))) if x_a is not None else None
        d_v, d_a = av_adapter(ad.global_, *ad.gates("global"), f_v, f_a) if "global" in stages else (None, None)
        return _add(x_v, f_v, d_v), _add(x_a, f_a, d_a)

    def forward(self, video: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> STGCMAOutput:
        """video (B, M, 3, H, W), audio (B, K, T, F) with K = M (None for a disabled branch)."""
        self.check_inputs(video, audio)
        swin = self.arch.family == "swin"
        x_v = (self.embed_video_swin(video) if swin else self.embed_video(video)) if video is not None else None
        x_a = (self.embed_audio_swin(audio) if swin else self.embed_audio(audio)) if audio is not None else None
        stages_v, stages_a = [], []  # each stage's last tokens (dense tasks read them as maps)
        for stage in self.arch.stages:
            if stage.downsample:  # the frozen downsampling between stages (none in a ViT)
                x_v = self.arch.downsample(stage, x_v) if x_v is not None else None
                x_a = self.arch.downsample(stage, x_a) if x_a is not None else None
            for i in stage.blocks:
                x_v, x_a = self.block(i, x_v, x_a)
            stages_v.append(x_v)
            stages_a.append(x_a)
        x_v = self.arch.final_norm(x_v) if x_v is not None else None
        x_a = self.arch.final_norm(x_a) if x_a is not None else None
        stages_v[-1], stages_a[-1] = x_v, x_a  # the last stage's map after the final norm
        # pooled per frame (ViT: the class token), stage maps, head
        return self.collect_output(x_v, x_a, stages_v, stages_a)


def _add(x: torch.Tensor | None, u: torch.Tensor | None, d: torch.Tensor | None) -> torch.Tensor | None:
    if x is None:
        return None
    return x + u if d is None else x + u + d
