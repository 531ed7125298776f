"""A tiny synthetic AVE set and a tiny run config for the engine's tests (seconds per epoch on a 2-core CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

# A CLIP-shaped ViT small enough that one epoch over the tiny set takes about a second.
TINY_OVERRIDES = [
    "model.preset=clip-b16-tiny", "model.pretrained=false", "optim.average_from_epoch=null",
    "model.config.backbone_kwargs={img_size: 32, embed_dim: 32, depth: 1, num_heads: 2}",
    "model.config.adapter=8",
    "optim.epochs=2", "optim.lr=1e-3", "optim.head_lr_scale=1", "optim.warmup_epochs=0.5",
    "data.batch_size=4", "data.eval_batch_size=4", "data.num_workers=0",
    "run.log_every=1", "run.progress=false", "run.tensorboard=false",
]

# No randomness in the step itself, so one process and two DDP ranks compute the same thing.
DETERMINISTIC_OVERRIDES = ["ave.head_dropout=0", "model.config.drop_path_rate=0", "ave.mixup_prob=0",
                           "ave.spec_augment=false"]


@pytest.fixture(scope="session")
def tiny_ave(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 clips (train 10 / val 1 / test 1 with the default fractions), 32 px, 4 fps, VP9 in Matroska."""
    from stgcma_fast.data.synth import synth_ave

    root = tmp_path_factory.mktemp("tiny_ave")
    synth_ave(root, 12, codec="vp9", size=32, fps=4, num_classes=3, distractor_prob=0.5)
    return root
