"""Compile Triton kernels to sm_90 cubins on a machine without a GPU (ptxas ships with Triton).

The interpreter (TRITON_INTERPRET=1, which tests/conftest.py sets) accepts kernels that a GPU build rejects:
non-constexpr globals, tl.dot below its minimum size, loop-carried type changes, too much shared memory. A test
file describes the variants its launchers run as a list of :class:`KernelSpec` returned by a module-level builder
function (which kernels, dtypes, constexprs and launch configs stay in the test file); this module only compiles::

    def _sm90_specs() -> list[KernelSpec]:  # module level: it runs in a fresh process
        return [KernelSpec(mod._my_kernel, {"X": "*bf16", "n": "i32"}, {"BLOCK": 64}, num_warps=4, num_stages=2)]

    @pytest.mark.slow
    def test_kernels_compile_for_sm90_without_a_gpu():
        compile_in_subprocess(_sm90_specs)

:func:`compile_in_subprocess` imports the builder's module in a fresh Python process whose environment lacks
TRITON_INTERPRET, so ``@triton.jit`` defines the kernels for the real backend, and compiles every spec there
(:func:`compile_specs`: one forked worker per CPU core), reporting every failure, not just the first.

Each spec is compiled as the JIT builds it (:func:`jit_specialisation`): a launch specialises every pointer whose
address is a multiple of 16 bytes and every integer that is a multiple of 16 (``tt.divisibility = 16``: wider,
unmasked vector loads and cheaper index arithmetic) and turns an integer equal to 1 into a constant. Pointers are
taken as 16-byte aligned (every tensor the launchers allocate or receive from torch is), integers at the values of
``KernelSpec.values`` (the shape the spec stands for; an integer without one gets 17, which nothing specialises), so
the register and spill reports are those of the variant a training run loads. Without the specialisation ptxas
reports up to three times the registers (e.g. 254 instead of 86) and spills that the JIT's build does not have.

``python -m tests.kernels.compile_check MODULE:BUILDER '[ARGS]' --json PATH`` also writes each variant's shared
memory, registers and spill bytes as JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner, Heuristics
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import MockTensor, create_function_from_signature

# Shared memory one block may use on sm_90 (H100 / H200: cudaDevAttrMaxSharedMemoryPerBlockOptin). Triton checks it
# only when it loads a kernel on a device, so a compile without a GPU checks it here.
SM90_MAX_SHARED = 232_448

_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class KernelSpec:
    """One compiled variant of a kernel: what a launcher passes for one dtype mix and launch config."""

    kernel: Any  # a @triton.jit function, or a @triton.autotune / @triton.heuristics wrapper of one
    signature: dict[str, str]  # every non-constexpr argument -> Triton type: "*bf16", "*fp32", "i32", "i64", "fp32"
    constexprs: dict[str, Any]  # every tl.constexpr argument -> its value (tl.float32, "tf32x3", 64, True, ...)
    num_warps: int
    num_stages: int
    label: str = ""  # what the variant is, for messages: "bf16 u, fp32 x / weights, BLOCK_R=128"
    target: tuple[str, int, int] = ("cuda", 90, 32)  # GPUTarget(backend, arch, warp size)
    # Integer (and float) arguments -> the value a launch passes at the shape this spec stands for (D=768, R=96...):
    # the JIT specialises integers that are multiples of 16 (and makes 1 a constant). Missing ones get 17.
    values: dict[str, int | float] = dataclasses.field(default_factory=dict)

    @property
    def jit_fn(self) -> Any:
        fn = self.kernel
        while isinstance(fn, (Autotuner, Heuristics)):
            fn = fn.fn
        return fn

    def describe(self) -> str:
        label = f" [{self.label}]" if self.label else ""
        return f"{self.jit_fn.__name__}{label} num_warps={self.num_warps} num_stages={self.num_stages}"


# Triton pointer types -> the torch dtype of a stand-in tensor (MockTensor: address 0, a multiple of 16 bytes).
_POINTEE = {"fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
            "i64": torch.int64, "i32": torch.int32, "i16": torch.int16, "i8": torch.int8, "u8": torch.uint8,
            "i1": torch.bool}  # fmt: skip
_UNSPECIALISED = {"i32": 17, "i64": 2**32 + 17, "fp32": 0.5, "fp64": 0.5, "i1": True, "u1": True}


def _example_arguments(spec: KernelSpec) -> dict[str, Any]:
    """An argument per kernel parameter, as a launch at the spec's shape passes it: a 16-byte aligned stand-in tensor
    per pointer, ``spec.values`` (or an unspecialisable value) per scalar, the constexprs as given."""
    args: dict[str, Any] = {}
    for name, ty in spec.signature.items():
        if ty.startswith("*"):
            assert ty[1:] in _POINTEE, f"{spec.describe()}: unknown pointer type {ty!r} of {name}"
            args[name] = MockTensor(_POINTEE[ty[1:]])
        elif name in spec.values:
            args[name] = spec.values[name]
        else:
            assert ty in _UNSPECIALISED, f"{spec.describe()}: no example value for {name} of type {ty!r}"
            args[name] = _UNSPECIALISED[ty]
    unknown = set(spec.values) - set(spec.signature)
    assert not unknown, f"{spec.describe()}: values given for {sorted(unknown)}, which are not scalar arguments"
    return args | spec.constexprs


def jit_specialisation(spec: KernelSpec) -> tuple[dict, dict, dict, Any]:
    """(signature, constexprs, attrs, options) of the variant the JIT compiles for a launch with the spec's arguments
    (``_example_arguments``), derived by the JIT's own argument binder, exactly as ``JITFunction.run`` does: the same
    types, divisibility attributes and options, and so the same cache key.

    Raises AssertionError if a declared type differs from the one the JIT derives from the value (e.g. "i64" for a
    value that fits in 32 bits: the JIT passes it as i32)."""
    from triton import knobs

    fn = spec.jit_fn
    backend = make_backend(GPUTarget(*spec.target))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = _example_arguments(spec) | {
        "num_warps": spec.num_warps, "num_stages": spec.num_stages,
        "debug": bool(fn.debug or knobs.runtime.debug),  # JITFunction.run sets these two as well
        "instrumentation_mode": knobs.compilation.instrumentation_mode,
    }  # fmt: skip
    bound_args, specialization, options = binder(**kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    wrong = {name: (ty, signature[name]) for name, ty in spec.signature.items()
             if signature[name] not in (ty, "constexpr")}  # fmt: skip
    assert not wrong, f"{spec.describe()}: declared vs JIT-derived types {wrong}"
    return signature, constexprs, attrs, options


def specialised_arguments(spec: KernelSpec) -> list[str]:
    """The arguments the JIT specialises for the spec: "X%16" (16-byte aligned pointer or multiple of 16), "n=1"."""
    signature, constexprs, attrs, _ = jit_specialisation(spec)
    names = spec.jit_fn.arg_names
    out = [f"{names[path[0]]}%16" for path, attr in sorted(attrs.items()) if ["tt.divisibility", 16] in attr]
    return out + [f"{name}=1" for name, ty in signature.items() if ty == "constexpr" and name in spec.signature]


def compile_spec(spec: KernelSpec, max_shared: int = SM90_MAX_SHARED) -> Any:
    """Compile one spec to a cubin, as the JIT compiles it for a launch (:func:`jit_specialisation`): returns the
    CompiledKernel.

    Raises AssertionError if the kernel was defined under TRITON_INTERPRET=1, if an argument is missing from or
    foreign to the spec, if no cubin comes out, or if it needs more than ``max_shared`` bytes of shared memory.
    """
    fn = spec.jit_fn
    assert not isinstance(fn, InterpretedFunction), (
        f"{fn.__name__} was defined under TRITON_INTERPRET=1: compile it in a process without it "
        "(compile_in_subprocess)"
    )
    given = [*spec.signature, *spec.constexprs]
    missing, foreign = set(fn.arg_names) - set(given), set(given) - set(fn.arg_names)
    assert not missing and not foreign and len(given) == len(set(given)), (
        f"{spec.describe()}: arguments {fn.arg_names}; missing {sorted(missing)}, not arguments {sorted(foreign)}, "
        f"given twice {sorted({a for a in given if given.count(a) > 1})}"
    )
    signature, constexprs, attrs, options = jit_specialisation(spec)
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget(*spec.target),
                              options=options.__dict__)  # fmt: skip
    assert compiled.asm.get("cubin"), f"{spec.describe()}: no cubin"
    shared = compiled.metadata.shared
    assert shared <= max_shared, f"{spec.describe()}: {shared} bytes of shared memory > {max_shared}"
    return compiled


def resource_usage(compiled: Any) -> str:
    """Registers per thread and spill bytes ("REG:n STACK:m"; STACK > 0: spilled registers) of a compiled kernel's
    cubin, from the cuobjdump that ships with Triton; "" where it is missing."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    fields = next((line.split() for line in out.splitlines() if "REG:" in line), [])
    return " ".join(f for f in fields if f.startswith(("REG:", "STACK:")))


