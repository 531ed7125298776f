"""``stgcma-fast selftest``: kernel checks against the fp64 torch contracts, and the validation record.

On CPU the checks run in the Triton interpreter (small shapes, fp32 / fp16); recording is exercised with a stand-in
fingerprint, since this machine has no GPU to key it by.
"""

from __future__ import annotations

import json

import pytest
import torch

from stgcma_fast.ops import selftest as st
from stgcma_fast.ops import torch_ops


@pytest.mark.parametrize("dtype", st.INTERPRETER_DTYPES, ids=str)
@pytest.mark.parametrize("op", st.KERNEL_OPS)
def test_every_kernel_passes_its_check_in_the_interpreter(op, dtype):
    check = st.check_op(op, dtype, "cpu")
    assert check.passed, str(check)
    assert check.error is None and 0 < check.max_error < check.atol + check.rtol  # compared, and not trivially


@pytest.mark.parametrize("op", st.KERNEL_OPS)
def test_a_slightly_wrong_kernel_fails_its_check(op):
    """The check catches a 1 % error in one output (so a passing self-test means something)."""
    kernel = getattr(__import__(st.KERNEL_MODULES[op], fromlist=[op]), op)

    def wrong(*args, **kwargs):
        out = kernel(*args, **kwargs)
        return (out[0] * 1.01, *out[1:]) if isinstance(out, tuple) else out * 1.01

    check = st.check_op(op, torch.float32, "cpu", fn=wrong)
    assert not check.passed, str(check)  # (the 1 % reaches the input gradients too)


def test_a_kernel_that_raises_fails_with_the_error():
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available")

    check = st.check_op("t_adapter", torch.float32, "cpu", fn=broken)
    assert not check.passed and "no kernel image" in check.error and "FAIL" in str(check)


def test_a_wrong_input_gradient_fails_its_check():
    def wrong_grad(x, residual, *weights):
        return torch_ops.t_adapter(x.detach() + 0 * x, residual, *weights)  # x gets a zero gradient

    check = st.check_op("t_adapter", torch.float32, "cpu", fn=wrong_grad)
    assert not check.passed and check.worst.startswith("grad"), str(check)


def test_selftest_on_cpu_runs_every_op_and_dtype_and_records_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("STGCMA_FAST_CACHE", str(tmp_path))
    lines = []
    checks = st.selftest("cpu", log=lines.append)
    assert {(c.op, c.dtype) for c in checks} == {(op, str(d).removeprefix("torch.")) for op in st.KERNEL_OPS
                                                 for d in st.INTERPRETER_DTYPES}  # fmt: skip
    assert all(c.passed for c in checks) and len(lines) == len(checks)
    assert not (tmp_path / st.RECORD_NAME).exists()


def test_selftest_refuses_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        st.selftest("cpu", log=None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="expected ops among"):
        st.selftest("cpu", ops=["flash"], log=None)


def _check(op: str, passed: bool) -> st.Check:
    return st.Check(op, "bfloat16", "G=1", 1e-3, 1.6e-2, 3e-2, passed)


def test_record_keeps_ops_whose_every_check_passed_and_is_keyed(tmp_path):
    path = tmp_path / "sub" / st.RECORD_NAME
    checks = [_check("av_adapter", True), _check("av_adapter", True), _check("t_adapter", True),
              _check("t_adapter", False), _check("temporal_attention", True)]  # fmt: skip
    assert st.record(checks, "H100 | v1", path) == ["av_adapter", "temporal_attention"]
    assert st.validated_ops("H100 | v1", path) == {"av_adapter", "temporal_attention"}
    assert st.validated_ops("H100 | v2", path) == frozenset()  # another fingerprint: nothing validated
    st.record([_check("t_adapter", True)], "H100 | v2", path)  # a second key is added, the first kept
    assert st.validated_ops("H100 | v1", path) == {"av_adapter", "temporal_attention"}
    assert st.validated_ops("H100 | v2", path) == {"t_adapter"}
    entry = json.loads(path.read_text())["H100 | v1"]
    assert len(entry["checks"]) == 5 and entry["when"]
    assert [p.name for p in path.parent.iterdir()] == [st.RECORD_NAME]  # atomic write left no temporary file


