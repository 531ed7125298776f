"""Command line: ``stgcma-fast demo | params | selftest | synth | prepare | stats``.

Conventions (see :mod:`stgcma_fast.cli_args`): every argument is checked before any work; a mistake is one line on
stderr, ``stgcma-fast <command>: error: ...``, and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .cli_args import ArgumentParser, UsageError, comma_list, nonneg_int, positive_float, positive_int, run_cli
from .cli_args import torch_device as device_type
from .config import PRESETS, STGCMAConfig
from .data.commands import add_data_commands
from .model import FastSTGCMA
from .modules import AVEHead
from .train.cli import add_train_commands

# A CLIP-shaped ViT (QuickGELU, pre-norm, 16 x 16 patches, class token) small enough to train on a laptop CPU.
CPU_DEMO_BACKBONE = {"img_size": 112, "embed_dim": 192, "depth": 4, "num_heads": 3}
# A Swin of the same shape family (4 stages, window 7) small enough for a CPU: 112 px gives 28/14/7/7... maps.
CPU_DEMO_SWIN = {"img_size": 112, "embed_dim": 32, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8)}


def _demo_config(args: argparse.Namespace, device: torch.device) -> STGCMAConfig:
    full = args.size == "full" or (args.size == "auto" and device.type == "cuda")
    overrides = {"num_frames": args.frames}
    if not full:
        swin = STGCMAConfig.preset(args.preset).family == "swin"
        overrides["backbone_kwargs"] = CPU_DEMO_SWIN if swin else CPU_DEMO_BACKBONE
    return STGCMAConfig.preset(args.preset, **overrides)


def _synthetic_batches(cfg: STGCMAConfig, img_size: int, batch: int, n: int, num_classes: int,
                       device: torch.device, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Clips whose every second carries a class-specific visual pattern and sound pattern under noise."""
    g = torch.Generator().manual_seed(seed)
    M, (T, F_) = cfg.num_frames, cfg.audio_size
    v_patterns = torch.randn(num_classes, 3, img_size, img_size, generator=g)
    a_patterns = torch.randn(num_classes, T, F_, generator=g)
    batches = []
    for _ in range(n):
        labels = torch.randint(0, num_classes, (batch, M), generator=g)
        video = v_patterns[labels] + 0.5 * torch.randn(batch, M, 3, img_size, img_size, generator=g)
        audio = a_patterns[labels] + 0.5 * torch.randn(batch, M, T, F_, generator=g)
        batches.append((video.to(device), audio.to(device), labels.to(device)))
    return batches


def demo(args: argparse.Namespace) -> int:
    """``stgcma-fast demo``: build, report and train on generated clips; prints the loss and clips/s."""
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError(f"argument --amp: expected off or fp16 on {torch.cuda.get_device_name(device)} (no bfloat16), "
                         f"got 'bf16'")
    torch.manual_seed(args.seed)
    cfg = _demo_config(args, device)
    num_classes = 29
    model = FastSTGCMA(cfg, pretrained=False, head=None).to(device)  # randomly initialised: no downloads
    model.head = AVEHead(model.num_features, num_classes=num_classes).to(device)
    print(f"STG-CMA demo on {device}: backbone {cfg.backbone} {cfg.backbone_kwargs or '(full size)'}, "
          f"adapter {cfg.adapter!r} (r = {model.bottleneck}), {cfg.num_frames} frames")
    print(model.param_report())
    print("backends:", model.backends())
    amp = args.amp if args.amp != "auto" else ("bf16" if device.type == "cuda" else "off")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    batch = args.batch_size or (8 if device.type == "cuda" else 2)
    data = _synthetic_batches(cfg, model.img_size[0], batch, 4, num_classes, device, args.seed)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=args.lr, betas=(0.95, 0.999), weight_decay=5e-7)
    model.train()
    timed_clips, timed_seconds, first_loss, loss_value = 0, 0.0, None, float("nan")
    bar = tqdm(range(args.steps), desc="train", unit="step", file=sys.stdout, disable=args.no_progress)
    for step in bar:
        video, audio, labels = data[step % len(data)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(video, audio).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = loss.item()  # synchronises
        first_loss = loss_value if first_loss is None else first_loss
        elapsed = time.perf_counter() - start
        if step > 0 or args.steps == 1:  # the first step pays for warm-up
            timed_clips += batch
            timed_seconds += elapsed
        rate = timed_clips / timed_seconds if timed_seconds else 0.0
        bar.set_postfix(loss=f"{loss_value:.4f}", clips_per_s=f"{rate:.2f}")
    rate = timed_clips / timed_seconds if timed_seconds else 0.0
    print(f"done: {args.steps} steps, batch {batch}, loss {first_loss:.4f} -> {loss_value:.4f}, {rate:.2f} clips/s")
    return 0


# The paper's trainable counts with the AVE head (and totals where it gives them), for the `params` table.
PAPER_COUNTS = {"clip-b16-tiny": (3.5, None), "clip-b16-base": (11.5, 97.5), "clip-l14-tiny": (10.7, None),
                "clip-l14-base": (20.1, 323.6), "swin-b-tiny": (5.6, 92.3), "swin-b-base": (10.1, 96.8),
                "swin-l-tiny": (11.7, 206.7), "swin-l-base": (19.0, 214.0)}


def params_table() -> str:
    """Markdown table of the presets' parameter counts (with the AVE head) against the paper's; r per stage for a
    Swin."""
    rows = ["| preset | backbone | r | trainable (ours) | trainable (paper) | total (ours) | total (paper) |",
            "|---|---|---|---|---|---|---|"]
    for name, (paper_trainable, paper_total) in PAPER_COUNTS.items():
        cfg = STGCMAConfig.preset(name)
        with torch.device("meta"):  # counts only: no memory, no forward
            model = FastSTGCMA(cfg)
            model.head = AVEHead(model.num_features)
        rep = model.param_report()
        total = f"{paper_total}M" if paper_total else "-"
        r = "/".join(str(s.bottleneck) for s in model.arch.stages)
        rows.append(f"| {name} | {cfg.backbone} | {r} | {rep.trainable / 1e6:.2f}M | "
                    f"{paper_trainable}M | {rep.total / 1e6:.2f}M | {total} |")
    return "\n".join(rows)


_DTYPE_NAMES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
                "fp32": torch.float32, "float32": torch.float32}  # fmt: skip


