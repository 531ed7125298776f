"""Trainable / total parameter counts reproduce the paper's table (no forward needed: models built on `meta`)."""

from __future__ import annotations

import pytest
import torch

from stgcma_fast import AVEHead, FastSTGCMA, ReferenceSTGCMA, STGCMAConfig

# preset -> (embed dim, paper's trainable count with the AVE head, paper's total or None)
PAPER = {
    "clip-b16-tiny": (768, 3.5e6, None),
    "clip-b16-base": (768, 11.5e6, 97.5e6),
    "clip-l14-tiny": (1024, 10.7e6, None),
    "clip-l14-base": (1024, 20.1e6, 323.6e6),
}


@pytest.mark.parametrize("preset", list(PAPER))
def test_paper_parameter_counts(preset):
    dim, trainable, total = PAPER[preset]
    with torch.device("meta"):
        model = FastSTGCMA(STGCMAConfig.preset(preset), head=AVEHead(dim))
    report = model.param_report()
    assert abs(report.trainable - trainable) / trainable < 0.02, str(report)
    if total is not None:
        assert abs(report.total - total) / total < 0.01, str(report)
    assert report.trainable == sum(p.numel() for p in model.trainable_parameters())
    assert sum(report.groups.values()) == report.trainable


def test_clip_b16_base_count_matches_the_spec_formula():
    with torch.device("meta"):
        model = ReferenceSTGCMA(STGCMAConfig.preset("clip-b16-base"), head=AVEHead(768))
    D, r, depth, M = 768, 96, 12, 10
    adapters = depth * 6 * (2 * D * r + r + D)
    head = D * 2 * 512 + 512 + 512 * 29 + 29
    expected = adapters + head + 2 * M * D + 2 * D + depth * 4  # + temporal embeddings, final norm, 4 gates/block
    report = model.param_report()
    assert report.trainable == expected
    assert model.bottleneck == r
    assert report.groups["gates"] == depth * 4
    assert report.groups["temporal_adapters"] == report.groups["spatial_adapters"] == depth * 2 * (2 * D * r + r + D)


@pytest.mark.parametrize(
    "overrides, missing_groups, gates_per_block",
    [
        (dict(shared_gates=True), [], 2),
        (dict(fusion="a2v"), [], 2),
        (dict(fusion="none"), ["gates"], 0),
        (dict(branches="video"), ["gates"], 0),
        (dict(stages=("temporal",)), ["gates", "spatial_adapters", "global_adapters"], 0),
        (dict(stages=("spatial", "global")), ["temporal_adapters"], 4),
    ],
)
def test_ablation_switches_change_what_is_trainable(overrides, missing_groups, gates_per_block):
    with torch.device("meta"):
        model = FastSTGCMA(STGCMAConfig.preset("clip-b16-tiny", **overrides))
    groups = model.param_report().groups
    for g in missing_groups:
        assert g not in groups, groups
    assert groups.get("gates", 0) == 12 * gates_per_block


def test_backbone_is_frozen_except_final_norm():
    with torch.device("meta"):
        model = FastSTGCMA(STGCMAConfig.preset("clip-b16-tiny"))
    trainable_backbone = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert trainable_backbone == ["norm.weight", "norm.bias"]
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("adapters."))
