"""A run's resume file, ``models/last.pt``: written atomically after every epoch, read back so
that running the same command again continues after the last completed epoch and ends
exactly where an uninterrupted run would have."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..base.fileio import save_torch
from ..errors import AstAudioError
from .config import TrainConfig

__all__ = ["RESUME_FILE", "RunRefused", "RunState", "TrainingError", "load_resume", "save_resume"]

log = logging.getLogger(__name__)

RESUME_FILE = "last.pt"


class TrainingError(AstAudioError):
    """A run that cannot go on (diverged, or an experiment folder that belongs to another run)."""


class RunRefused(TrainingError):
    """A run refused before it trained: its experiment folder holds a run of other settings,
    labels or parameter groups, or a resume file that cannot be read."""


# Settings that may change between a run and its resumption.
_MAY_CHANGE_ON_RESUME = {
    "n_epochs", "num_workers", "device", "progress", "exp_dir", "wa_end", "fbank_on", "cache_dir", "compile",
    "grad_checkpointing",
}  # fmt: skip


@dataclass
class RunState:
    epoch: int = 0  # last completed epoch (1-based, as the original counts)
    global_step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0
    rows: list = field(default_factory=list)  # result.csv rows so far
    ensemble_sum: torch.Tensor | None = None  # sum of every epoch's validation scores
    wa_sum: dict | None = None
    wa_count: int = 0
    stale_epochs: int = 0  # epochs in a row without a gain of the main metric over min_delta
    stopped: str | None = None  # why the run stopped before n_epochs (early stopping)


def save_resume(path: Path, cfg: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scheduler, scaler: torch.amp.GradScaler, state: RunState) -> None:  # fmt: skip
    """Write the resume file atomically: model, optimiser, scheduler, scaler, RNG and the run's state."""
    state_dict = {
        "format": "ast-audio-run",
        "config": dataclasses.asdict(cfg),
        "labels": _labels(model),  # the label CSV's contents: the path alone may now hold other labels
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),  # its groups name their parameters (parameter_groups)
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "state": dataclasses.asdict(state),
    }
    save_torch(state_dict, path)


def read_run_file(path: Path, cfg, fmt: str, kind: str, may_change: set[str], normalise=None) -> dict:
    """The resume file at ``path`` (no code executed) if it is a ``fmt`` file of a ``kind`` with
    ``cfg``'s settings, those in ``may_change`` aside; else :class:`RunRefused`, one line.
    ``cfg`` is a settings dataclass; a setting added since the file was written counts as its
    default; ``normalise(old)`` turns the saved settings back into their types (JSON-like
    lists where ``cfg`` has tuples)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable resume file gets the same message
        raise RunRefused(f"cannot read the resume checkpoint ({type(err).__name__}: {err})"[:300], path) from None
    if not isinstance(saved, dict) or saved.get("format") != fmt:
        other = isinstance(saved, dict) and str(saved.get("format", "")).startswith("ast-audio-")
        raise RunRefused(f"not an ast-audio {kind} checkpoint" + (" (this folder holds another kind of run)"
                                                                 if other else ""), path)  # fmt: skip
    new = dataclasses.asdict(cfg)
    old = {**dataclasses.asdict(type(cfg)()), **saved["config"]}
    if normalise is not None:
        normalise(old)
    changed = [k for k in new if k not in may_change and old.get(k) != new[k]]
    if changed:
        k = changed[0]
        raise RunRefused(f"this experiment folder holds a {kind} with other settings ({k}: {old.get(k)!r} there, "
                         f"{new[k]!r} now); use another --exp-dir to start a new run", cfg.exp_dir)  # fmt: skip
    return saved


def load_resume(path: Path, cfg: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scheduler, scaler: torch.amp.GradScaler) -> RunState:  # fmt: skip
    """The state after the last completed epoch, loaded into the model, optimiser, scheduler
    and scaler (a fresh state without a resume file). A run with other settings, or other
    parameter groups, is refused: it belongs to another experiment folder."""
    if not path.exists():
        return RunState()
    saved = read_run_file(path, cfg, "ast-audio-run", "run", _MAY_CHANGE_ON_RESUME)
    if "labels" in saved and saved["labels"] != _labels(model):
        raise RunRefused(
            f"the label CSV {cfg.label_csv} holds other labels (or another order) than when this run started; "
            "its outputs follow the first: restore that table or use another --exp-dir", cfg.exp_dir,
        )  # fmt: skip
    model.load_state_dict(saved["model"])
    groups = [(g.get("names"), g.get("lr_scale", 1.0)) for g in saved["optimizer"]["param_groups"]]
    if groups[0][0] is not None and groups != [(g["names"], g["lr_scale"]) for g in optimizer.param_groups]:
        raise RunRefused("the resume checkpoint's parameter groups (frozen layers, lr decay) differ from this "
                            "run's; use another --exp-dir to start a new run", path)  # fmt: skip
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["torch_rng"])
    state = RunState(**saved["state"])
    log.info("resuming %s after epoch %d (step %d)", cfg.exp_dir, state.epoch, state.global_step)
    return state


def _labels(model: torch.nn.Module) -> list | None:
    """The run's labels in output order (mid and display name of each), as the model carries them."""
    info = getattr(model, "info", None)
    if info is None or info.labels is None:
        return None
    return [[mid, name] for mid, name in zip(info.label_ids or info.labels, info.labels, strict=True)]
