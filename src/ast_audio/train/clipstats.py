"""Fitting the clip-statistics branch (:mod:`ast_audio.model.clipstats`) after training.

Once the transformer has trained, the trainer calls :func:`fit_clip_stats` on the model of
the best validation epoch:

1. the clip statistics of every training and validation clip (no augmentation);
2. the L2 strength of a logistic regression on them (softmax for single-label, sigmoids for
   multi-label; scikit-learn's ``C``: the loss summed over clips, plus half the squared
   weights over ``C``; fitted to convergence by L-BFGS) is chosen among :data:`C_GRID` by
   **grouped cross-validation over the training and validation clips together**
   (:data:`FOLDS` folds of whole groups, :func:`~ast_audio.data.splits.grouped_folds`: a
   datafile entry's ``group``, else the clip alone), the run's metric on the out-of-fold
   predictions, then their loss. Every clip takes part in the choice, and takes of one
   sound never sit on both sides of a fold;
3. the two sides are mixed on the validation split: logits ``(1 - w) * transformer + w *
   statistics`` for ``w`` in :data:`WEIGHTS`, the statistics from a fit on the training
   clips alone. The weight of lowest validation loss is found, then the **one-standard-error
   rule** takes the largest ``w`` whose loss is within one standard error (of the per-clip
   difference) of it: the validation split is a few groups, the regression's setting was
   chosen on all of them, so where the validation cannot tell two weights apart the simpler,
   better-measured side is trusted (``w = 0`` keeps the transformer alone, ``w = 1`` the
   regression alone);
4. the regression is fitted once more with the chosen ``C`` on the training and validation
   clips together, and ``w`` is folded into the two heads, so the saved model is one function.

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

from ..data.splits import grouped_folds
from ..model.ast import ASTModel
from ..model.clipstats import clip_statistics
from .metrics import calculate_stats

__all__ = ["C_GRID", "FOLDS", "WEIGHTS", "batches_of", "fit_clip_stats", "fit_linear", "transformer_logits"]

log = logging.getLogger(__name__)

C_GRID = (0.01, 0.1, 1.0, 10.0)
WEIGHTS = tuple(i / 10 for i in range(11))
FOLDS = 5  # at most; fewer where there are fewer groups


def _loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool, reduction: str = "mean") -> torch.Tensor:
    if multi_label:
        per_clip = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)
        return per_clip.mean() if reduction == "mean" else per_clip
    return F.cross_entropy(logits, targets.argmax(1), reduction=reduction)


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
    """``(model input, targets, groups)`` batches of an :class:`~ast_audio.data.dataset.AudioDataset`
    as it gives them (a dataset without augmentation: every clip as it is); ``groups`` holds
    each clip's datafile group, or its file where the entry names none. Clips the dataset
    leaves out (``skip_bad``) are not in them."""
    entries = dataset.datafile.entries
    for batch in dataset.loader(batch_size, num_workers=num_workers):
        if "target" not in batch:  # every clip of the batch was left out
            continue
        x, y = dataset.model_input(batch, device)
        yield x, y, [entries[i].group or str(entries[i].wav) for i in batch["index"].tolist()]


def transformer_logits(model: ASTModel, features: torch.Tensor) -> torch.Tensor:
    """``model``'s logits without its clip-statistics branch, at the scale its transformer
    trained to: the fit folds the branch's weight ``w`` into the transformer's head as
    ``1 - w`` (:func:`fit_clip_stats`), which is undone here. A model without a
    fitted branch, or whose branch took the whole weight (``w = 1``: its transformer's head
    is zero), gives its whole output."""
    weight = (model.info.extra.get("clip_stats") or {}).get("weight", 0.0) if model.stats_head is not None else 0.0
    if weight >= 1:
        return model(features).float()
    return model.forward_head(model.forward_features(features)).float() / (1 - weight)


@torch.no_grad()
def _inputs(model: ASTModel, batches: Iterable[tuple]):
    """Clip statistics, transformer logits (the branch left out), targets and groups of
    ``batches`` of ``(x, y)`` or ``(x, y, groups)`` (without groups, each clip is its own)."""
    stats, logits, targets, groups = [], [], [], []
    for x, y, *rest in batches:
        stats.append(clip_statistics(x).cpu().double())
        logits.append(transformer_logits(model, x).cpu().double())  # not fitted yet: the head as trained
        targets.append(y.float().cpu().double())
        groups += list(rest[0]) if rest else [f"clip {len(groups) + i}" for i in range(len(x))]
    return torch.cat(stats), torch.cat(logits), torch.cat(targets), groups


def _score(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool, metric: str) -> tuple[float, float]:
    """(metric, -loss): larger is better in both."""
    probs = torch.sigmoid(logits) if multi_label else torch.softmax(logits, 1)
    main = calculate_stats(probs.numpy(), targets.numpy()).main(metric)
    return float(np.nan_to_num(main, nan=0.0)), -float(_loss(logits, targets, multi_label))


def _moments(stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and (population) standard deviation each statistic is standardised with."""
    return stats.mean(0), stats.std(0, unbiased=False).clamp(min=1e-6)


