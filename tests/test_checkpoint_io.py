"""Training checkpoints: trainable tensors only, atomic writes, strict loading."""

from __future__ import annotations

import pytest
import torch

from stgcma_fast import AVEHead, FastSTGCMA, ReferenceSTGCMA
from stgcma_fast.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, trainable_state_dict

from .helpers import inputs, randomize_, tiny_config


def _trained(cfg):
    torch.manual_seed(11)  # the frozen backbone is re-created from the same seed below (stands in for pretrained)
    model = randomize_(FastSTGCMA(cfg, head=AVEHead(64)), frozen_too=False)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    video, audio = inputs(cfg)
    model(video, audio).logits.square().mean().backward()
    opt.step()
    return model, opt


def test_round_trip_into_the_other_implementation_with_optimizer_state(tmp_path):
    cfg = tiny_config()
    model, opt = _trained(cfg)
    path = save_checkpoint(tmp_path / "ckpt" / "step10.pt", model, opt, step=10, extra={"acc": 0.5})
    payload = read_checkpoint(path)
    assert set(payload["state_dict"]) == set(trainable_state_dict(model))
    assert not any(k.startswith("backbone.blocks") for k in payload["state_dict"]), "frozen tensors saved"

    torch.manual_seed(11)
    other = ReferenceSTGCMA(cfg, head=AVEHead(64))
    other_opt = torch.optim.Adam(other.trainable_parameters(), lr=1e-3)
    got = load_checkpoint(path, other, other_opt)
    assert got["step"] == 10 and got["extra"] == {"acc": 0.5}
    for name, t in trainable_state_dict(model).items():
        assert torch.equal(other.state_dict()[name], t), name
    assert other_opt.state_dict()["state"][0]["exp_avg"].shape == opt.state_dict()["state"][0]["exp_avg"].shape
    model.eval(), other.eval()
    video, audio = inputs(cfg)
    torch.testing.assert_close(other(video, audio).logits, model(video, audio).logits, atol=1e-5, rtol=1e-4)


def test_a_crash_while_writing_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    cfg = tiny_config()
    model, _ = _trained(cfg)
    path = save_checkpoint(tmp_path / "last.pt", model, step=1)
    before = path.read_bytes()

    def exploding_save(obj, fh):
        fh.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, step=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "temporary file left behind"


def test_mismatches_are_clear_errors(tmp_path):
    cfg = tiny_config()
    model, _ = _trained(cfg)
    path = save_checkpoint(tmp_path / "c.pt", model)
    with pytest.raises(ValueError, match=r"another configuration.*'fusion': \('bidirectional', 'a2v'\)"):
        load_checkpoint(path, FastSTGCMA(tiny_config(fusion="a2v"), head=AVEHead(64)))
    with pytest.raises(ValueError, match=r"unexpected \['head.fc1.bias'.*task head attached on one side only"):
        load_checkpoint(path, FastSTGCMA(cfg))
    with pytest.raises(ValueError, match="holds no optimizer state"):
        m = FastSTGCMA(cfg, head=AVEHead(64))
        load_checkpoint(path, m, torch.optim.Adam(m.trainable_parameters()))
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an stgcma-fast checkpoint"):
        read_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.pt")
