"""``stgcma-fast train`` and ``stgcma-fast eval``::

    stgcma-fast train TASK [--config FILE] [--synthetic] [--data DIR] [--out RUN_DIR] [--resume] [--seeds S ...]
                           [--select-on val|test] [--device D] [--pretrained] [--checkpoint-path FILE] [key=value ...]
    stgcma-fast eval TASK --checkpoint PATH [--data DIR | --synthetic] [--split test] [--device D] [--json FILE]

Under ``torchrun --nproc_per_node N`` the same commands train with DDP (rank 0 prints and writes). Argument mistakes
end with one line and exit code 2 (see :mod:`stgcma_fast.cli_args`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from stgcma_fast.cli_args import (
    UsageError,
    existing_dir,
    existing_file,
    nonneg_int,
    output_file,
    positive_int,
    torch_device,
    writable_dir,
)
from stgcma_fast.train.config import SELECT_ON, ConfigError, RunConfig, load_run_config
from stgcma_fast.train.distributed import DistInfo

TASKS = ("ave",)  # the tasks `train` / `eval` accept today (AVS-S4 and MUSIC-AVQA plug in later)


def default_config(task: str, synthetic: bool, device: str) -> Path | None:
    """The config a run without ``--config`` starts from: for ``--synthetic``, the small CLIP-shaped backbone on
    a CPU (``synthetic.yaml``) or the full preset on a GPU (``synthetic-full.yaml``); otherwise the task's
    ``default.yaml`` when it exists."""
    import torch

    from stgcma_fast.resources import config_dir

    folder = config_dir() / task
    if synthetic:
        gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        name = "synthetic-full.yaml" if gpu else "synthetic.yaml"
    else:
        name = "default.yaml"
    path = folder / name
    return path if path.is_file() else None


def _run_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return args.out
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{args.task}{'-synthetic' if args.synthetic else ''}-{stamp}"


def train_command(args: argparse.Namespace) -> int:
    from stgcma_fast.train.distributed import init_distributed, shutdown
    from stgcma_fast.train.run import synthetic_root
    from stgcma_fast.train.trainer import NonFiniteLossError

    out = _run_dir(args)
    if args.resume:
        if args.out is None:
            raise UsageError("--resume: expected --out RUN_DIR naming the run to continue")
        if args.config is not None or args.overrides:
            raise UsageError("--resume: expected no --config and no key=value overrides (the run continues with "
                             f"its own {out / 'config.yaml'})")
        if not (out / "config.yaml").is_file():
            raise UsageError(f"--resume: expected a run folder with config.yaml, got '{out}' (no config.yaml)")
        config_path = out / "config.yaml"
        overrides: list[str] = []
    else:
        if out.exists() and any(out.iterdir()):
            raise UsageError(f"--out: expected a new or empty run folder, got '{out}', which already holds files "
                             f"(pass --resume to continue that run, or choose another folder)")
        config_path = args.config or default_config(args.task, args.synthetic, args.device)
        overrides = list(args.overrides)
        flags = {"data.synthetic": True if args.synthetic else None,
                 "data.root": str(args.data) if args.data else None,
                 "run.select_on": args.select_on,
                 "run.device": args.device if args.device != "auto" else None,
                 "model.pretrained": True if args.pretrained else None,
                 "model.checkpoint_path": str(args.checkpoint_path) if args.checkpoint_path else None}
        overrides += [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    try:
        cfg = load_run_config(args.task, config_path, overrides)
    except ConfigError as err:
        raise UsageError(str(err)) from err
    if not cfg.data.synthetic and cfg.data.root is None:
        raise UsageError("expected a dataset: --data DIR (or data.root in the config), or --synthetic for the "
                         "generated one")
    if cfg.data.root is not None and not cfg.data.synthetic and not Path(cfg.data.root).is_dir():
        raise UsageError(f"--data: expected an existing dataset folder, got '{cfg.data.root}'")
    dist = init_distributed(cfg.run.device)
    try:
        data_root = synthetic_root(cfg.task, dist) if cfg.data.synthetic else Path(cfg.data.root)
        return _train(args, cfg, out, data_root, dist)
    except NonFiniteLossError as err:  # the run diverged: one line, exit 1 (the checkpoints so far are kept)
        print(f"stgcma-fast train: stopped: {err}", file=sys.stderr)
        return 1
    finally:
        shutdown(dist)


def _train(args: argparse.Namespace, cfg: RunConfig, out: Path, data_root: Path, dist: DistInfo) -> int:
    from stgcma_fast.train.run import run_seeds, run_training

    if dist.is_main:
        print(f"run folder: {out}", flush=True)
    if args.seeds and len(args.seeds) > 1:
        run_seeds(cfg, list(args.seeds), out, data_root, dist, resume=args.resume)
    else:
        if args.seeds:
            cfg = cfg.replace(**{"run.seed": args.seeds[0]})
        run_training(cfg, out, data_root, dist, resume=args.resume)
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from stgcma_fast.fileio import atomic_write_text
    from stgcma_fast.train.distributed import init_distributed, shutdown
    from stgcma_fast.train.run import evaluate_checkpoint, synthetic_root

    if args.data is None and not args.synthetic:
        raise UsageError("expected --data DIR (the dataset folder) or --synthetic")
    if args.data is not None and args.synthetic:
        raise UsageError("expected either --data DIR or --synthetic, got both")
    dist = init_distributed(args.device)
    try:
        root = synthetic_root(args.task, dist) if args.synthetic else args.data
        result = evaluate_checkpoint(args.checkpoint, root, args.split, dist, batch_size=args.batch_size,
                                     num_workers=args.num_workers)
        if result["task"] != args.task:
            raise UsageError(f"--checkpoint: expected a checkpoint of task {args.task!r}, got one of task "
                             f"{result['task']!r}")
        if dist.is_main:
            for key, value in result["metrics"].items():
                if isinstance(value, float):
                    print(f"{args.split} {key}: {value:.4f}")
            if args.json is not None:
                atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    finally:
        shutdown(dist)
    return 0


def add_train_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train`` and ``eval`` on ``subparsers``."""
    p = subparsers.add_parser("train", help="train and evaluate a task: select on val, test once, report")
    p.add_argument("task", choices=TASKS)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. optim.lr=3e-4 model.config.branches=video")
    p.add_argument("--config", type=existing_file, default=None, help="a run config YAML (configs/<task>/*.yaml)")
    p.add_argument("--synthetic", action="store_true",
                   help="generate (once, in the cache) and use a small synthetic dataset: no downloads")
    p.add_argument("--data", type=existing_dir, default=None, help="the dataset folder (e.g. AVE_Dataset)")
    p.add_argument("--out", type=writable_dir, default=None,
                   help="the run folder (default runs/<task>[-synthetic]-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--seeds", type=nonneg_int, nargs="+", default=None,
                   help="one run per seed (out/seed_<s>), reported as mean and std")
    p.add_argument("--select-on", choices=SELECT_ON, default=None,
                   help="split that selects the model (default val; test reproduces the authors' protocol)")
    p.add_argument("--device", type=torch_device, default="auto")
    p.add_argument("--pretrained", action="store_true", help="load the backbone's pretrained weights through timm")
    p.add_argument("--checkpoint-path", type=existing_file, default=None,
                   help="load the backbone's weights from a local timm / OpenAI CLIP file")
    p.set_defaults(func=train_command)

    e = subparsers.add_parser("eval", help="evaluate a saved checkpoint (a run's checkpoints/selected.pt)")
    e.add_argument("task", choices=TASKS)
    e.add_argument("--checkpoint", type=existing_file, required=True)
    e.add_argument("--data", type=existing_dir, default=None)
    e.add_argument("--synthetic", action="store_true", help="the generated dataset `train --synthetic` used")
    e.add_argument("--split", choices=("train", "val", "test"), default="test")
    e.add_argument("--device", type=torch_device, default="auto")
    e.add_argument("--batch-size", type=positive_int, default=None)
    e.add_argument("--num-workers", type=nonneg_int, default=None)
    e.add_argument("--json", type=output_file, default=None, help="also write the metrics to this JSON file")
    e.set_defaults(func=eval_command)
