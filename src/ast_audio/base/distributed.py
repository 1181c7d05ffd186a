"""Processes under ``torchrun``: who we are, and the few collectives the trainer needs.

DDP only through ``torchrun``: the environment it sets (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, the rendezvous) is read here, NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def from_main(self, values: list) -> list:
        """``values`` as rank 0 has them, on every rank."""
        if self.enabled:
            dist.broadcast_object_list(values, src=0)
        return values


def init_distributed(device_type: str) -> Dist:
    """Join the process group ``torchrun`` describes in the environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
