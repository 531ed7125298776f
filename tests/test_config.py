"""STGCMAConfig: presets, bottleneck widths, validation and serialisation."""

from __future__ import annotations

import pytest

from stgcma_fast import PRESETS, STGCMAConfig


@pytest.mark.parametrize("preset, dim, r", [("clip-b16-tiny", 768, 24), ("clip-b16-base", 768, 96),
                                            ("clip-l14-tiny", 1024, 32), ("clip-l14-base", 1024, 64)])
def test_presets_give_the_papers_bottlenecks(preset, dim, r):
    assert STGCMAConfig.preset(preset).bottleneck_width(dim) == r


def test_explicit_widths_and_ratios():
    assert STGCMAConfig(adapter=48).bottleneck_width(768) == 48
    assert STGCMAConfig(adapter=1 / 16).bottleneck_width(768) == 48
    assert STGCMAConfig(adapter="base").bottleneck_width(384) == 48  # other widths take the ViT-B ratios


@pytest.mark.parametrize("field, value, message", [
    ("fusion", "both", r"fusion to be one of \('bidirectional', 'a2v', 'v2a', 'none'\), got 'both'"),
    ("branches", "av", r"branches to be one of"),
    ("stages", ("temporal", "spacial"), r"stages to be distinct names from"),
    ("stages", ("global", "global"), r"stages to be distinct"),
    ("adapter", "large", r"adapter to be one of \('tiny', 'base'\)"),
    ("adapter", 0, r"adapter width >= 1, got 0"),
    ("adapter", 1.5, r"adapter ratio in \(0, 1\], got 1.5"),
    ("adapter", True, r"expected adapter to be"),
    ("num_frames", 0, r"expected num_frames to be an int >= 1, got 0 \(int\)"),
    ("audio_size", (102,), r"audio_size = \(T, F\)"),
    ("drop_path_rate", 1.0, r"expected drop_path_rate to be a number in \[0, 1\), got 1.0 \(float\)"),
    ("audio_patch_reduction", "max", r"audio_patch_reduction to be one of"),
])
def test_invalid_values_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        STGCMAConfig(**{field: value})


def test_stages_are_canonically_ordered_and_flows_follow_fusion():
    cfg = STGCMAConfig(stages=("global", "temporal"))
    assert cfg.stages == ("temporal", "global")
    assert (STGCMAConfig(fusion="a2v").a2v, STGCMAConfig(fusion="a2v").v2a) == (True, False)
    assert (STGCMAConfig(branches="video").a2v, STGCMAConfig(branches="video").has_audio) == (False, False)


def test_round_trip_and_unknown_fields():
    cfg = STGCMAConfig.preset("clip-l14-base", num_frames=8, fusion="v2a", stages=("spatial",))
    assert STGCMAConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown STGCMAConfig fields \['depth'\]"):
        STGCMAConfig.from_dict({"depth": 3})
    with pytest.raises(ValueError, match="unknown preset 'clip-h14'"):
        STGCMAConfig.preset("clip-h14")
    assert set(PRESETS) == {"clip-b16-tiny", "clip-b16-base", "clip-l14-tiny", "clip-l14-base",
                            "swin-b-tiny", "swin-b-base", "swin-l-tiny", "swin-l-base"}
