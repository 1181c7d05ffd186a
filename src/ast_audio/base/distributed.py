"""Processes under ``torchrun``: who we are, and the few collectives the trainer needs.

DDP only through ``torchrun``: the environment it sets (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, the rendezvous) is read here, NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import atexit
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


def _end_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def init_distributed(device_type: str) -> Dist:
    """Join the process group ``torchrun`` describes in the environment (if any).

    A group made here is ended when the process exits (what runs after training, such as a
    recipe's evaluation, still sees it): a process that exits with gloo's group open can abort
    in its threads' teardown ("terminate called without an active exception"), and torchrun
    then reports a failed rank after the run's work is done."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        atexit.register(_end_group)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
