"""The backbone seam (``stgcma_fast.backbones``): what the ViT side reports and that it stays bound to the model's
own frozen modules through copies and device moves."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from stgcma_fast import FastSTGCMA, ReferenceSTGCMA
from stgcma_fast.backbones import GlobalAttention, Stage, ViTBackbone, build_backbone

from .helpers import TINY_VIT, inputs, tiny_config

IMPLS = {"reference": ReferenceSTGCMA, "fast": FastSTGCMA}


def test_vit_geometry_and_parts():
    cfg = tiny_config(adapter=24)
    model = FastSTGCMA(cfg)
    arch = model.arch
    assert isinstance(arch, ViTBackbone) and arch.module is model.backbone
    assert arch.stages == (Stage(index=0, blocks=range(2), width=64, heads=4, bottleneck=24, grid=(4, 4),
                                 audio_grid=(2, 3), downsample=False),)  # fmt: skip
    assert (arch.depth, arch.embed_dim, arch.num_features) == (2, 64, 64)
    assert (arch.num_video_tokens, arch.num_audio_tokens, arch.img_size) == (17, 7, (32, 32))
    for i, blk in enumerate(model.backbone.blocks):
        p = arch.block_parts(i)
        assert arch.block(i) is blk
        assert (p.norm1, p.attn, p.ls1, p.norm2, p.mlp, p.ls2) == (blk.norm1, blk.attn, blk.ls1, blk.norm2, blk.mlp,
                                                                   blk.ls2)  # fmt: skip
        assert p.layout == GlobalAttention() and (p.num_heads, p.scale) == (4, blk.attn.scale)
    assert arch.patch_weight is model.backbone.patch_embed.proj.weight
    assert [n for n, p in model.backbone.named_parameters() if p.requires_grad] == ["norm.weight", "norm.bias"]


def test_seam_is_not_a_submodule():
    """The seam holds references, not parameters: names and counts are those of the timm module."""
    model = FastSTGCMA(tiny_config())
    assert not any(n.startswith("arch") for n, _ in model.named_parameters())
    assert not any(n.startswith("arch") for n in model.state_dict())


@pytest.mark.parametrize("impl", list(IMPLS))
def test_a_deep_copy_computes_with_its_own_backbone(impl):
    cfg = tiny_config()
    model = IMPLS[impl](cfg).eval()
    clone = copy.deepcopy(model)
    assert clone.arch.module is clone.backbone and clone.arch.block_parts(0).attn is clone.backbone.blocks[0].attn
    with torch.no_grad():
        clone.backbone.blocks[0].attn.proj.weight.zero_()  # changes the copy only
    video, audio = inputs(cfg)
    with torch.no_grad():
        a, b = model(video, audio).video_tokens, clone(video, audio).video_tokens
        expected = clone.backbone.forward_features(video[:, 0])
    assert not torch.equal(a, b)
    torch.testing.assert_close(b[:, 0], expected, atol=1e-5, rtol=1e-5)


def test_meta_model_materialised_with_to_empty_runs():
    cfg = tiny_config()
    with torch.device("meta"):
        model = FastSTGCMA(cfg)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.1)
    assert model.arch.patch_weight.device.type == "cpu"
    out = model.eval()(*inputs(cfg))
    assert torch.isfinite(out.video_tokens).all() and out.video_stages[0].shape == (2, 3, 64, 4, 4)


def test_build_backbone_refuses_a_non_vit_naming_it():
    module = timm.create_model("resnet18", pretrained=False, num_classes=0)
    with pytest.raises(ValueError, match=r"resnet18: expected a timm VisionTransformer, got ResNet"):
        build_backbone(module, tiny_config(backbone="resnet18", backbone_kwargs={}))


def test_vit_stage_map_of_audio_uses_the_audio_grid():
    model = ReferenceSTGCMA(tiny_config(backbone_kwargs={**TINY_VIT, "depth": 1}))
    stage = model.arch.stages[0]
    x = torch.arange(2 * 3 * 7 * 5, dtype=torch.float32).view(2, 3, 7, 5)  # (B, K, N_a, C)
    m = model.arch.stage_map(stage, x, stage.audio_grid)
    assert m.shape == (2, 3, 5, 2, 3)
    assert torch.equal(m[1, 2, :, 1, 0], x[1, 2, 1 + 1 * 3 + 0])  # row = time patch 1, column = frequency patch 0
