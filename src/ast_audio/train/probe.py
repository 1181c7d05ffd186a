"""A cheap look at a representation: a linear probe on mean-pooled patch embeddings.

:func:`clip_embeddings` runs a trunk over labelled clips (each clip's first
``target_length`` frames, normalised by the model's contract) and averages its patch
tokens; :func:`linear_probe` fits a multinomial logistic regression (standardised
features, L2, full-batch L-BFGS in torch: no extra dependency) on one split and returns
the accuracy on the other. Pretraining reports it every few epochs, the benchmark
compares it with fine-tuning.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..base.runtime import autocast
from ..errors import DataError
from ..features.contract import InputContract
from ..features.pipeline import batch_fbank, finish_input, fit_waveform, load_clip
from ..model.ast import ASTModel
from ..model.pos_embed import NUM_PREFIX_TOKENS

__all__ = ["LabelledClips", "clip_embeddings", "linear_probe", "probe_accuracy", "read_labelled"]


@dataclass
class LabelledClips:
    """Files and one class name per file."""

    files: list[Path]
    labels: list[str]


def read_labelled(path: str | os.PathLike) -> LabelledClips:
    """The clips of a folder of class folders, a CSV (``filename,label``) or a datafile JSON
    (its first label of each entry), single-label."""
    from ..data.datafiles import _resolve_wav
    from ..data.labelled import data_kind, labelled_files

    path = Path(path)
    if data_kind(path) == "json":
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))["data"]
            pairs = [(_resolve_wav(str(e["wav"]), path.parent), str(e["labels"]).split(",")[0]) for e in entries]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"not a readable datafile ({type(err).__name__}: {err})", path) from None
    else:
        pairs = [(wav, names[0]) for wav, names in labelled_files(path) if names]
    if not pairs:
        raise DataError("no labelled clips for the probe", path)
    return LabelledClips([p for p, _ in pairs], [label for _, label in pairs])


@torch.no_grad()
def clip_embeddings(model: ASTModel, files: list[Path], contract: InputContract, *, device: torch.device | str = "cpu",
                    batch_size: int = 16, amp_dtype: torch.dtype | None = None) -> np.ndarray:  # fmt: skip
    """``(clips, D)`` mean of the patch tokens of each clip (its first ``target_length`` frames)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(files), batch_size):
        waves, frames = zip(*(fit_waveform(load_clip(f, contract)[0], contract) for f in files[start : start + batch_size]),
                            strict=True)  # fmt: skip
        x = batch_fbank(torch.stack(waves).to(device), torch.tensor(frames, device=device), contract)
        x = finish_input(x, contract)  # (B, T, F) normalised
        with autocast(device, amp_dtype):
            tokens = model.forward_tokens(x)
        out.append(tokens[:, NUM_PREFIX_TOKENS:].float().mean(dim=1).cpu())  # (B, D)
    model.train(was_training)
    return torch.cat(out).numpy()


def linear_probe(train_x: np.ndarray, train_y: list[str], test_x: np.ndarray, test_y: list[str], *,
                 l2: float = 1e-3, steps: int = 200) -> float:  # fmt: skip
    """Accuracy on ``test`` of a logistic regression fitted on ``train`` (features
    standardised with the training split's statistics). Classes only in ``test`` count as wrong."""
    classes = sorted(set(train_y))
    index = {c: i for i, c in enumerate(classes)}
    x = torch.as_tensor(train_x, dtype=torch.float64)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    y = torch.tensor([index[c] for c in train_y])
    weight = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + l2 * (weight**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    test = (torch.as_tensor(test_x, dtype=torch.float64) - mean) / std
    with torch.no_grad():
        pred = (test @ weight + bias).argmax(1).tolist()
    return float(np.mean([classes[p] == t for p, t in zip(pred, test_y, strict=True)]))


def probe_accuracy(model: ASTModel, train: LabelledClips, valid: LabelledClips, contract: InputContract, *,
                   device: torch.device | str = "cpu", batch_size: int = 16, amp_dtype=None) -> float:  # fmt: skip
    """The linear probe's validation accuracy on ``model``'s embeddings of the two splits."""
    kwargs = {"device": device, "batch_size": batch_size, "amp_dtype": amp_dtype}
    return linear_probe(clip_embeddings(model, train.files, contract, **kwargs), train.labels,
                        clip_embeddings(model, valid.files, contract, **kwargs), valid.labels)  # fmt: skip
