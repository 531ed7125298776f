"""Checkpoints under bad input and faults: what save accepts loads again, a failed load or save changes nothing."""

from __future__ import annotations

import copy
import errno
import io
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from stgcma_fast import AVEHead, FastSTGCMA, fileio
from stgcma_fast.checkpoint import FORMAT, atomic_save, load_checkpoint, read_checkpoint, save_checkpoint

from ..helpers import tiny_config


class Wrapped(nn.Module):
    """What the trainer passes: a module with ``.config`` holding trainable and frozen parameters."""

    def __init__(self, seed: int = 0, width: int = 6, config=None) -> None:
        super().__init__()
        self.config = config or tiny_config()
        self.body = nn.Linear(4, width)
        self.head = nn.Linear(width, 3)
        self.frozen = nn.Linear(4, 4)  # the same in every instance, as a pretrained backbone is
        self.frozen.requires_grad_(False)
        with torch.no_grad():
            for module, g in ((self.frozen, torch.Generator().manual_seed(99)),
                              (self, torch.Generator().manual_seed(seed))):
                for p in module.parameters():
                    if p.requires_grad or module is self.frozen:
                        p.copy_(torch.randn(p.shape, generator=g))

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def _trained(seed: int = 0, **kw) -> tuple[Wrapped, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    model = Wrapped(seed, **kw)
    opt = torch.optim.AdamW(model.trainable(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(2):
        model.head(model.body(torch.randn(5, 4))).square().mean().backward()
        opt.step()
        sched.step()
    return model, opt, sched


def _snapshot(model: nn.Module, opt=None, sched=None) -> dict:
    snap = {"model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    if opt is not None:
        snap["opt"] = copy.deepcopy(opt.state_dict())
        snap["groups"] = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    if sched is not None:
        snap["sched"] = copy.deepcopy(sched.state_dict())
    return snap


def _assert_same(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------------------------------- saving


def test_numpy_values_and_paths_are_converted_and_load_weights_only(tmp_path: Path) -> None:
    model, opt, sched = _trained()
    extra = {"loss": np.float32(0.25), "best": np.bool_(True), "epoch": np.int16(3), "dir": tmp_path / "run",
             "hist": [{"loss": np.float64(1.5), "ids": ("a", "b")}], "curve": np.arange(4, dtype=np.float32),
             "nested": (np.int64(1), [np.float16(2.0)])}
    path = save_checkpoint(tmp_path / "c.pt", model, opt, step=np.int64(9), extra=extra, scheduler=sched)
    raw = torch.load(path, weights_only=True)  # the user's own torch.load works too
    assert raw["step"] == 9 and type(raw["step"]) is int
    got = raw["extra"]
    assert got["loss"] == 0.25 and type(got["loss"]) is float and got["best"] is True and type(got["epoch"]) is int
    assert got["dir"] == str(tmp_path / "run") and got["hist"] == [{"loss": 1.5, "ids": ("a", "b")}]
    assert torch.equal(got["curve"], torch.arange(4, dtype=torch.float32))
    assert got["nested"] == (1, [2.0]) and type(got["nested"]) is tuple
    other, other_opt, other_sched = _trained(seed=1)
    payload = load_checkpoint(path, other, other_opt, scheduler=other_sched)
    assert payload["step"] == 9
    _assert_same(_snapshot(other, other_opt, other_sched), _snapshot(model, opt, sched))


class Opaque:
    def __repr__(self) -> str:
        return "Opaque()"


@pytest.mark.parametrize("extra, where, kind", [
    ({"history": [{}, {}, {}, {"loss": Opaque()}]}, r"extra\['history'\]\[3\]\['loss'\]", "Opaque"),
    ({"fn": lambda x: x}, r"extra\['fn'\]", "function"),
    ({"ids": np.array(["a", None], dtype=object)}, r"extra\['ids'\]", "numpy array of Python objects"),
    ({"t": (1, {"deep": [Opaque()]})}, r"extra\['t'\]\[1\]\['deep'\]\[0\]", "Opaque"),
    ({Opaque(): 1}, r"a key of extra", "Opaque"),
])
def test_what_would_not_load_is_refused_at_save_time_naming_its_place(tmp_path: Path, extra, where, kind) -> None:
    model, opt, _ = _trained()
    path = save_checkpoint(tmp_path / "c.pt", model, opt, step=1)
    before = _listing(tmp_path)
    with pytest.raises(TypeError, match=rf"{where} .*{kind}"):
        save_checkpoint(path, model, opt, step=2, extra=extra)
    assert _listing(tmp_path) == before, "the previous checkpoint changed or a temporary file was left"


def test_an_unloadable_scheduler_state_is_refused(tmp_path: Path) -> None:
    class Sched:
        def state_dict(self):
            return {"last_epoch": 3, "anneal": self.state_dict}

        def load_state_dict(self, state):
            pass

    model, opt, _ = _trained()
    with pytest.raises(TypeError, match=r"cannot save checkpoint .*c\.pt: scheduler\['anneal'\] is a builtins.method"):
        save_checkpoint(tmp_path / "c.pt", model, opt, scheduler=Sched())
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs, message", [
    ({"step": 9.0}, r"expected step to be an int or None, got 9.0 \(float\)"),
    ({"step": True}, r"expected step to be an int or None, got True \(bool\)"),
    ({"step": "9"}, r"expected step to be an int or None, got '9' \(str\)"),
    ({"step": torch.tensor(9)}, r"expected step to be an int or None, got tensor\(9\) \(Tensor\)"),
    ({"extra": [("loss", 1.0)]}, r"expected extra to be a dict or None, got list"),
    ({"optimizer": "adam"}, r"expected optimizer to have state_dict\(\) and load_state_dict\(\), got str"),
    ({"scheduler": 0.5}, r"expected scheduler to have state_dict\(\) and load_state_dict\(\), got float"),
    ({"scaler": object()}, r"expected scaler to have state_dict\(\) and load_state_dict\(\), got object"),
])
def test_wrong_argument_types_at_save(tmp_path: Path, kwargs, message) -> None:
    model, _, _ = _trained()
    with pytest.raises(TypeError, match=message):
        save_checkpoint(tmp_path / "c.pt", model, **kwargs)
    assert not any(tmp_path.iterdir())


def test_a_model_without_config(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"expected model to have a .config \(an STGCMAConfig\), got Linear"):
        save_checkpoint(tmp_path / "c.pt", nn.Linear(2, 2))
    model, _, _ = _trained()
    path = save_checkpoint(tmp_path / "c.pt", model)
    with pytest.raises(TypeError, match=r"expected model to have a .config"):
        load_checkpoint(path, nn.Linear(2, 2))


def test_permissions_are_those_torch_save_gives(tmp_path: Path) -> None:
    model, opt, _ = _trained()
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "c.pt", model, opt)
        torch.save({}, tmp_path / "plain.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == (tmp_path / "plain.pt").stat().st_mode & 0o777 == 0o644


def test_a_killed_save_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    model, opt, _ = _trained()
    path = save_checkpoint(tmp_path / "last.pt", model, opt, step=1)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # a pid that no longer runs
    proc.wait()
    leftover = tmp_path / f".last.pt.{fileio._host()}.{proc.pid}.0badc0de.tmp"
    leftover.write_bytes(path.read_bytes()[:100])  # what a SIGKILL mid-write leaves
    save_checkpoint(path, model, opt, step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert read_checkpoint(path)["step"] == 2


@pytest.mark.parametrize("stage", ["torch.save", "os.replace"])
def test_an_interrupted_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           stage: str) -> None:
    model, opt, _ = _trained()
    path = save_checkpoint(tmp_path / "last.pt", model, opt, step=1)
    before = _listing(tmp_path)
    real_save = torch.save

    def save_half(obj, fh, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.EIO, "Input/output error")

    def no_replace(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    if stage == "torch.save":
        monkeypatch.setattr(torch, "save", save_half)
    else:
        monkeypatch.setattr(fileio.os, "replace", no_replace)
    with pytest.raises(OSError, match=re.escape(str(path)) if stage == "os.replace" else "Input/output error"):
        save_checkpoint(path, model, opt, step=2)
    monkeypatch.undo()
    assert _listing(tmp_path) == before
    assert read_checkpoint(path)["step"] == 1


def test_atomic_save_stays_importable_from_checkpoint() -> None:
    assert atomic_save is fileio.atomic_save


# ------------------------------------------------------------------------------------------------------ loading


def _damaged_files(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    data = good.read_bytes()
    files: dict[str, tuple[Path, str]] = {}

    def put(name: str, content: bytes, message: str) -> None:
        (folder / name).write_bytes(content)
        files[name] = (folder / name, message)

    put("truncated.pt", data[: len(data) // 2], r"truncated: was the write cut short\?")
    put("cut_at_start.pt", data[:10], r"truncated")
    put("empty.pt", b"", r"is empty \(0 bytes\)")
    put("random.pt", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), r"not a torch file")
    put("text.pt", b"step,loss\n1,0.5\n", r"not a torch file \(16 bytes starting b'step,los'\)")
    put("pickle.pt", pickle.dumps({"state_dict": {}}, protocol=2), r"a pickle \(or legacy torch file\)")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("notes/readme.txt", "hi")
    put("other.zip", buf.getvalue(), r"a zip archive that is not a torch file")
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "step": np.int64(3)}, buf)  # what the old save_checkpoint let through
    put("numpy_step.pt", buf.getvalue(), r"holding objects other than tensors and plain Python values")
    buf = io.BytesIO()
    torch.save({"weight": torch.ones(2), "bias": torch.ones(2)}, buf)
    put("state_dict.pt", buf.getvalue(), r"not an stgcma-fast checkpoint: .*without 'format' \(a plain state dict\?")
    buf = io.BytesIO()
    torch.save({"format": "other-tool/3", "state_dict": {}}, buf)
    put("foreign.pt", buf.getvalue(), r"not an stgcma-fast checkpoint: expected format 'stgcma-fast/1', got format "
                                      r"'other-tool/3'")
    buf = io.BytesIO()
    torch.save([torch.ones(1)], buf)
    put("list.pt", buf.getvalue(), r"not an stgcma-fast checkpoint: expected a dict .* got a list")
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "config": "clip", "state_dict": {"a": 1}, "step": 1.5}, buf)
    put("bad_fields.pt", buf.getvalue(), r"is damaged: 'config' is str, expected a dict; 'state_dict' has non-tensor "
                                         r"entries \['a'\]; 'step' is 1.5")
    (folder / "folder.pt").mkdir()
    files["folder.pt"] = (folder / "folder.pt", r"is a folder, expected a file")
    return files


def test_damaged_or_foreign_files_are_value_errors_naming_the_file_and_change_nothing(tmp_path: Path) -> None:
    model, opt, sched = _trained()
    good = save_checkpoint(tmp_path / "good.pt", model, opt, scheduler=sched)
    target, target_opt, target_sched = _trained(seed=5)
    before = _snapshot(target, target_opt, target_sched)
    files = _damaged_files(tmp_path, good)
    contents = _listing(tmp_path)
    for name, (path, message) in files.items():
        with pytest.raises(ValueError, match=message) as info:
            load_checkpoint(path, target, target_opt, scheduler=target_sched)
        assert str(path) in str(info.value), name
        if name not in ("empty.pt", "state_dict.pt", "foreign.pt", "list.pt", "bad_fields.pt"):
            assert info.value.__cause__ is not None, f"{name}: not chained from the reader's error"
        with pytest.raises(ValueError, match=message):
            read_checkpoint(path)
    _assert_same(_snapshot(target, target_opt, target_sched), before)
    assert _listing(tmp_path) == contents
    with pytest.raises(FileNotFoundError, match=rf"checkpoint {tmp_path}/absent.pt does not exist"):
        load_checkpoint(tmp_path / "absent.pt", target)


def _check_load_fails(path: Path, model, opt=None, message: str = "", error=ValueError, **kw) -> None:
    before = _snapshot(model, opt, kw.get("scheduler"))
    data = path.read_bytes()
    with pytest.raises(error, match=message) as info:
        load_checkpoint(path, model, opt, **kw)
    if error is ValueError:
        assert str(path) in str(info.value)
    _assert_same(_snapshot(model, opt, kw.get("scheduler")), before)
    assert path.read_bytes() == data


def test_config_tensor_names_shapes_and_dtypes_are_checked_first(tmp_path: Path) -> None:
    model, opt, _ = _trained()
    path = save_checkpoint(tmp_path / "c.pt", model, opt)
    _check_load_fails(path, Wrapped(config=tiny_config(fusion="a2v")), None,
                      r"another configuration: \(checkpoint, model\) = \{'fusion': \('bidirectional', 'a2v'\)\}")
    wider = Wrapped(width=7)
    _check_load_fails(path, wider, None, r"\(3 differ\): body.weight: checkpoint torch.float32 \(6, 4\), model "
                                         r"torch.float32 \(7, 4\)")
    _check_load_fails(path, Wrapped().double(), None, r"body.weight: checkpoint torch.float32 \(6, 4\), model "
                                                      r"torch.float64 \(6, 4\)")
    headless = Wrapped()
    headless.head.requires_grad_(False)
    _check_load_fails(path, headless, None, r"unexpected \['head.bias', 'head.weight'\]")
    # strict_config=False: another config whose tensors still fit loads
    relaxed = Wrapped(seed=3, config=tiny_config(drop_path_rate=0.1))
    load_checkpoint(path, relaxed, strict_config=False)
    _assert_same(_snapshot(relaxed)["model"], _snapshot(model)["model"])


def test_an_optimizer_over_other_parameters_fails_before_anything_changes(tmp_path: Path) -> None:
    model, opt, _ = _trained()
    path = save_checkpoint(tmp_path / "c.pt", model, opt)
    target = Wrapped(seed=2)
    head_only = torch.optim.AdamW(target.head.parameters(), lr=0.1)  # the example
    _check_load_fails(path, target, head_only, r"optimizer state for other parameters: \(group, checkpoint params, "
                                               r"optimizer params\) = \[\(0, 4, 2\)\]")
    swapped = torch.optim.AdamW([target.head.weight, target.head.bias, target.body.weight, target.body.bias], lr=0.1)
    _check_load_fails(path, target, swapped, r"group 0 #0: checkpoint body.weight \(6, 4\), optimizer head.weight "
                                             r"\(3, 6\)")
    foreign = torch.optim.AdamW([nn.Parameter(torch.ones(6, 4)), target.body.bias, target.head.weight,
                                 target.head.bias], lr=0.1)
    _check_load_fails(path, target, foreign, r"group 0 #0: checkpoint body.weight \(6, 4\), optimizer "
                                             r"<not a model parameter> \(6, 4\)")
    two_groups = torch.optim.AdamW([{"params": target.body.parameters()}, {"params": target.head.parameters()}])
    _check_load_fails(path, target, two_groups, r"optimizer state for 1 param group\(s\), the optimizer has 2")
    _check_load_fails(path, target, torch.optim.SGD(target.trainable(), lr=0.1), r"holds AdamW state, got a SGD")
    bare = save_checkpoint(tmp_path / "bare.pt", model)
    _check_load_fails(bare, target, torch.optim.AdamW(target.trainable()), r"holds no optimizer state")


def test_optimizer_state_shapes_in_a_checkpoint_without_parameter_records(tmp_path: Path) -> None:
    """Checkpoints of the first format version record no parameter shapes: the state tensors are compared."""
    model, opt, _ = _trained()
    path = save_checkpoint(tmp_path / "c.pt", model, opt)
    payload = torch.load(path, weights_only=True)
    del payload["optimizer_params"], payload["optimizer_class"]
    payload["optimizer"]["state"][0]["exp_avg"] = torch.zeros(4, 6)
    torch.save(payload, path)
    target = Wrapped(seed=2)
    _check_load_fails(path, target, torch.optim.AdamW(target.trainable()),
                      r"state\[0\]\['exp_avg'\] has shape \(4, 6\), its parameter \(6, 4\)")
    payload["optimizer"]["state"][9] = {}
    torch.save(payload, path)
    _check_load_fails(path, target, torch.optim.AdamW(target.trainable()),
                      r"state for parameter id 9, which no param group lists")


def test_scheduler_and_scaler_round_trip_and_are_checked(tmp_path: Path) -> None:
    model, opt, sched = _trained()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))
    scaler.update(new_scale=64.0)
    path = save_checkpoint(tmp_path / "c.pt", model, opt, step=7, scheduler=sched, scaler=scaler)
    target, target_opt, target_sched = _trained(seed=4)
    target_scaler = torch.amp.GradScaler("cpu")
    load_checkpoint(path, target, target_opt, scheduler=target_sched, scaler=target_scaler)
    assert target_scaler.get_scale() == 64.0 and target_sched.state_dict() == sched.state_dict()
    assert [g["lr"] for g in target_opt.param_groups] == [g["lr"] for g in opt.param_groups]

    fresh, fresh_opt, fresh_sched = _trained(seed=6)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(fresh_opt, T_max=10)
    _check_load_fails(path, fresh, fresh_opt, r"holds StepLR state, got a CosineAnnealingLR scheduler",
                      scheduler=cosine)
    no_sched = save_checkpoint(tmp_path / "no_sched.pt", model, opt)
    _check_load_fails(no_sched, fresh, fresh_opt, r"holds no scheduler state", scheduler=fresh_sched)
    _check_load_fails(no_sched, fresh, fresh_opt, r"holds no grad scaler state", scheduler=None,
                      scaler=torch.amp.GradScaler("cpu"))
    disabled = save_checkpoint(tmp_path / "disabled.pt", model, opt, scaler=torch.amp.GradScaler("cpu", enabled=False))
    _check_load_fails(disabled, fresh, fresh_opt, r"state of a disabled grad scaler; the scaler given is enabled",
                      scaler=torch.amp.GradScaler("cpu"))
    payload = torch.load(path, weights_only=True)
    del payload["scaler"]["_growth_tracker"], payload["scheduler"]["gamma"]
    torch.save(payload, path)
    _check_load_fails(path, fresh, fresh_opt, r"scheduler state of other keys: missing \['gamma'\], unexpected \[\]",
                      scheduler=fresh_sched)
    _check_load_fails(path, fresh, fresh_opt, r"grad scaler state of other keys", scaler=torch.amp.GradScaler("cpu"))


