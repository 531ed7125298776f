"""`ReferenceSTGCMA`: plain PyTorch, written to read like the spec (``docs/model.md``), equation by equation.

It is the ground truth of every parity test and benchmark, and shares no forward code with the fast path.
Layouts: x_v (B, M, N_v, D), x_a (B, K, N_a, D), K = M, class token first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import drop_path
from timm.models.vision_transformer import Attention

from .backbones import BlockParts
from .backbones.vit import audio_patch_weight, audio_pos_embed
from .core import STGCMABase, STGCMAOutput
from .modules import AVAdapter, BlockAdapters, TAdapter


def mhsa(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """The frozen multi-head self-attention over the second-to-last axis of x (..., L, D) -> (..., L, D)."""
    *lead, L, D = x.shape
    H, hd = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x).reshape(*lead, L, 3, H, hd)
    q, k, v = (qkv[..., i, :, :].transpose(-3, -2) for i in range(3))  # each (..., H, L, hd)
    weights = torch.softmax((q @ k.transpose(-2, -1)) * attn.scale, dim=-1)  # (..., H, L, L)
    out = (weights @ v).transpose(-3, -2).reshape(*lead, L, H * hd)
    return attn.proj(out)


def adapter(ad: TAdapter, z: torch.Tensor) -> torch.Tensor:
    """``Ad(z) = GELU(z W_d + b_d) W_u + b_u``."""
    return F.gelu(z @ ad.down.weight.T + ad.down.bias) @ ad.up.weight.T + ad.up.bias


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

    def temporal(self, p: BlockParts, ad: TAdapter, x: torch.Tensor, drop_rate: float) -> torch.Tensor:
        """x + DropPath(Ad_T(MHSA(LN1(x)))) with attention across time: x viewed as (B * N, M, D)."""
        B, M, N, D = x.shape
        xt = x.transpose(1, 2).reshape(B * N, M, D)
        delta = adapter(ad, p.ls1(mhsa(p.attn, p.norm1(xt))))
        xt = xt + drop_path(delta, drop_rate, self.training)
        return xt.reshape(B, N, M, D).transpose(1, 2)

    def block(self, i: int, x_v: torch.Tensor | None, x_a: torch.Tensor | None):
        p: BlockParts = self.arch.block_parts(i)  # LN1, MHSA, LN2, FFN: frozen, shared by both modalities
        ad: BlockAdapters = self.adapters[i]
        stages = self.config.stages
        # 1. temporal adaptation, each modality separately
        if "temporal" in stages:
            if x_v is not None:
                x_v = self.temporal(p, ad.temporal_v, x_v, self.drop_path_rates[i])
            if x_a is not None:
                x_a = self.temporal(p, ad.temporal_a, x_a, self.drop_path_rates[i])
        # 2. cross-modal spatial adaptation: s = MHSA(LN1(x)) within each frame; x = x + s + AVA_S(s_v, s_a)
        s_v = p.ls1(mhsa(p.attn, p.norm1(x_v))) if x_v is not None else None
        s_a = p.ls1(mhsa(p.attn, p.norm1(x_a))) if x_a is not None else None
        d_v, d_a = av_adapter(ad.spatial, *ad.gates("spatial"), s_v, s_a) if "spatial" in stages else (None, None)
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
        x_v = self.embed_video(video) if video is not None else None
        x_a = self.embed_audio(audio) if audio is not None else None
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
