"""The op dispatcher: visible choices, per-instance overrides, clear refusals."""

from __future__ import annotations

import pytest
import torch

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
    with pytest.raises(ValueError, match=r"unknown backend 'cuda-magic' for av_adapter; expected one of \["):
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


def _fake_backend(monkeypatch, tmp_path, name: str, body: str) -> Backend:
    (tmp_path / f"{name}.py").write_text("def t_adapter(*a, **k):\n    return 'ran ' + __name__\n\n" + body)
    monkeypatch.syspath_prepend(str(tmp_path))
    backend = Backend(name, "t_adapter", name)
    monkeypatch.setitem(dispatch.REGISTRY, "t_adapter", [backend, *dispatch.REGISTRY["t_adapter"]])
    return backend


def test_auto_devices_policy_applies_to_automatic_choice_only(monkeypatch, tmp_path):
    _fake_backend(monkeypatch, tmp_path, "cuda_only_kernel", "AUTO_DEVICES = ('cuda',)\n")
    x = torch.zeros(2, 4)
    d = Dispatcher()
    assert d.select("t_adapter", x).name == "torch"
    d.set_backend("t_adapter", "cuda_only_kernel")
    assert d("t_adapter", x) == "ran cuda_only_kernel"  # forcing runs it (the interpreter path in tests)


def test_unvalidated_gpu_backend_is_skipped_on_cuda_unless_forced(monkeypatch, tmp_path):
    backend = _fake_backend(monkeypatch, tmp_path, "fresh_kernel", "GPU_VALIDATED = False\n")
    on_cuda = torch.empty(2, 4, device="meta")
    monkeypatch.setattr(dispatch, "_device_type", lambda args: "cuda")
    assert "not yet validated on a GPU" in backend.refusal(on_cuda)
    assert backend.refusal(on_cuda, forced=True) is None
    assert Dispatcher().select("t_adapter", on_cuda).name == "torch"


def test_selftest_validated_gpu_backend_is_chosen_on_cuda(monkeypatch, tmp_path):
    """A kernel module that ``stgcma-fast selftest`` recorded as validated on this GPU counts as GPU_VALIDATED."""
    backend = _fake_backend(monkeypatch, tmp_path, "checked_kernel", "GPU_VALIDATED = False\n")
    on_cuda = torch.empty(2, 4, device="meta")
    monkeypatch.setattr(dispatch, "_device_type", lambda args: "cuda")
    assert backend.refusal(on_cuda, validated=frozenset({"checked_kernel"})) is None
    assert Dispatcher(validated=frozenset({"checked_kernel"})).select("t_adapter", on_cuda).name == "checked_kernel"
    assert Dispatcher(validated=frozenset({"other_kernel"})).select("t_adapter", on_cuda).name == "torch"
    assert Dispatcher().validated == frozenset()  # no CUDA here: nothing recorded for a current device


def test_kernel_module_without_the_flag_counts_as_not_validated(monkeypatch, tmp_path):
    """No ``GPU_VALIDATED`` at all is "not validated": a new kernel module must opt in, never in by default."""
    backend = _fake_backend(monkeypatch, tmp_path, "flagless_kernel", "")
    on_cuda = torch.empty(2, 4, device="meta")
    monkeypatch.setattr(dispatch, "_device_type", lambda args: "cuda")
    assert "not yet validated on a GPU" in backend.refusal(on_cuda)
    assert backend.refusal(on_cuda, forced=True) is None
    assert Dispatcher().select("t_adapter", on_cuda).name == "torch"
    assert Dispatcher(validated=frozenset({"flagless_kernel"})).select("t_adapter", on_cuda).name == "flagless_kernel"


def test_every_registered_backend_module_states_its_flag():
    """Each backend module says GPU_VALIDATED explicitly (the library backends True, the kernels False until a GPU
    run), so the default of a missing flag never decides."""
    for backends in dispatch.REGISTRY.values():
        for backend in backends:
            mod = dispatch._import(backend.module)
            if isinstance(mod, str):  # xformers or triton missing here
                continue
            assert isinstance(getattr(mod, "GPU_VALIDATED", None), bool), backend.module