@pytest.mark.parametrize("failing", ["optimizer", "scheduler", "scaler"])
def test_a_load_that_fails_midway_restores_model_optimizer_and_scheduler(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         failing: str) -> None:
    model, opt, sched = _trained()
    path = save_checkpoint(tmp_path / "c.pt", model, opt, scheduler=sched, scaler=torch.amp.GradScaler("cpu"))
    target, target_opt, target_sched = _trained(seed=8)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    victim = {"optimizer": target_opt, "scheduler": target_sched, "scaler": scaler}[failing]
    real = type(victim).load_state_dict

    def half_load(self, state):
        real(self, state)  # the state is taken over, then something fails (putting it back fails too)
        raise RuntimeError(f"{failing} exploded")

    monkeypatch.setattr(type(victim), "load_state_dict", half_load)
    before = _snapshot(target, target_opt, target_sched)
    with pytest.raises(RuntimeError, match=f"{failing} exploded"):
        load_checkpoint(path, target, target_opt, scheduler=target_sched, scaler=scaler)
    monkeypatch.undo()
    _assert_same(_snapshot(target, target_opt, target_sched), before)
    assert scaler.get_scale() == 8.0
    # the restored optimizer still trains
    target.head(target.body(torch.randn(2, 4))).sum().backward()
    target_opt.step()


def test_a_real_model_round_trip_with_everything(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FastSTGCMA(tiny_config(), head=AVEHead(64))
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    for p in model.trainable_parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    path = save_checkpoint(tmp_path / "c.pt", model, opt, step=np.int32(1), scheduler=sched,
                           extra={"val_acc": np.float64(0.5)})
    other = FastSTGCMA(tiny_config(), head=AVEHead(64))
    other_opt = torch.optim.Adam(other.trainable_parameters(), lr=1e-3)
    other_sched = torch.optim.lr_scheduler.LambdaLR(other_opt, lambda s: 1.0)
    payload = load_checkpoint(path, other, other_opt, scheduler=other_sched)
    assert payload["step"] == 1 and payload["extra"] == {"val_acc": 0.5}
    _assert_same(_snapshot(other, other_opt)["opt"]["state"], _snapshot(model, opt)["opt"]["state"])
