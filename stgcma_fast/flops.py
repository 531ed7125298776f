"""Analytic FLOP count of STG-CMA, for MFU.

A multiply-add is 2 FLOPs; LayerNorm, GELU, softmax and other elementwise work are not counted (they are
memory-bound and small next to the GEMMs). Per clip, per block and per modality with M frames of N tokens
(n = M * N token rows), width D, MLP width 4D (``mlp_hidden``), bottleneck r:

- temporal stage: qkv 2n(3D)D + attention over M frames 4 N M^2 D (QK^T and PV, all heads) + proj 2nD^2 + T-Adapter
  2nDr + 2nrD;
- spatial stage: qkv 6nD^2 + attention within frames 4 M N^2 D + proj 2nD^2 + AV-Adapter (below);
- global stage: FFN 2n D mlp_hidden * 2 + AV-Adapter;
- AV-Adapter per modality: down 2nDr + up 2nrD; per frame the cross attention costs 4 N_v N_a r per enabled
  direction (scores and weighted sum);
- embeddings: patch projection 2 (N - 1) D (C p^2) per frame (C = 3 for video, 1 for audio).

For CLIP ViT-B/16 Base (M = 10, N_v = 197, N_a = 49, r = 96) this gives about 600 GFLOP per clip forward, of which
about 560 GFLOP are the frozen GEMMs.

Backward: the frozen layers only need activation gradients (one GEMM per forward GEMM: dX = dY W), the adapters
need activation and weight gradients (two GEMMs), attention backward costs twice its forward (dQ, dK, dV, dP), and
the patch embeddings need no backward at all (frozen weights, inputs without gradient). A disabled stage runs the
plain frozen layer without its adapter. ``tests/test_flops.py`` checks these numbers against
``torch.utils.flop_counter`` on the reference model, forward and training step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlopCount:
    """FLOPs per clip, split by kind, forward only."""

    embed: float
    frozen_gemm: float
    attention: float
    adapters: float

    @property
    def forward(self) -> float:
        return self.embed + self.frozen_gemm + self.attention + self.adapters

    @property
    def train_step(self) -> float:
        """Forward + backward (frozen GEMMs: activation gradients only; adapters: both; attention: 2x)."""
        return self.embed + 2 * self.frozen_gemm + 3 * self.attention + 3 * self.adapters


def stgcma_flops(model) -> FlopCount:
    """FLOPs per clip of an ``STGCMABase`` model (reference or fast: same computation)."""
    cfg = model.config
    D, r, L, M = model.embed_dim, model.bottleneck, model.depth, cfg.num_frames
    mlp_hidden = model.backbone.blocks[0].mlp.fc1.out_features
    ph, pw = model.backbone.patch_embed.patch_size
    branches = []
    if cfg.has_video:
        branches.append((model.num_video_tokens, 3))
    if cfg.has_audio:
        branches.append((model.num_audio_tokens, 1))
    embed = frozen = attention = adapters = 0.0
    for N, channels in branches:
        n = M * N
        embed += 2 * M * (N - 1) * D * channels * ph * pw
        per_block_frozen = 2 * n * 3 * D * D + 2 * n * D * D + 2 * 2 * n * D * mlp_hidden  # qkv, proj, FFN
        per_block_attn = 4 * M * N * N * D
        per_block_adapters = 0.0
        if "temporal" in cfg.stages:
            per_block_frozen += 2 * n * 3 * D * D + 2 * n * D * D
            per_block_attn += 4 * N * M * M * D
            per_block_adapters += 4 * n * D * r
        per_block_adapters += sum(4 * n * D * r for s in ("spatial", "global") if s in cfg.stages)
        frozen += L * per_block_frozen
        attention += L * per_block_attn
        adapters += L * per_block_adapters
    if cfg.has_video and cfg.has_audio:
        directions = int(cfg.a2v) + int(cfg.v2a)
        per_stage = directions * 4 * M * model.num_video_tokens * model.num_audio_tokens * r
        adapters += L * per_stage * sum(s in cfg.stages for s in ("spatial", "global"))
    return FlopCount(embed=embed, frozen_gemm=frozen, attention=attention, adapters=adapters)


# ----------------------------------------------------------------------------------------------------------------------
# Per-op counts of the fused kernels (registered with torch.utils.flop_counter by the kernel modules), same
# conventions: a weight GEMM's backward is two GEMMs (input and weight gradients); an attention backward counts
# 2.5x its forward, as torch counts its fused SDPA backward (the scores are recomputed, then four GEMMs).
ATTENTION_BACKWARD = 2.5


def t_adapter_flops(rows: int, D: int, r: int) -> int:
    """Down- and up-projection of ``rows`` rows; its backward op costs the same: two input-gradient GEMMs (the weight
    gradients are torch GEMMs outside the op, which torch counts)."""
    return 4 * rows * D * r


def av_adapter_flops(G: int, N_v: int, N_a: int, D: int, r: int, directions: int, backward: bool = False) -> int:
    """Both modalities' projections and the cross attention of ``directions`` (0-2) enabled directions over G frames;
    backward: input and weight gradients of the projections and the attention backward, all inside the op."""
    projections = 4 * G * (N_v + N_a) * D * r
    attention = 4 * G * N_v * N_a * r * directions
    return int(2 * projections + ATTENTION_BACKWARD * attention) if backward else projections + attention


def temporal_attention_flops(B: int, M: int, N: int, D: int, backward: bool = False) -> int:
    """Attention over M frames for each of the B * N tokens and all heads (D = heads x head dim)."""
    forward = 4 * B * N * M * M * D
    return int(ATTENTION_BACKWARD * forward) if backward else forward
