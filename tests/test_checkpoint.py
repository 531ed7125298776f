"""Backbone weights from local files: an OpenAI CLIP state dict (converted by timm's filter) and a timm one."""

from __future__ import annotations

import warnings

import pytest
import torch

from stgcma_fast import FastSTGCMA, ReferenceSTGCMA

from .helpers import TINY_VIT, tiny_config


def openai_clip_visual_state_dict(dim: int = 64, depth: int = 2, patch: int = 8, grid: int = 4) -> dict:
    """A random state dict in OpenAI CLIP's own format (visual tower plus a stray text-tower key)."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {"visual.conv1.weight": r(dim, 3, patch, patch), "visual.class_embedding": r(dim),
          "visual.positional_embedding": r(1 + grid * grid, dim), "visual.proj": r(dim, 32),
          "transformer.resblocks.0.ln_1.weight": r(dim), "logit_scale": r(())}
    for n in ("ln_pre", "ln_post"):
        sd[f"visual.{n}.weight"], sd[f"visual.{n}.bias"] = r(dim), r(dim)
    for i in range(depth):
        p = f"visual.transformer.resblocks.{i}."
        for n in ("ln_1", "ln_2"):
            sd[p + n + ".weight"], sd[p + n + ".bias"] = r(dim), r(dim)
        sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"] = r(3 * dim, dim), r(3 * dim)
        sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"] = r(dim, dim), r(dim)
        sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = r(4 * dim, dim), r(4 * dim)
        sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = r(dim, 4 * dim), r(dim)
    return sd


@pytest.mark.parametrize("impl", [FastSTGCMA, ReferenceSTGCMA])
def test_openai_clip_state_dict_lands_in_the_frozen_backbone(tmp_path, impl):
    sd = openai_clip_visual_state_dict()
    path = tmp_path / "clip_visual.pt"
    torch.save(sd, path)
    model = impl(tiny_config(), checkpoint_path=path)
    bb = model.backbone
    assert torch.equal(bb.patch_embed.proj.weight, sd["visual.conv1.weight"])
    assert torch.equal(bb.cls_token.flatten(), sd["visual.class_embedding"])
    assert torch.equal(bb.pos_embed[0], sd["visual.positional_embedding"])
    assert torch.equal(bb.norm_pre.weight, sd["visual.ln_pre.weight"])
    assert torch.equal(bb.norm.bias, sd["visual.ln_post.bias"])
    blk = bb.blocks[1]
    p = "visual.transformer.resblocks.1."
    assert torch.equal(blk.attn.qkv.weight, sd[p + "attn.in_proj_weight"])
    assert torch.equal(blk.attn.proj.bias, sd[p + "attn.out_proj.bias"])
    assert torch.equal(blk.mlp.fc1.weight, sd[p + "mlp.c_fc.weight"])
    assert torch.equal(blk.norm2.weight, sd[p + "ln_2.weight"])
    assert not blk.attn.qkv.weight.requires_grad and bb.norm.weight.requires_grad
    # the adapters are still fresh, so the model computes the loaded backbone
    video = torch.randn(1, 3, 3, 32, 32)
    audio = torch.randn(1, 3, 20, 24)
    with torch.no_grad():
        out = model.eval()(video, audio)
        torch.testing.assert_close(out.video_tokens[:, 0], bb.forward_features(video[:, 0]))


def test_timm_state_dict_and_safetensors(tmp_path):
    import timm
    from safetensors.torch import save_file

    src = timm.create_model("vit_base_patch16_clip_quickgelu_224", num_classes=0, **TINY_VIT)
    save_file(src.state_dict(), tmp_path / "vit.safetensors")
    model = FastSTGCMA(tiny_config(), checkpoint_path=tmp_path / "vit.safetensors")
    for (n, a), b in zip(src.state_dict().items(), model.backbone.state_dict().values()):
        assert torch.equal(a, b), n


def test_incomplete_checkpoint_is_an_error(tmp_path):
    sd = openai_clip_visual_state_dict()
    del sd["visual.transformer.resblocks.1.mlp.c_fc.weight"]
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"missing \['blocks.1.mlp.fc1.weight'\]"):
        FastSTGCMA(tiny_config(), checkpoint_path=tmp_path / "broken.pt")


def test_missing_file_and_conflicting_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FastSTGCMA(tiny_config(), checkpoint_path=tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="either pretrained=True"):
        FastSTGCMA(tiny_config(), pretrained=True, checkpoint_path=tmp_path / "x.pt")


class _Holder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_openai_torchscript_archive(tmp_path):
    """OpenAI distributes CLIP as TorchScript archives; their state dict goes through the same conversion."""
    sd = openai_clip_visual_state_dict()
    root = _Holder()
    for key, value in sd.items():
        *path, leaf = key.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, _Holder())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, torch.nn.Parameter(value))
    with warnings.catch_warnings():  # torch.jit is deprecated but is how these files are read
        warnings.simplefilter("ignore")
        torch.jit.script(root).save(str(tmp_path / "ViT-tiny.pt"))
        model = FastSTGCMA(tiny_config(), checkpoint_path=tmp_path / "ViT-tiny.pt")
    assert torch.equal(model.backbone.blocks[0].attn.qkv.bias, sd["visual.transformer.resblocks.0.attn.in_proj_bias"])