def _kernel_ops() -> tuple[str, ...]:
    from stgcma_fast.ops.selftest import KERNEL_OPS

    return tuple(KERNEL_OPS)


def selftest_command(args: argparse.Namespace) -> int:
    """``stgcma-fast selftest``: exit status 0 when every check passed, 1 otherwise (see ops.selftest)."""
    from stgcma_fast.ops.selftest import KERNEL_OPS, selftest

    device = None if args.device == "auto" else args.device
    resolved = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if resolved.type not in ("cpu", "cuda"):
        raise UsageError(f"argument --device: expected cuda, cuda:N or cpu, got {args.device!r}")
    if resolved.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UsageError(f"argument --device: the kernels run on cpu only in the Triton interpreter, got "
                         f"{args.device!r} without TRITON_INTERPRET=1 (set it, or run on a CUDA device)")
    checks = selftest(device, [_DTYPE_NAMES[d] for d in args.dtypes] or None, args.ops or list(KERNEL_OPS),
                      save=not args.no_record)
    failed = [c for c in checks if not c.passed]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    """The ``stgcma-fast`` parser: one-line errors and ``--debug`` on every subcommand (see ``cli_args``)."""
    parser = ArgumentParser(prog="stgcma-fast", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    p = sub.add_parser("demo", help="train STG-CMA for a few steps on generated clips (no downloads)")
    p.add_argument("--preset", default="clip-b16-base", choices=sorted(PRESETS))
    p.add_argument("--size", default="auto", choices=("auto", "full", "small"),
                   help="full-size backbone or a small CLIP-shaped one; auto = full on CUDA, small on CPU")
    p.add_argument("--frames", type=positive_int, default=10)
    p.add_argument("--steps", type=positive_int, default=30)
    p.add_argument("--batch-size", type=nonneg_int, default=0,
                   help="clips per step (0, the default: 8 on CUDA, 2 on CPU)")
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--device", type=device_type, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"))
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=demo)
    p = sub.add_parser("params", help="print the presets' parameter counts as a markdown table")
    p.set_defaults(func=lambda args: print(params_table()) or 0)
    p = sub.add_parser("selftest", help="check the Triton kernels on this GPU against the torch contracts and, if "
                                        "they pass, let FastSTGCMA pick them automatically here")  # fmt: skip
    p.add_argument("--device", type=device_type, default="auto",
                   help="cuda (default when available), cuda:N, or cpu with TRITON_INTERPRET=1")
    p.add_argument("--dtypes", type=comma_list(sorted(_DTYPE_NAMES)), default=[],
                   help="comma-separated, e.g. bf16,fp16,fp32 (default: all the device runs)")
    p.add_argument("--ops", type=comma_list(_kernel_ops), default=[],
                   help="comma-separated kernel ops (default: all)")
    p.add_argument("--no-record", action="store_true", help="check only; do not record the verdict")
    p.set_defaults(func=selftest_command)
    add_data_commands(sub)  # synth, prepare, stats
    add_train_commands(sub)  # train, eval
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stgcma-fast`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code (0 ok, 1 a check or
    some media failed, 2 a usage error reported on one line, 130 interrupted)."""
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
