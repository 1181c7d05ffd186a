"""One optimiser step, and what shapes it: the parameter groups (frozen layers, layer-wise lr
decay) and the cut of a length-bucketed batch. :func:`train_step` is the step the run takes
and ``bench/`` times."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from ..base.runtime import autocast
from ..model.ast import ASTModel
from ..model.config import PATCH, ASTConfig
from .evaluate import loss_value

__all__ = ["bucket_length", "parameter_groups", "train_step"]


def train_step(
    net: Callable[[torch.Tensor], torch.Tensor],
    features: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    loss: str = "BCE",
    amp_dtype: torch.dtype | None = None,
    micro_batch: int | None = None,
    label_smoothing: float = 0.0,
    forward_kwargs: dict | None = None,
) -> torch.Tensor:
    """One optimiser step on a batch: forward of ``net`` (a model, or any callable giving
    logits: ``bench/`` passes Hugging Face's) under autocast when ``amp_dtype``, the loss
    on float32 logits, backward through the scaler, step. Returns the detached loss. This
    is the step ``train`` runs and ``bench/`` times.

    ``micro_batch``: gradient accumulation. The batch is cut into chunks of that many clips,
    each chunk's mean loss weighted by its share of the batch and its gradients added up
    (DDP synchronises only the last), then one step: the update of the whole batch, with
    one chunk's activations in memory at a time.

    ``forward_kwargs``: passed to every ``net`` call (the trainer's patchout and the cut
    of a length-bucketed batch: :meth:`ASTModel.forward`'s options)."""
    optimizer.zero_grad(set_to_none=True)
    total = len(features)
    size = micro_batch or total
    starts = range(0, total, size)
    value_sum = torch.zeros((), device=features.device)
    for i, start in enumerate(starts):
        x, y = features[start : start + size], targets[start : start + size]
        last = i == len(starts) - 1
        with contextlib.nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync():
            with autocast(x.device, amp_dtype):
                logits = net(x, **forward_kwargs) if forward_kwargs else net(x)
            value = loss_value(logits.float(), y, loss, label_smoothing)
            if len(starts) > 1:
                value = value * (len(x) / total)
            scaler.scale(value).backward()
        value_sum += value.detach()
    scaler.step(optimizer)
    scaler.update()
    return value_sum


def bucket_length(longest: int, config: ASTConfig) -> int:
    """Frames a length-bucketed batch is cut to: its ``longest`` clip's real frames rounded up
    to whole patch columns (``16 + k * tstride``), at most the model's ``input_tdim``."""
    columns = 1 if longest <= PATCH else -(-(longest - PATCH) // config.tstride) + 1
    return min(PATCH + (columns - 1) * config.tstride, config.input_tdim)


def parameter_groups(model: ASTModel, freeze: int | str | None = None, llrd: float = 1.0) -> list[dict]:
    """The optimiser's parameter groups. ``freeze``: the parameters of layers ``0..N`` of
    :meth:`ASTModel.layer_ids` (the patch embedding, tokens and positions, then the first
    N blocks), or with ``"all"`` every parameter but the head's, get ``requires_grad=False``
    and stay out. ``llrd < 1``: one group per layer, the head's first, layer ``l`` at
    ``lr_scale = llrd ** (depth + 1 - l)``; else one group. Each group names its parameters
    (``names``), which the resume file keeps and checks."""
    ids, top = model.layer_ids(), model.config.depth + 1
    groups: dict[int, list] = {}
    for name, param in model.named_parameters():
        frozen = not name.startswith("mlp_head.") if freeze == "all" else freeze is not None and ids[name] <= freeze
        if frozen:
            param.requires_grad_(False)
        if param.requires_grad:
            groups.setdefault(ids[name] if llrd != 1 else top, []).append((name, param))
    return [{"params": [p for _, p in members], "names": [n for n, _ in members], "lr_scale": llrd ** (top - layer)}
            for layer, members in sorted(groups.items(), reverse=True)]  # fmt: skip