def _standardised(fit_on: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    mean, std = _moments(fit_on)
    return tuple((x - mean) / std for x in (fit_on, *others))


def _cross_validated_c(stats: torch.Tensor, targets: torch.Tensor, groups: list[str], multi_label: bool,
                       metric: str) -> tuple[float, dict[float, tuple[float, float]], int]:  # fmt: skip
    """The ``C`` of best out-of-fold (metric, -loss) over grouped folds; every ``C``'s score
    and the number of folds. Fewer than two groups leave nothing to cross-validate: the
    largest ``C`` of the grid, no scores and no folds."""
    folds = min(FOLDS, len(set(groups)))
    if folds < 2:
        return C_GRID[-1], {}, 0
    fold = torch.tensor(grouped_folds(targets.argmax(1).tolist(), groups, folds, seed=0))
    scores = {}
    for c in C_GRID:
        out = torch.zeros_like(targets)
        for k in range(1, folds + 1):
            held = fold == k
            if not held.any():
                continue
            fit_x, held_x = _standardised(stats[~held], stats[held])
            weight, bias = fit_linear(fit_x, targets[~held], c, multi_label)
            out[held] = held_x @ weight + bias
        scores[c] = _score(out, targets, multi_label, metric)
    return max(C_GRID, key=lambda k: scores[k]), scores, folds


def _one_standard_error(z_transformer: torch.Tensor, z_stats: torch.Tensor, targets: torch.Tensor,
                        multi_label: bool) -> tuple[float, float]:  # fmt: skip
    """The largest weight within one standard error of the lowest validation loss, and that
    lowest loss's weight (:data:`WEIGHTS`)."""
    losses = {w: _loss((1 - w) * z_transformer + w * z_stats, targets, multi_label, "none") for w in WEIGHTS}
    best = min(WEIGHTS, key=lambda w: float(losses[w].mean()))
    n = len(targets)
    chosen = best
    for w in WEIGHTS:
        diff = losses[w] - losses[best]
        se = float(diff.std(unbiased=True)) / n**0.5 if n > 1 else 0.0
        if w > chosen and float(diff.mean()) <= se:
            chosen = w
    return chosen, best


def fit_clip_stats(model: ASTModel, train_batches, valid_batches, *, multi_label: bool, metric: str) -> dict:
    """Fit ``model``'s clip-statistics branch in place (see the module notes); returns the choice.

    ``train_batches`` / ``valid_batches``: iterables of ``(model input, targets)`` or
    ``(model input, targets, groups)`` on the model's device, without augmentation
    (:func:`batches_of`). The model must have the branch (``config.clip_stats``).
    """
    head = model.stats_head
    if head is None:
        raise ValueError("the model has no clip-statistics branch (config.clip_stats is false)")
    if "clip_stats" in model.info.extra:
        return model.info.extra["clip_stats"]
    was_training = model.training
    model.eval()
    s_train, _, y_train, g_train = _inputs(model, train_batches)
    s_valid, z_valid, y_valid, g_valid = _inputs(model, valid_batches)
    s_all, y_all = torch.cat([s_train, s_valid]), torch.cat([y_train, y_valid])
    c, cv_scores, folds = _cross_validated_c(s_all, y_all, g_train + g_valid, multi_label, metric)

    x_train, x_valid = _standardised(s_train, s_valid)
    weight, bias = fit_linear(x_train, y_train, c, multi_label)
    z_stats = x_valid @ weight + bias
    w, lowest = _one_standard_error(z_valid, z_stats, y_valid, multi_label)
    mixed = _score((1 - w) * z_valid + w * z_stats, y_valid, multi_label, metric)[0]
    alone = _score(z_valid, y_valid, multi_label, metric)[0]
    statistics = _score(z_stats, y_valid, multi_label, metric)[0]
    mean, std = _moments(s_all)
    weight, bias = fit_linear((s_all - mean) / std, y_all, c, multi_label)

    with torch.no_grad():
        final = model.mlp_head[-1]
        final.weight.mul_(1 - w)
        final.bias.mul_(1 - w)
        head.mean.copy_(mean.to(head.mean))
        head.std.copy_(std.to(head.std))
        head.linear.weight.copy_((w * weight).T.to(head.linear.weight))
        head.linear.bias.copy_((w * bias).to(head.linear.bias))
    cross_validated = cv_scores[c][0] if folds else None  # None, not NaN: the choice is saved as JSON
    choice = {"C": c, "weight": w, "lowest_loss_weight": lowest, "folds": folds,
              "cross_validated": {metric: cross_validated},
              "valid": {metric: mixed, f"{metric}_transformer": alone, f"{metric}_statistics": statistics}}  # fmt: skip
    model.info = replace(model.info, extra={**model.info.extra, "clip_stats": choice})
    model.train(was_training)
    log.info("clip statistics: C %g (%d grouped folds: %s %s), weight %.1f (lowest validation loss at %.1f); "
             "validation %s %.4f (transformer alone %.4f, statistics alone %.4f)", c, folds, metric,
             "-" if cross_validated is None else f"{cross_validated:.4f}", w, lowest, metric, mixed, alone,
             statistics)  # fmt: skip
    return choice
