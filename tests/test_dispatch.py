"""The op dispatcher: visible choices, per-instance overrides, clear refusals."""

from __future__ import annotations

import pytest

from stgcma_fast import FastSTGCMA
from stgcma_fast.ops import dispatch
from stgcma_fast.ops.dispatch import OPS, Backend, Dispatcher

from .helpers import inputs, tiny_config


def test_backends_are_reported_for_every_op():
    model = FastSTGCMA(tiny_config())
    chosen = model.backends()
    assert set(chosen) == set(OPS)
    for op, name in chosen.items():
        assert name in dispatch.available_backends(op)


def test_forward_records_the_backends_it_used():
    cfg = tiny_config()
    model = FastSTGCMA(cfg).eval()
    model(*inputs(cfg))
    assert model.ops.last == model.backends()


def test_overrides_are_per_instance_and_validated():
    a = FastSTGCMA(tiny_config(), backends={"t_adapter": "torch"})
    b = FastSTGCMA(tiny_config())
    assert a.ops.overrides == {"t_adapter": "torch"} and b.ops.overrides == {}
    with pytest.raises(ValueError, match=r"unknown backend 'cuda-magic' for av_adapter; expected one of \['torch'"):
        a.set_backend("av_adapter", "cuda-magic")
    with pytest.raises(ValueError, match="unknown op 'attention'"):
        a.set_backend("attention", "torch")
    a.set_backend("t_adapter", None)
    assert a.ops.overrides == {}


def test_forced_backend_that_refuses_says_why(monkeypatch, tmp_path):
    mod = tmp_path / "refusing_backend.py"
    mod.write_text("def t_adapter(*a, **k):\n    raise AssertionError('must not run')\n\n"
                   "def supports(*a, **k):\n    return 'needs a GPU'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    picky = Backend("picky", "t_adapter", "refusing_backend")
    monkeypatch.setitem(dispatch.REGISTRY, "t_adapter", [picky, *dispatch.REGISTRY["t_adapter"]])
    d = Dispatcher()
    assert d.select("t_adapter").name == "torch"  # automatic choice skips the refusing backend
    d.set_backend("t_adapter", "picky")
    with pytest.raises(ValueError, match=r"backend 'picky' \(forced\) cannot run t_adapter.*picky: needs a GPU"):
        d.select("t_adapter")


def test_unimportable_backend_is_refused_with_the_import_error(monkeypatch):
    ghost = Backend("ghost", "av_adapter", "stgcma_fast.no_such_module")
    assert "cannot import stgcma_fast.no_such_module" in ghost.refusal()