def _report(spec: KernelSpec, compiled: Any, seconds: float) -> dict[str, Any]:
    """What one compiled variant needs: shared memory, registers per thread, spill bytes (None where unknown)."""
    usage = dict(field.split(":", 1) for field in resource_usage(compiled).split())
    return {"kernel": spec.jit_fn.__name__, "label": spec.label, "num_warps": spec.num_warps,
            "num_stages": spec.num_stages, "target": list(spec.target), "specialised": specialised_arguments(spec),
            "shared_bytes": compiled.metadata.shared,
            "registers": int(usage["REG"]) if "REG" in usage else None,
            "spill_bytes": int(usage["STACK"]) if "STACK" in usage else None, "seconds": round(seconds, 2)}  # fmt: skip


_SPECS: Sequence[KernelSpec] = ()  # what the forked workers of compile_specs compile (set before they fork)


def _compile_one(i: int) -> tuple[int, str | None, dict[str, Any]]:
    """(index, None or the error with its traceback, the variant's report (``_report``)) of ``_SPECS[i]``."""
    start = time.perf_counter()
    try:
        compiled = compile_spec(_SPECS[i])
        return i, None, _report(_SPECS[i], compiled, time.perf_counter() - start)
    except Exception:  # every failure is reported, with its traceback
        return i, traceback.format_exc(), {"seconds": round(time.perf_counter() - start, 2)}


