"""The process group of a pretraining run (torchrun's environment, or one process)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lesioncl.utils import resolve_device


# --------------------------------------------------------------------------- helpers
@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> DistInfo:
    """Join the process group torchrun (or a test) set up; otherwise a single process."""
    device = resolve_device(device_name)
    owns = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
        owns = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
    else:
        rank, world, local = 0, 1, 0
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device)
    return DistInfo(rank, world, local, dev, owns)
