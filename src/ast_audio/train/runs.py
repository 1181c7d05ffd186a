"""What every run holds, whether it trains, distils or pretrains: its device (and place among
``torchrun``'s processes) and its experiment folder (locked, cleaned of a killed run's
temporaries, logged to ``log.txt``)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from ..base.distributed import Dist, init_distributed
from ..base.fileio import clean_stale_temporaries
from ..base.lock import FolderLocked, folder_lock
from ..base.runtime import pick_device

__all__ = ["run_device", "run_folder"]


def run_device(device: str | None) -> tuple[torch.device, Dist]:
    """The device of a run and its place among ``torchrun``'s processes (each rank its own GPU)."""
    device = pick_device(device)
    ctx = init_distributed(device.type)
    if device.type == "cuda" and ctx.enabled:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return device, ctx


@contextlib.contextmanager
def run_folder(exp: Path, ctx: Dist, command: str, folders: tuple[Path, ...]):
    """An experiment folder held for a run: locked (:mod:`ast_audio.base.lock`: a second run in
    it is refused with one line naming the holder; under ``torchrun`` rank 0 takes the lock and
    every rank refuses together), the temporaries a killed run left in ``folders`` removed, and
    the package's INFO messages and up written to ``log.txt``, whatever the console shows."""
    with contextlib.ExitStack() as held:
        refusal = None
        if ctx.main:
            try:
                held.enter_context(folder_lock(exp, command))
            except FolderLocked as err:
                refusal = [err.reason, err.path]
        refusal = ctx.from_main([refusal])[0]
        if refusal is not None:
            raise FolderLocked(*refusal)
        package_log = logging.getLogger("ast_audio")
        level, handler = package_log.level, None
        if ctx.main:
            (exp / "models").mkdir(parents=True, exist_ok=True)
            for folder in folders:  # what a kill -9 mid-write left
                clean_stale_temporaries(folder)
            handler = logging.FileHandler(exp / "log.txt")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            package_log.addHandler(handler)
            if package_log.getEffectiveLevel() > logging.INFO:
                package_log.setLevel(logging.INFO)
        try:
            yield
        finally:
            package_log.setLevel(level)
            if handler is not None:
                package_log.removeHandler(handler)
                handler.close()
