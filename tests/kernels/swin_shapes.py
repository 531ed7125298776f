"""The per-stage widths of the Swin presets, for the kernels' interpreter parity tests (small token counts).

Swin-B: C = 128, 256, 512, 1024 with heads 4, 8, 16, 32; Swin-L: C = 192, 384, 768, 1536 with heads 6, 12, 24,
48; head dim 32 throughout. Bottlenecks r = int(C * ratio) per preset (Swin-B Tiny 16/32/32/64, Base 32/64/64/128;
Swin-L Tiny 24/48/48/96, Base 96/96/96/96): r in {16, 24, 32, 48, 64, 96, 128}, none but 16..128's powers of two
a power of two. Token counts per frame: 49 per 7 x 7 window (the spatial AV-Adapter), the whole stage map for the
global one (3,136 / 784 / 196 / 49; the interpreter tests use 49 and a few odd counts).
"""

from __future__ import annotations

# (C, heads) per stage
STAGES = {"swin-b": [(128, 4), (256, 8), (512, 16), (1024, 32)], "swin-l": [(192, 6), (384, 12), (768, 24), (1536, 48)]}
RATIOS = {
    "swin-b-tiny": ("swin-b", [1 / 8, 1 / 8, 1 / 16, 1 / 16]),
    "swin-b-base": ("swin-b", [1 / 4, 1 / 4, 1 / 8, 1 / 8]),
    "swin-l-tiny": ("swin-l", [1 / 8, 1 / 8, 1 / 16, 1 / 16]),
    "swin-l-base": ("swin-l", [1 / 2, 1 / 4, 1 / 8, 1 / 16]),
}


def adapter_widths() -> list[tuple[int, int]]:
    """Every distinct (C, r) pair of the four presets' stages (15 pairs)."""
    pairs = {(C, int(C * ratio)) for backbone, ratios in RATIOS.values()
             for (C, _), ratio in zip(STAGES[backbone], ratios)}  # fmt: skip
    return sorted(pairs)


def widths() -> list[int]:
    """Every stage width C (8 values)."""
    return sorted({C for stages in STAGES.values() for C, _ in stages})


def heads() -> list[int]:
    """Every stage's head count (head dim 32)."""
    return sorted({H for stages in STAGES.values() for _, H in stages})
