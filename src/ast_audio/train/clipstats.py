"""Fitting the clip-statistics branch (:mod:`ast_audio.model.clipstats`) after training.

Once the transformer has trained, the trainer calls :func:`fit_clip_stats` on the model of
the best validation epoch:

1. the clip statistics of every training clip (no augmentation) give the branch its
   standardisation;
2. a logistic regression on them (softmax for single-label, sigmoids for multi-label) is
   fitted to convergence by L-BFGS, for each L2 strength of :data:`C_GRID` (scikit-learn's
   ``C``: the loss summed over clips, plus half the squared weights over ``C``); the one
   scoring best on the validation split wins (the run's metric, then the loss);
3. the two sides are mixed on the validation split: logits ``(1 - w) * transformer + w *
   statistics`` for ``w`` in :data:`WEIGHTS`, the lowest validation loss wins (``w = 0``
   keeps the transformer alone, ``w = 1`` the regression alone);
4. the regression is fitted once more with the chosen ``C`` on the training and validation
   clips together (the choices are made; the regression is cheap and more clips help it
   most), and ``w`` is folded into the two heads, so the saved model is one function.

The choice is recorded in the model's ``info.extra["clip_stats"]``; a model that has it is
not fitted again (a resumed run finishing twice gets the same model).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from ..model.ast import ASTModel
from ..model.clipstats import clip_statistics
from .metrics import calculate_stats

__all__ = ["C_GRID", "WEIGHTS", "batches_of", "fit_clip_stats", "fit_linear"]

log = logging.getLogger(__name__)

C_GRID = (0.01, 0.1, 1.0, 10.0)
WEIGHTS = tuple(i / 10 for i in range(11))


def _loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets.argmax(1))


def fit_linear(features: torch.Tensor, targets: torch.Tensor, c: float, multi_label: bool,
               max_iter: int = 500) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Weights ``(n, k)`` and bias ``(k,)`` of an L2-regularised logistic regression (fp64, L-BFGS)."""
    x, y = features.double(), targets.double()
    weight = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)  # fmt: skip
    per_clip = y.shape[1] if multi_label else 1  # BCE is averaged over classes too

    def closure():
        opt.zero_grad()
        loss = _loss(x @ weight + bias, y, multi_label) + (weight**2).sum() / (2 * c * len(x) * per_clip)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach(), bias.detach()


def batches_of(dataset, batch_size: int, device, num_workers: int = 0):
    """``(model input, targets)`` batches of an :class:`~ast_audio.data.dataset.AudioDataset`
    as it gives them (a dataset without augmentation: every clip as it is)."""
    for batch in dataset.loader(batch_size, num_workers=num_workers):
        yield dataset.model_input(batch, device)


@torch.no_grad()
def _inputs(model: ASTModel, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]):
    """Clip statistics, transformer logits (the branch left out) and targets of ``batches``."""
    stats, logits, targets = [], [], []
    for x, y in batches:
        stats.append(clip_statistics(x).cpu().double())
        logits.append(model.forward_head(model.forward_features(x)).float().cpu().double())
        targets.append(y.float().cpu().double())
    return torch.cat(stats), torch.cat(logits), torch.cat(targets)


def _score(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool, metric: str) -> tuple[float, float]:
    """(metric, -loss): larger is better in both."""
    probs = torch.sigmoid(logits) if multi_label else torch.softmax(logits, 1)
    main = calculate_stats(probs.numpy(), targets.numpy()).main(metric)
    return float(np.nan_to_num(main, nan=0.0)), -float(_loss(logits, targets, multi_label))


def fit_clip_stats(model: ASTModel, train_batches, valid_batches, *, multi_label: bool, metric: str) -> dict:
    """Fit ``model``'s clip-statistics branch in place (see the module notes); returns the choice.

    ``train_batches`` / ``valid_batches``: iterables of ``(model input, targets)`` on the
    model's device, without augmentation. The model must have the branch
    (``config.clip_stats``).
    """
    head = model.stats_head
    if head is None:
        raise ValueError("the model has no clip-statistics branch (config.clip_stats is false)")
    if "clip_stats" in model.info.extra:
        return model.info.extra["clip_stats"]
    was_training = model.training
    model.eval()
    s_train, _, y_train = _inputs(model, train_batches)
    s_valid, z_valid, y_valid = _inputs(model, valid_batches)
    mean, std = s_train.mean(0), s_train.std(0, unbiased=False).clamp(min=1e-6)
    x_train, x_valid = (s_train - mean) / std, (s_valid - mean) / std

    fits = {}
    for c in C_GRID:
        weight, bias = fit_linear(x_train, y_train, c, multi_label)
        fits[c] = (_score(x_valid @ weight + bias, y_valid, multi_label, metric), weight, bias)
    c = max(C_GRID, key=lambda k: fits[k][0])
    _, weight, bias = fits[c]
    z_stats = x_valid @ weight + bias
    w = max(WEIGHTS, key=lambda k: _score((1 - k) * z_valid + k * z_stats, y_valid, multi_label, metric)[::-1])
    mixed = _score((1 - w) * z_valid + w * z_stats, y_valid, multi_label, metric)[0]
    alone = _score(z_valid, y_valid, multi_label, metric)[0]
    s_all = torch.cat([s_train, s_valid])
    mean, std = s_all.mean(0), s_all.std(0, unbiased=False).clamp(min=1e-6)
    weight, bias = fit_linear((s_all - mean) / std, torch.cat([y_train, y_valid]), c, multi_label)

    with torch.no_grad():
        final = model.mlp_head[-1]
        final.weight.mul_(1 - w)
        final.bias.mul_(1 - w)
        head.mean.copy_(mean.to(head.mean))
        head.std.copy_(std.to(head.std))
        head.linear.weight.copy_((w * weight).T.to(head.linear.weight))
        head.linear.bias.copy_((w * bias).to(head.linear.bias))
    choice = {"C": c, "weight": w, "valid": {metric: mixed, f"{metric}_transformer": alone,
                                             f"{metric}_statistics": fits[c][0][0]}}  # fmt: skip
    model.info = replace(model.info, extra={**model.info.extra, "clip_stats": choice})
    model.train(was_training)
    log.info("clip statistics: C %g, weight %.1f; validation %s %.4f (transformer alone %.4f, statistics alone %.4f)",
             c, w, metric, mixed, alone, fits[c][0][0])  # fmt: skip
    return choice
