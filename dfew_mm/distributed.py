"""torchrun / DistributedDataParallel plumbing: NCCL on GPU, gloo on CPU, a no-op for one process."""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from dfew_mm.device import resolve_device


@dataclasses.dataclass
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_pref: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; NCCL on GPU, gloo on CPU. No-op for one process."""
    world, local = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(device_pref, local)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Dist(dist.get_rank() if world > 1 else 0, world, device)


def gather(obj, d: Dist) -> list:
    if d.world == 1:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()
