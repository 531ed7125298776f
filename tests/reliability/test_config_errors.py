"""STGCMAConfig under wrong types and ranges: every error names the field, the value received and its type."""

from __future__ import annotations

import re

import numpy as np
import pytest

from stgcma_fast import STGCMAConfig


@pytest.mark.parametrize("field, value, expected", [
    ("drop_path_rate", "0.1", "expected drop_path_rate to be a number in [0, 1), got '0.1' (str)"),
    ("drop_path_rate", True, "expected drop_path_rate to be a number in [0, 1), got True (bool)"),
    ("drop_path_rate", None, "expected drop_path_rate to be a number in [0, 1), got None (NoneType)"),
    ("drop_path_rate", -0.1, "expected drop_path_rate to be a number in [0, 1), got -0.1 (float)"),
    ("drop_path_rate", float("nan"), "expected drop_path_rate to be a number in [0, 1), got nan (float)"),
    ("num_frames", 8.0, "expected num_frames to be an int >= 1, got 8.0 (float)"),
    ("num_frames", "8", "expected num_frames to be an int >= 1, got '8' (str)"),
    ("num_frames", True, "expected num_frames to be an int >= 1, got True (bool)"),
    ("num_frames", np.int64(8), f"expected num_frames to be an int >= 1, got {np.int64(8)!r} (int64)"),
    ("num_frames", -2, "expected num_frames to be an int >= 1, got -2 (int)"),
    ("backbone", 3, "expected backbone to be a non-empty timm model name (str), got 3 (int)"),
    ("backbone", "", "expected backbone to be a non-empty timm model name (str), got '' (str)"),
    ("backbone_kwargs", [("depth", 2)], "expected backbone_kwargs to be a dict of str keys, got [('depth', 2)] (list)"),
    ("backbone_kwargs", {1: 2}, "expected backbone_kwargs to be a dict of str keys, got {1: 2} (dict)"),
    ("backbone_kwargs", None, "expected backbone_kwargs to be a dict of str keys, got None (NoneType)"),
    ("stages", "temporal", "expected stages to be a tuple of names from ('temporal', 'spatial', 'global'), got "
                           "'temporal' (str)"),
    ("stages", (1, 2), "expected stages to be a tuple of names from"),
    ("audio_size", "ab", "expected audio_size = (T, F) positive ints, got 'ab' (str)"),
    ("audio_size", (102.0, 128), "expected audio_size = (T, F) positive ints, got (102.0, 128) (tuple)"),
    ("audio_size", (True, 128), "expected audio_size = (T, F) positive ints, got (True, 128) (tuple)"),
    ("audio_size", 102, "expected audio_size = (T, F) positive ints, got 102 (int)"),
    ("fusion", None, "expected fusion to be one of ('bidirectional', 'a2v', 'v2a', 'none'), got None (NoneType)"),
    ("fusion", ["a2v"], "expected fusion to be one of ('bidirectional', 'a2v', 'v2a', 'none'), got ['a2v'] (list)"),
    ("branches", 1, "expected branches to be one of ('audio-visual', 'video', 'audio'), got 1 (int)"),
    ("audio_patch_reduction", "Mean", "expected audio_patch_reduction to be one of ('mean', 'sum'), got 'Mean'"),
    ("shared_gates", 1, "expected shared_gates to be a bool, got 1 (int)"),
    ("shared_gates", "yes", "expected shared_gates to be a bool, got 'yes' (str)"),
    ("adapter", None, "expected adapter to be 'tiny', 'base', a ratio in (0, 1] or a width >= 1, got None (NoneType)"),
    ("adapter", np.int64(24), "expected adapter to be 'tiny', 'base', a ratio in (0, 1] or a width >= 1, got "
                              f"{np.int64(24)!r} (int64)"),
    ("adapter", float("nan"), "expected an adapter ratio in (0, 1], got nan"),
])
def test_wrong_types_and_ranges_name_the_field_value_and_type(field, value, expected) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(expected)):
        STGCMAConfig(**{field: value})


def test_accepted_forms_are_normalised() -> None:
    cfg = STGCMAConfig(drop_path_rate=0, stages=["global", "spatial"], audio_size=[10, 20], num_frames=4,
                       backbone_kwargs={"depth": 2}.items().mapping)
    assert cfg.drop_path_rate == 0.0 and type(cfg.drop_path_rate) is float
    assert cfg.stages == ("spatial", "global") and cfg.audio_size == (10, 20)
    assert type(cfg.backbone_kwargs) is dict
    assert STGCMAConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("d, expected", [
    ([("fusion", "a2v")], "expected a dict of STGCMAConfig fields, got [('fusion', 'a2v')] (list)"),
    ({"fusion": "a2v", "depth": 2}, "unknown STGCMAConfig fields ['depth']"),
    ({"num_frames": "10"}, "expected num_frames to be an int >= 1, got '10' (str)"),
])
def test_from_dict_errors(d, expected) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(expected)):
        STGCMAConfig.from_dict(d)
