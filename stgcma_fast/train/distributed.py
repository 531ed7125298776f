"""DDP plumbing: join the process group ``torchrun`` describes, pick the device, reduce metric counts."""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: ``rank`` of ``world_size``, its ``device``, and whether it joined a group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; ``cuda`` -> ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"run.device: expected a device this machine has, got {name!r} (CUDA is not available)")
    return device


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group described by ``torchrun``'s environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT): nccl on CUDA, gloo on CPU. A single process (no WORLD_SIZE, or 1) runs without a group. An
    already initialised group is used as it is."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        device = resolve_device(device_name, local_rank)
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, False)
    device = resolve_device(device_name, local_rank)
    if world <= 1:
        return DistInfo(0, 1, 0, device, False)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, True)


def shutdown(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(state: dict[str, torch.Tensor], info: DistInfo) -> dict[str, torch.Tensor]:
    """Element-wise sums of a metrics state over the ranks (counts: never means of means)."""
    if not info.distributed:
        return state
    out = {}
    for key in sorted(state):  # the same order on every rank
        tensor = state[key].to(info.device if dist.get_backend() == "nccl" else "cpu").clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        out[key] = tensor.cpu()
    return out


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True when ``flag`` is true on any rank (one tiny collective; every rank must call it)."""
    if not info.distributed:
        return flag
    device = info.device if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
