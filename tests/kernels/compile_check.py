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
"""

from __future__ import annotations

import contextlib
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

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.autotuner import Autotuner, Heuristics
from triton.runtime.interpreter import InterpretedFunction

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

    @property
    def jit_fn(self) -> Any:
        fn = self.kernel
        while isinstance(fn, (Autotuner, Heuristics)):
            fn = fn.fn
        return fn

    def describe(self) -> str:
        label = f" [{self.label}]" if self.label else ""
        return f"{self.jit_fn.__name__}{label} num_warps={self.num_warps} num_stages={self.num_stages}"


def compile_spec(spec: KernelSpec, max_shared: int = SM90_MAX_SHARED) -> Any:
    """Compile one spec to a cubin (``triton.compile`` of an ``ASTSource``); returns the CompiledKernel.

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
    signature = {name: spec.signature.get(name, "constexpr") for name in fn.arg_names}
    src = ASTSource(fn, signature, spec.constexprs)
    compiled = triton.compile(src, target=GPUTarget(*spec.target),
                              options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})  # fmt: skip
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


_SPECS: Sequence[KernelSpec] = ()  # what the forked workers of compile_specs compile (set before they fork)


def _compile_one(i: int) -> tuple[int, str | None, float, str]:
    """(index, None or the error with its traceback, seconds, "shared bytes, registers and spills") of
    ``_SPECS[i]``."""
    start = time.perf_counter()
    try:
        compiled = compile_spec(_SPECS[i])
    except Exception:  # every failure is reported, with its traceback
        return i, traceback.format_exc(), time.perf_counter() - start, ""
    usage = f"{compiled.metadata.shared} B shared {resource_usage(compiled)}".rstrip()
    return i, None, time.perf_counter() - start, usage


def compile_specs(specs: Sequence[KernelSpec], jobs: int | None = None, log: Callable[[str], None] = print) -> None:
    """Compile every spec (``jobs`` forked workers, default one per usable CPU core), logging one line each.

    Raises AssertionError naming every spec that failed, with its error, after trying all of them.
    """
    global _SPECS
    assert specs, "no kernel specs to compile"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    jobs = min(jobs or cores, len(specs))
    failures = []
    _SPECS = list(specs)
    try:
        with contextlib.ExitStack() as stack:
            if jobs > 1 and "fork" in multiprocessing.get_all_start_methods():
                # Forked workers inherit the builder's imports and kernels: nothing is imported again.
                pool = stack.enter_context(ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")))
                results = pool.map(_compile_one, range(len(specs)))
            else:
                results = map(_compile_one, range(len(specs)))
            for i, error, seconds, usage in results:  # in order, as they come
                if error is None:
                    log(f"compiled {specs[i].describe()}: {usage}, {seconds:.1f} s")
                else:
                    log(f"FAILED {specs[i].describe()} ({seconds:.1f} s)")
                    failures.append(f"{specs[i].describe()}:\n{error}")
    finally:
        _SPECS = ()
    summary = f"{len(failures)} of {len(specs)} kernel variants failed to compile"
    assert not failures, summary + ":\n\n" + "\n\n".join(failures)
    log(f"all {len(specs)} kernel variants compiled")


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


def _main(target: str, args: str) -> None:
    """Subprocess entry point: ``target`` is "module:builder", ``args`` the JSON list of its arguments."""
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "TRITON_INTERPRET=1 in the compile subprocess"
    module, _, name = target.partition(":")
    specs = getattr(importlib.import_module(module), name)(*json.loads(args))
    compile_specs(specs, log=lambda line: print(line, flush=True))
    sys.stderr.flush()
    os._exit(0)  # skip the interpreter's teardown of torch and triton (~1 s): there is nothing left to save


if __name__ == "__main__":  # python -m tests.kernels.compile_check MODULE:BUILDER '[ARGS]': compile, log resources
    _main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "[]")
