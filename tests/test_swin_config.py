"""Swin configuration: presets, per-stage bottlenecks, family-specific options refused clearly, parameter counts."""

from __future__ import annotations

import re

import pytest
import torch

from stgcma_fast import AVEHead, ReferenceSTGCMA, STGCMAConfig

SWIN_B, SWIN_L = (128, 256, 512, 1024), (192, 384, 768, 1536)
TINY_SWIN = dict(img_size=32, embed_dim=16, depths=(2, 2, 1), num_heads=(2, 2, 4), window_size=4)
TINY_NAME = "swin_tiny_patch4_window7_224"


@pytest.mark.parametrize("preset, widths, expected", [
    ("swin-b-tiny", SWIN_B, (16, 32, 32, 64)),
    ("swin-b-base", SWIN_B, (32, 64, 64, 128)),
    ("swin-l-tiny", SWIN_L, (24, 48, 48, 96)),
    ("swin-l-base", SWIN_L, (96, 96, 96, 96)),
])
def test_swin_presets_give_the_authors_per_stage_bottlenecks(preset, widths, expected):
    cfg = STGCMAConfig.preset(preset)
    assert cfg.family == "swin" and cfg.audio_size == (224, 224)
    assert cfg.stage_bottlenecks(widths) == expected


def test_adapter_as_one_ratio_a_list_or_widths():
    assert STGCMAConfig(backbone=TINY_NAME, adapter=0.25).stage_bottlenecks((16, 32, 64)) == (4, 8, 16)
    assert STGCMAConfig(backbone=TINY_NAME, adapter=[0.5, 3, 0.1]).stage_bottlenecks((16, 32, 64)) == (8, 3, 6)
    assert STGCMAConfig(backbone=TINY_NAME, adapter=7).stage_bottlenecks((16, 32, 64)) == (7, 7, 7)
    assert STGCMAConfig(backbone=TINY_NAME, adapter="tiny").stage_bottlenecks((16, 32, 64)) == (2, 4, 4)
    cfg = STGCMAConfig(backbone=TINY_NAME, adapter=[0.5, 3, 0.1])
    assert STGCMAConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["adapter"] == [0.5, 3, 0.1]


def test_vit_behaviour_is_unchanged():
    cfg = STGCMAConfig()
    assert cfg.family == "vit" and cfg.audio_size == (102, 128) and cfg.bottleneck_width(768) == 96
    assert STGCMAConfig(adapter=[1 / 8]).bottleneck_width(768) == 96


@pytest.mark.parametrize("kwargs, message", [
    (dict(adapter=[0.1, 0.2]), r"one bottleneck per backbone stage \(a ViT has 1\), got 2 entries \[0.1, 0.2\]"),
    (dict(adapter=[]), r"per-stage adapter list with at least one entry, got \[\]"),
    (dict(adapter=["tiny"]), r"expected adapter entry to be a ratio in \(0, 1\] or a width >= 1, got 'tiny'"),
    (dict(adapter=[0.5, 1.5]), r"adapter entry ratio in \(0, 1\], got 1.5"),
    (dict(adapter=[0.5, 0]), r"adapter entry width >= 1, got 0"),
])
def test_bad_adapter_lists_are_refused_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        STGCMAConfig(**kwargs)


def test_per_stage_list_of_the_wrong_length_is_refused_at_build():
    cfg = STGCMAConfig(backbone=TINY_NAME, backbone_kwargs=TINY_SWIN, adapter=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"one bottleneck per backbone stage \(3 stages\), got 2 entries"):
        ReferenceSTGCMA(cfg)


@pytest.mark.parametrize("audio_size", [(102, 128), (32, 16), (16, 32)])
def test_swin_refuses_an_audio_size_other_than_the_frame_size(audio_size):
    cfg = STGCMAConfig(backbone=TINY_NAME, backbone_kwargs=TINY_SWIN, audio_size=audio_size)
    expected = re.escape(f"expected audio_size (T, F) = (32, 32) for the Swin backbone '{TINY_NAME}'")
    with pytest.raises(ValueError, match=expected + ".*" + re.escape(f"got {tuple(audio_size)}")):
        ReferenceSTGCMA(cfg)


def test_swin_default_audio_size_follows_the_frame_size():
    assert STGCMAConfig(backbone=TINY_NAME, backbone_kwargs=TINY_SWIN).audio_size == (32, 32)
    assert STGCMAConfig(backbone="swin_base_patch4_window12_384").audio_size == (384, 384)


def test_a_swin_name_on_a_non_swin_module_is_refused():
    import timm

    from stgcma_fast.backbones import SwinBackbone

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32)
    with pytest.raises(ValueError, match=r"swin_x: expected a timm SwinTransformer, got VisionTransformer"):
        SwinBackbone(vit, STGCMAConfig(backbone="swin_x"))


# Trainable / total with the AVE head and shared gates: the spec's counts (the paper: 5.6 / 92.3, 10.1 / 96.8,
# 11.7 / 206.7, 19.0 / 214.0).
COUNTS = {"swin-b-tiny": (5.600e6, 92.346e6), "swin-b-base": (10.069e6, 96.814e6),
          "swin-l-tiny": (11.741e6, 206.740e6), "swin-l-base": (19.027e6, 214.026e6)}


@pytest.mark.parametrize("preset", list(COUNTS))
def test_parameter_counts_match_the_paper(preset):
    cfg = STGCMAConfig.preset(preset, shared_gates=True)
    with torch.device("meta"):
        model = ReferenceSTGCMA(cfg, head=AVEHead(1024 if preset.startswith("swin-b") else 1536))
    report = model.param_report()
    trainable, total = COUNTS[preset]
    assert abs(report.trainable - trainable) / trainable < 0.005, (preset, report.trainable)
    assert abs(report.total - total) / total < 0.005, (preset, report.total)
    # frozen: the backbone without its classifier and the 1-channel audio patch embedding (conv, bias, norm)
    C = 128 if preset.startswith("swin-b") else 192
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert backbone == (86_743_224 if C == 128 else 194_995_476)
    assert report.frozen == backbone + C * 16 + C + 2 * C
    assert "final_norm" not in report.groups and "temporal_embeddings" not in report.groups
    assert model.num_features == 8 * C


def test_only_unshifted_blocks_have_temporal_adapters_and_bias_tables():
    cfg = STGCMAConfig(backbone=TINY_NAME, backbone_kwargs=TINY_SWIN, num_frames=3)
    model = ReferenceSTGCMA(cfg)
    # blocks 0, 1 (stage 0), 2, 3 (stage 1), 4 (stage 2): temporal in the even index of each stage
    assert [model.adapters[i].temporal_v is not None for i in range(5)] == [True, False, True, False, True]
    tables = {n: p for n, p in model.named_parameters() if "temporal_bias" in n}
    assert sorted(tables) == [f"adapters.{i}.temporal_bias_{m}" for i in (0, 2, 4) for m in "av"]
    assert tables["adapters.4.temporal_bias_v"].shape == (5, 4) and tables["adapters.0.temporal_bias_a"].shape == (5, 2)
    assert all(p.requires_grad and 0 < p.std() < 0.1 for p in tables.values())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not any(p.requires_grad for p in model.audio_patch_embed.parameters())
    assert model.temporal_embed_v is None and model.temporal_embed_a is None
    assert [s.bottleneck for s in model.arch.stages] == [4, 8, 8]  # the default "base": Swin-B ratios 1/4, 1/4, 1/8
