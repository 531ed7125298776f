"""Check the Triton kernels on this machine's GPU against the plain-torch op contracts, and remember the verdict.

A kernel module's ``GPU_VALIDATED`` flag says whether the project has seen its GPU parity tests pass; until it has,
the dispatcher does not pick the kernel automatically on CUDA. A user with a GPU can validate the kernels on their
own device instead::

    stgcma-fast selftest            # or: python -c "from stgcma_fast.ops.selftest import selftest; selftest()"

runs every kernel forward AND backward in bf16, fp16 and fp32 against the fp64 evaluation of
:mod:`stgcma_fast.ops.torch_ops` on the same values (every output and every input gradient, random upstream gradients),
with each kernel module's own ``tolerance`` (the table its test suite uses), and records the kernels that passed every
check in ``$STGCMA_FAST_CACHE/validated_kernels.json`` (default ``~/.cache/stgcma_fast``), written atomically. On a GPU
it checks the shapes of every preset's block class (ViT-B/16 Base r = 96, ViT-L/14 Base r = 64 at D = 1024 with 257 / 64
tokens, the Tiny r = 24; temporal attention at 10 frames of head dim 64, and of head dim 32 with Swin's temporal
position bias; QuickGELU at the B/16 and L/14 FFN widths, LayerNorm at their widths, also as under autocast: fp32 in,
16-bit out) and, since the autotuner may pick any of a kernel's launch candidates in a training run, every candidate
(each kernel module's ``gpu_launch_sets``, forced one set at a time): a few minutes, most of it compiling. The record is
keyed by a fingerprint: GPU name and compute capability, torch, triton and stgcma-fast versions and a hash of the kernel
sources, so a driver-stack, library or kernel change asks for a new self-test.
``Dispatcher`` (one per model) reads the record for the current CUDA device when it is built and then picks the
recorded kernels automatically (``model.backends()`` shows it); nothing else changes.

On CPU the same checks run under the Triton interpreter (``TRITON_INTERPRET=1``, small shapes, fp32 and fp16), which
tests the self-test itself; CPU results are never recorded (the dispatcher never picks kernels on CPU).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from stgcma_fast.ops import torch_ops

KERNEL_OPS: tuple[str, ...] = ("av_adapter", "t_adapter", "temporal_attention", "quick_gelu", "layer_norm")
KERNEL_MODULES: dict[str, str] = {op: f"stgcma_fast.kernels.{op}" for op in KERNEL_OPS}
GPU_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
INTERPRETER_DTYPES = (torch.float32, torch.float16)  # the interpreter computes bf16 tl.dot wrong
RECORD_NAME = "validated_kernels.json"

# Shapes on a GPU: each padded-bottleneck class the presets use (ViT-B/16 Base r = 96 -> 128, ViT-L/14 Base r = 64 at
# L/14's width and token counts, Tiny r = 24 / 32 -> 32); temporal attention at 10 frames of head dim 64 (B/16 and
# L/14 alike). In the interpreter one small odd shape per op (it runs ~2 ms per tile iteration).
_GPU_SHAPES = {
    "av_adapter": [dict(G=4, N_v=197, N_a=49, D=768, r=96), dict(G=2, N_v=257, N_a=64, D=1024, r=64),
                   dict(G=4, N_v=197, N_a=49, D=768, r=24)],
    "t_adapter": [dict(R=2 * 197, D=768, r=96), dict(R=2 * 257, D=1024, r=64), dict(R=2 * 197, D=768, r=24)],
    "temporal_attention": [dict(B=2, M=10, N=197, H=12, hd=64),
                           dict(B=2, M=10, N=784, H=8, hd=32, bias=1)],  # Swin-B stage 2, temporal position bias
    "quick_gelu": [dict(R=2 * 197, C=3072), dict(R=257, C=4096)],
    "layer_norm": [dict(R=2 * 197, C=768), dict(R=257, C=1024), dict(R=2 * 197, C=768, autocast=1)],
}  # fmt: skip
_CPU_SHAPES = {"av_adapter": [dict(G=2, N_v=17, N_a=9, D=64, r=24)], "t_adapter": [dict(R=33, D=64, r=24)],
               "temporal_attention": [dict(B=1, M=4, N=5, H=2, hd=16)], "quick_gelu": [dict(R=33, C=64)],
               "layer_norm": [dict(R=33, C=64), dict(R=33, C=64, autocast=1)]}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Check:
    """One kernel, dtype and shape: the worst scaled error over its outputs and input gradients."""

    op: str
    dtype: str
    shape: str
    max_error: float  # max over tensors of max |kernel - fp64| / max(1, max |fp64|)
    atol: float
    rtol: float
    passed: bool
    worst: str = ""  # the tensor with the largest error, or the exception if the kernel failed
    error: str | None = None
    launch: str = "autotuned"  # or the forced launch set, e.g. "set 2 of 4"

    def __str__(self) -> str:
        verdict = "ok  " if self.passed else "FAIL"
        what = f"error {self.error}" if self.error else f"max scaled error {self.max_error:.2e} ({self.worst})"
        return (f"{verdict} {self.op:<19} {self.dtype:<9} {self.shape:<28} {self.launch:<11} {what}; "
                f"tolerance ({self.atol}, {self.rtol})")


# ----------------------------------------------------------------------------------------------------------------
# Inputs per op: (positional tensor inputs, non-tensor keyword arguments)


def _inputs(op: str, shape: dict[str, int], dtype: torch.dtype, device: torch.device, g: torch.Generator):
    def rn(*size: int, std: float = 1.0) -> torch.Tensor:
        return (torch.randn(*size, generator=g, dtype=torch.float64) * std).to(device=device, dtype=dtype)

    if op == "av_adapter":
        G, N_v, N_a, D, r = (shape[k] for k in ("G", "N_v", "N_a", "D", "r"))
        weights = []
        for _ in range(2):  # video, audio: nonzero up-projections (zero ones would hide most bugs)
            weights += [rn(r, D, std=D**-0.5), rn(r, std=0.1), rn(D, r, std=r**-0.5), rn(D, std=0.1)]
        gates = [torch.tensor(v, dtype=dtype, device=device) for v in (0.7, -1.1)]
        return [rn(G, N_v, D), rn(G, N_a, D), rn(G, N_v, D), rn(G, N_a, D), *weights, *gates], {}
    if op == "t_adapter":
        R, D, r = (shape[k] for k in ("R", "D", "r"))
        return [rn(R, D), rn(R, D), rn(r, D, std=D**-0.5), rn(r, std=0.1), rn(D, r, std=r**-0.5), rn(D, std=0.1)], {}
    if op == "quick_gelu":
        return [rn(shape["R"], shape["C"], std=3.0)], {}
    if op == "layer_norm":  # the frozen affine map is not a tensor input: no gradient is asked of it
        # autocast=1: as FastSTGCMA runs it under autocast, the fp32 residual stream and fp32 weights in, ``dtype`` out
        C, mix = shape["C"], bool(shape.get("autocast"))
        in_dtype = torch.float32 if mix else dtype
        affine = {"weight": (1 + 0.5 * torch.randn(C, generator=g, dtype=torch.float64)).to(device, in_dtype),
                  "bias": (0.5 * torch.randn(C, generator=g, dtype=torch.float64)).to(device, in_dtype)}
        x = (torch.randn(shape["R"], C, generator=g, dtype=torch.float64) * 2.0).to(device, in_dtype)
        return [x], {**affine, "eps": 1e-5} | ({"out_dtype": dtype} if mix else {})
    B, M, N, H, hd = (shape[k] for k in ("B", "M", "N", "H", "hd"))
    bias = [rn(H, M, M)] if shape.get("bias") else []  # an input with a gradient: see _signature
    return [rn(B, M, N, 3 * H * hd), *bias], {"num_heads": H, "scale": hd**-0.5}


def _signature(op: str, shape: dict[str, int]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """How to call ``op``'s functions with every tensor input positional (as ``_run`` does): temporal attention
    with a bias takes it after ``num_heads`` and ``scale``."""
    if op == "temporal_attention" and shape.get("bias"):
        return lambda fn: lambda qkv, bias, num_heads, scale: fn(qkv, num_heads, scale, bias)
    return lambda fn: fn


def _outputs(result: Any) -> list[torch.Tensor]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _cast(kwargs: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """``kwargs`` with its tensors (constant operands such as a frozen norm's weight) cast to ``dtype``."""
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def _run(fn: Callable[..., Any], tensors: Sequence[torch.Tensor], kwargs: dict[str, Any],
         upstream: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Outputs and input gradients of ``fn`` on leaf copies of ``tensors`` (cast to ``dtype``), by name."""
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in tensors]
    outs = _outputs(fn(*leaves, **(_cast(kwargs, dtype) if dtype else kwargs)))
    torch.autograd.backward(outs, [u.to(o.dtype) for o, u in zip(outs, upstream, strict=True)])
    named = {f"out{i}": o.detach() for i, o in enumerate(outs)}
    return named | {f"grad{i}": leaf.grad for i, leaf in enumerate(leaves) if leaf.grad is not None}


def launch_sets(op: str, shape: dict[str, int], dtype: torch.dtype) -> list[dict[str, Any]]:
    """The kernel module's launch sets that together hold every GPU autotune candidate for ``shape`` and ``dtype``."""
    return importlib.import_module(KERNEL_MODULES[op]).gpu_launch_sets(dtype, **shape)


def check_op(op: str, dtype: torch.dtype, device: str | torch.device, shape: dict[str, int] | None = None,
             seed: int = 0, fn: Callable[..., Any] | None = None, launches: dict[str, Any] | None = None,
             launch: str = "autotuned") -> Check:  # fmt: skip
    """Kernel ``op`` (or ``fn`` in its place) against the fp64 torch contract, forward and backward; with
    ``launches`` (step -> launch) the kernel runs them (``force_launch``) instead of what the autotuner picks, and
    ``launch`` names them in the result."""
    device = torch.device(device)
    module = importlib.import_module(KERNEL_MODULES[op])
    shape = shape or (_GPU_SHAPES if device.type == "cuda" else _CPU_SHAPES)[op][0]
    atol, rtol = module.tolerance(dtype, device)
    label = dict(dtype=str(dtype).removeprefix("torch."), shape=",".join(f"{k}={v}" for k, v in shape.items()),
                 launch=launch)
    g = torch.Generator().manual_seed(seed)
    tensors, kwargs = _inputs(op, shape, dtype, device, g)
    call = _signature(op, shape)
    reason = call(module.supports)(*tensors, **kwargs)
    if reason is not None:
        return Check(op, **label, max_error=float("inf"), atol=atol, rtol=rtol, passed=False, error=reason)
    reference = call(getattr(torch_ops, op))
    with torch.no_grad():
        shapes = [o.shape for o in _outputs(reference(*(t.double() for t in tensors), **_cast(kwargs, torch.float64)))]
    upstream = [torch.randn(s, generator=g, dtype=torch.float64).to(device) for s in shapes]
    try:
        with module.force_launch(**(launches or {})):
            actual = _run(call(fn or getattr(module, op)), tensors, kwargs, upstream)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    except Exception as exc:  # a kernel that does not compile or launch on this GPU fails its check
        return Check(op, **label, max_error=float("inf"), atol=atol, rtol=rtol, passed=False,
                     error=f"{type(exc).__name__}: {exc}"[:500])  # fmt: skip
    expected = _run(reference, tensors, kwargs, upstream, dtype=torch.float64)
    worst, worst_name, passed = 0.0, "", actual.keys() == expected.keys()
    for name, e in expected.items():
        a = actual.get(name)
        if a is None or a.shape != e.shape or not bool(torch.isfinite(a).all()):
            return Check(op, **label, max_error=float("inf"), atol=atol, rtol=rtol, passed=False, worst=name,
                         error=f"{name}: missing, misshapen or not finite")  # fmt: skip
        scale = max(1.0, float(e.abs().max()))
        diff = (a.double() - e).abs() / scale
        err = float(diff.max())
        passed &= bool((diff <= atol + rtol * e.abs() / scale).all())
        if err >= worst:
            worst, worst_name = err, name
    return Check(op, **label, max_error=worst, atol=atol, rtol=rtol, passed=passed, worst=worst_name)


# ----------------------------------------------------------------------------------------------------------------
# The record


def cache_dir() -> Path:
    return Path(os.environ.get("STGCMA_FAST_CACHE") or Path.home() / ".cache" / "stgcma_fast")


def _kernel_hash() -> str:
    h = hashlib.sha256()
    for name in sorted({*KERNEL_MODULES.values(), "stgcma_fast.kernels._common"}):
        spec = importlib.util.find_spec(name)
        h.update(name.encode() + b"\0" + Path(spec.origin).read_bytes())
    return h.hexdigest()[:16]


def fingerprint(device: str | torch.device = "cuda") -> str:
    """What a validation holds for: the GPU, the libraries and the kernel sources."""
    import triton

    from stgcma_fast import __version__

    device = torch.device(device)
    props = torch.cuda.get_device_properties(device)
    return (f"{props.name} sm_{props.major}{props.minor} | torch {torch.__version__} | triton {triton.__version__} | "
            f"stgcma-fast {__version__} | kernels {_kernel_hash()}")  # fmt: skip


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record(checks: Sequence[Check], key: str, path: Path | None = None) -> list[str]:
    """Record under ``key`` the ops whose every check passed (and all checks); returns those ops. Atomic write."""
    path = path or cache_dir() / RECORD_NAME
    ops = sorted(op for op in {c.op for c in checks} if all(c.passed for c in checks if c.op == op))
    data = _read(path)
    data[key] = {"validated": ops, "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "checks": [dataclasses.asdict(c) for c in checks]}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ops


def validated_ops(key: str, path: Path | None = None) -> frozenset[str]:
    """The ops recorded as validated under ``key`` (empty if none, or the record is missing or unreadable)."""
    entry = _read(path or cache_dir() / RECORD_NAME).get(key, {})
    ops = entry.get("validated", []) if isinstance(entry, dict) else []
    return frozenset(op for op in ops if op in KERNEL_OPS)


def validated_modules_for_current_device() -> frozenset[str]:
    """Kernel modules recorded as validated for torch's current CUDA device (empty without CUDA). Called when a
    ``Dispatcher`` is built: on a CUDA machine this initialises CUDA, as moving the model there would."""
    if os.environ.get("STGCMA_FAST_IGNORE_SELFTEST") == "1" or not torch.cuda.is_available():
        return frozenset()
    try:
        key = fingerprint(torch.device("cuda", torch.cuda.current_device()))
    except (RuntimeError, ImportError, AssertionError):  # no usable device or no triton: nothing validated
        return frozenset()
    return frozenset(KERNEL_MODULES[op] for op in validated_ops(key))


# ----------------------------------------------------------------------------------------------------------------
# Entry point


def selftest(device: str | torch.device | None = None, dtypes: Sequence[torch.dtype] | None = None,
             ops: Sequence[str] = KERNEL_OPS, save: bool = True, log: Callable[[str], None] | None = print,
             every_launch: bool | None = None) -> list[Check]:  # fmt: skip
    """Run every check (``ops`` x ``dtypes`` x shapes, and with ``every_launch`` x launch sets) on ``device``
    (default: CUDA if available, else CPU, which needs ``TRITON_INTERPRET=1``) and, on CUDA with ``save``, record the
    ops that passed all of theirs (module doc). ``every_launch`` (default: on CUDA) forces each launch set of
    :func:`launch_sets` in turn; otherwise the kernels run as the launchers pick (the interpreter's one launch on
    CPU)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton kernels run on CPU only in the Triton interpreter: set TRITON_INTERPRET=1 "
                           "before importing stgcma_fast (or run the self-test on a CUDA device)")  # fmt: skip
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"expected a cuda or cpu device, got {device}")
    unknown = set(ops) - set(KERNEL_OPS)
    if unknown:
        raise ValueError(f"expected ops among {KERNEL_OPS}, got {sorted(unknown)}")
    dtypes = tuple(dtypes or (GPU_DTYPES if device.type == "cuda" else INTERPRETER_DTYPES))
    every_launch = device.type == "cuda" if every_launch is None else every_launch
    shapes = _GPU_SHAPES if device.type == "cuda" else _CPU_SHAPES
    checks = []
    for op in ops:
        for dtype in dtypes:
            for shape in shapes[op]:
                sets = launch_sets(op, shape, dtype) if every_launch else [None]
                for i, launches in enumerate(sets):
                    launch = f"set {i + 1} of {len(sets)}" if launches is not None else "autotuned"
                    checks.append(check_op(op, dtype, device, shape, launches=launches, launch=launch))
                    if log:
                        log(str(checks[-1]))
    if device.type == "cuda" and save:
        key = fingerprint(device)
        kept = record(checks, key)
        if log:
            log(f"recorded as validated for {key}: {', '.join(kept) or 'none'} ({cache_dir() / RECORD_NAME})")
    return checks