def compile_specs(specs: Sequence[KernelSpec], jobs: int | None = None,
                  log: Callable[[str], None] = print) -> list[dict[str, Any]]:  # fmt: skip
    """Compile every spec (``jobs`` forked workers, default one per usable CPU core), logging one line each; returns
    each variant's report (kernel, label, launch options, specialised arguments, shared bytes, registers, spill
    bytes), in the order of ``specs``.

    Raises AssertionError naming every spec that failed, with its error, after trying all of them.
    """
    global _SPECS
    assert specs, "no kernel specs to compile"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    jobs = min(jobs or cores, len(specs))
    failures, reports = [], []
    _SPECS = list(specs)
    try:
        with contextlib.ExitStack() as stack:
            if jobs > 1 and "fork" in multiprocessing.get_all_start_methods():
                # Forked workers inherit the builder's imports and kernels: nothing is imported again.
                pool = stack.enter_context(ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")))
                results = pool.map(_compile_one, range(len(specs)))
            else:
                results = map(_compile_one, range(len(specs)))
            for i, error, report in results:  # in order, as they come
                if error is None:
                    reports.append(report)
                    spills = "" if report["spill_bytes"] is None else f" STACK:{report['spill_bytes']}"
                    regs = "" if report["registers"] is None else f" REG:{report['registers']}"
                    log(f"compiled {specs[i].describe()}: {report['shared_bytes']} B shared{regs}{spills}, "
                        f"{report['seconds']:.1f} s")  # fmt: skip
                else:
                    log(f"FAILED {specs[i].describe()} ({report['seconds']:.1f} s)")
                    failures.append(f"{specs[i].describe()}:\n{error}")
    finally:
        _SPECS = ()
    summary = f"{len(failures)} of {len(specs)} kernel variants failed to compile"
    assert not failures, summary + ":\n\n" + "\n\n".join(failures)
    log(f"all {len(specs)} kernel variants compiled")
    return reports


def compile_in_subprocess(builder: Callable[..., Sequence[KernelSpec]], *args: Any, timeout: float = 600) -> str:
    """Call the module-level function ``builder(*args)`` (JSON-serialisable args) in a fresh Python process without
    TRITON_INTERPRET and compile the specs it returns there (:func:`compile_specs`). Returns that process's log;
    fails the calling test with the log and every compile error if anything did not compile."""
    module, name = builder.__module__, builder.__qualname__
    assert getattr(sys.modules.get(module), name, None) is builder, f"{module}.{name} is not a module-level function"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
    code = f"import sys; from {__name__} import _main; _main(*sys.argv[1:])"
    res = subprocess.run([sys.executable, "-c", code, f"{module}:{name}", json.dumps(args)], cwd=_REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)  # fmt: skip
    call = f"{module}.{name}({', '.join(map(repr, args))})"
    assert res.returncode == 0, f"sm_90 compilation of {call} failed:\n{res.stdout}\n{res.stderr[-20000:]}"
    return res.stdout


def _main(target: str, args: str = "[]", json_path: str | None = None) -> None:
    """Subprocess entry point: ``target`` is "module:builder", ``args`` the JSON list of its arguments; with
    ``json_path`` the variants' reports are written there as JSON."""
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "TRITON_INTERPRET=1 in the compile subprocess"
    module, _, name = target.partition(":")
    specs = getattr(importlib.import_module(module), name)(*json.loads(args))
    reports = compile_specs(specs, log=lambda line: print(line, flush=True))
    if json_path:
        data = {"builder": target, "args": json.loads(args), "triton": triton.__version__, "variants": reports}
        Path(json_path).write_text(json.dumps(data, indent=1) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip the interpreter's teardown of torch and triton (~1 s): there is nothing left to save


if __name__ == "__main__":  # python -m tests.kernels.compile_check MODULE:BUILDER ['[ARGS]'] [--json PATH]
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.kernels.compile_check")
    parser.add_argument("builder", help="module:function returning the KernelSpec list")
    parser.add_argument("args", nargs="?", default="[]", help="JSON list of the builder's arguments")
    parser.add_argument("--json", help="write every variant's shared memory, registers and spill bytes here")
    ns = parser.parse_args()
    _main(ns.builder, ns.args, ns.json)
