"""The README's training-loop example runs (on CPU, with a small backbone and a synthetic AVE dataset)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    loops = [b for b in blocks if "AveLoader" in b and "loss.backward()" in b]
    assert len(loops) == 1, "the README should hold exactly one training-loop example"
    return loops[0]


def test_readme_training_loop_runs(tmp_path):
    pytest.importorskip("av", reason="PyAV writes the synthetic clips")
    from stgcma_fast.data.synth import synth_ave

    synth_ave(tmp_path / "ave", clips=3, seed=0)
    code = _example()
    replacements = {  # same code, CPU-sized: a 1-block, 64-wide CLIP-shaped ViT, no weight download
        'STGCMAConfig.preset("clip-b16-base")':
            'STGCMAConfig.preset("clip-b16-base", backbone_kwargs=dict(depth=1, embed_dim=64, num_heads=2))',
        "pretrained=True": "pretrained=False",
        "AVEHead(768)": "AVEHead(64)",
        ".cuda()": "",
        'device="cuda"': 'device="cpu"',
        'torch.autocast("cuda"': 'torch.autocast("cpu"',
        '"data/ave"': repr(str(tmp_path / "ave")),
        "batch_size=8": "batch_size=2",
    }
    for old, new in replacements.items():
        assert old in code, f"README example changed: {old!r} not found; update this test"
        code = code.replace(old, new)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["loss"].item() > 0
    assert namespace["logits"].shape[1:] == (10, 29)