def test_unreadable_record_validates_nothing(tmp_path):
    path = tmp_path / st.RECORD_NAME
    path.write_text("{not json")
    assert st.validated_ops("any", path) == frozenset()
    path.write_text(json.dumps({"any": {"validated": ["av_adapter", "rm -rf"]}}))
    assert st.validated_ops("any", path) == {"av_adapter"}  # unknown names are ignored


def test_kernel_hash_follows_the_kernel_sources(monkeypatch, tmp_path):
    before = st._kernel_hash()
    assert before == st._kernel_hash() and len(before) == 16
    changed = tmp_path / "t_adapter.py"
    changed.write_text("# edited kernel\n")
    real_find_spec = st.importlib.util.find_spec

    def find_spec(name):
        spec = real_find_spec(name)
        if name.endswith(".t_adapter"):
            spec = type(spec)(spec.name, spec.loader, origin=str(changed))
        return spec

    monkeypatch.setattr(st.importlib.util, "find_spec", find_spec)
    assert st._kernel_hash() != before


def test_no_cuda_means_no_validated_modules(monkeypatch):
    assert st.validated_modules_for_current_device() == frozenset()  # this machine has no CUDA device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(st, "fingerprint", lambda device: "GPU X | v")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(st, "validated_ops", lambda key: frozenset({"t_adapter"}) if key == "GPU X | v" else set())
    assert st.validated_modules_for_current_device() == {"stgcma_fast.kernels.t_adapter"}
    monkeypatch.setenv("STGCMA_FAST_IGNORE_SELFTEST", "1")
    assert st.validated_modules_for_current_device() == frozenset()


@pytest.mark.parametrize("op", ["av_adapter", "t_adapter", "temporal_attention"])  # the autotuned ones: one launch else
@pytest.mark.parametrize("dtype", st.GPU_DTYPES, ids=str)
def test_launch_sets_cover_every_gpu_candidate(op, dtype):
    """On a GPU the self-test forces each launch set in turn: together they must hold every candidate the autotuner
    may pick, for every shape it checks."""
    module = __import__(st.KERNEL_MODULES[op], fromlist=[op])
    for shape in st._GPU_SHAPES[op]:
        sets = st.launch_sets(op, shape, dtype)
        for step in sets[0]:
            if op == "av_adapter":
                candidates = module._GPU_LAUNCH[module._block_r(shape["r"])][step]
            elif op == "t_adapter":
                candidates = module._gpu_candidates(step, shape["r"], "ieee" if dtype == torch.float32 else "tf32",
                                                    shape["D"])  # fmt: skip
            else:
                candidates = module._gpu_candidates(step, shape["M"], shape["hd"],
                                                    "ieee" if dtype == torch.float32 else "tf32")  # fmt: skip
            assert len(candidates) >= 2 and {s[step] for s in sets} == set(candidates), (op, shape, step)
        assert len(sets) == max(len(set(s[step] for s in sets)) for step in sets[0])  # no redundant set


def test_selftest_every_launch_forces_each_set_in_the_interpreter(monkeypatch, tmp_path):
    monkeypatch.setenv("STGCMA_FAST_CACHE", str(tmp_path))
    checks = st.selftest("cpu", dtypes=[torch.float32], ops=["t_adapter"], log=None, every_launch=True)
    n = len(st.launch_sets("t_adapter", st._CPU_SHAPES["t_adapter"][0], torch.float32))
    assert n >= 2 and [c.launch for c in checks] == [f"set {i + 1} of {n}" for i in range(n)]
    assert all(c.passed for c in checks), "\n".join(map(str, checks))


def test_a_launch_set_that_fails_fails_its_op(tmp_path):
    """A forced launch the kernel cannot run (here: fewer rows than the frames of a token) is a failed check, so the
    op is not recorded as validated."""
    from stgcma_fast.kernels import temporal_attention as kernel

    bad = {"fwd": kernel._Launch(16, 4), "bwd": kernel._Launch(16, 4)}  # 16 rows < a 32-frame block
    check = st.check_op("temporal_attention", torch.float32, "cpu", dict(B=1, M=20, N=3, H=2, hd=16), launches=bad,
                        launch="set 1 of 1")  # fmt: skip
    assert not check.passed and "fewer than the 32-frame block" in check.error and "set 1 of 1" in str(check)
    passing = st.Check("temporal_attention", "float32", "B=1", 1e-6, 1e-5, 1e-5, True)
    assert st.record([passing, check], "GPU | v", tmp_path / st.RECORD_NAME) == []
