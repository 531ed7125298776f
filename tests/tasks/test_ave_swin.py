"""The AVE task on a Swin backbone: the Swin audio front end (224-style: 4.4 ms shift) and pooled features."""

from __future__ import annotations

import torch

from stgcma_fast.config import STGCMAConfig
from stgcma_fast.model import FastSTGCMA
from stgcma_fast.tasks.ave.task import AveOptions, AveTask, frontend_settings

TINY_SWIN = {"img_size": 56, "embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2)}


def test_swin_models_get_the_swin_front_end_and_train_a_step() -> None:
    model = FastSTGCMA(STGCMAConfig.preset("swin-b-tiny", backbone_kwargs=TINY_SWIN, adapter=4))
    settings = frontend_settings(model)
    assert settings.frame_shift_ms == 4.4 and (settings.target_frames, settings.num_mel_bins) == (56, 56)
    vit = FastSTGCMA(STGCMAConfig.preset("clip-b16-tiny", backbone_kwargs={"img_size": 32, "embed_dim": 32,
                                                                            "depth": 1, "num_heads": 2}))
    assert frontend_settings(vit).frame_shift_ms == 10.0
    task = AveTask(AveOptions(mixup_prob=0.0, spec_augment=False))
    head = task.build_head(model)
    batch = {"video": torch.randn(2, 10, 3, 56, 56), "waveform": torch.randn(2, 160000) * 0.1,
             "labels": torch.randint(0, 29, (2, 10)), "ids": ["a", "b"]}
    result = task.step(model, head, batch, train=True, generator=torch.Generator().manual_seed(0))
    result.loss.backward()
    assert result.outputs["pred"].shape == (2, 10) and torch.isfinite(result.loss)
    assert head.fc1.weight.grad is not None and head.fc1.in_features == 2 * model.num_features
