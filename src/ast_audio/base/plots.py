"""The project's figures as PNG files: training curves, a confusion matrix, an attention map.

A leaf module (numpy, matplotlib and :mod:`ast_audio.base.fileio` only), so training,
evaluation, the demo and inference can all draw with it.

Every figure is a :class:`matplotlib.figure.Figure` on its own Agg canvas: no pyplot, no
``matplotlib.use(...)``, so drawing here changes neither the caller's backend nor pyplot's
figures and state, and works without a display. Every PNG is written atomically
(:func:`~ast_audio.base.fileio.atomic_write`); missing folders are created. matplotlib is
imported on the first figure, so importing this module costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .fileio import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_attention", "plot_confusion", "plot_curves"]

DPI = 100


class AttentionLike(Protocol):
    """What :func:`plot_attention` reads (an :class:`ast_audio.infer.AttentionMap`)."""

    path: str | None
    start: float
    method: str
    features: np.ndarray  # [frames, mel bins]
    map: np.ndarray  # [frames, mel bins]
    labels: list[tuple[str, float]]
    frame_shift: float


def _figure(**kwargs) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib loads on first use only
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)  # the figure's own canvas: pyplot never sees it
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))


def plot_curves(rows: Sequence[Sequence[float]], path: str | os.PathLike, metric: str) -> Path:
    """Training curves as a PNG: losses (left); the main metric, its checkpoint ensemble and mAUC (right).

    ``rows`` are the rows of the original ``result.csv``, one per epoch: ``metric``,
    mAUC, ..., train loss (column 5), valid loss (6), cumulative ``metric`` (7).
    """
    data = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)  # (epochs, columns)
    epochs = np.arange(1, len(rows) + 1)
    fig = _figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    left.plot(epochs, data[:, 5], "o-", label="train loss")
    left.plot(epochs, data[:, 6], "o-", label="valid loss")
    left.set_xlabel("epoch")
    left.legend()
    right.plot(epochs, data[:, 0], "o-", label=metric)
    right.plot(epochs, data[:, 7], "o--", label=f"cum {metric} (checkpoint ensemble)")
    right.plot(epochs, data[:, 1], "o-", label="mAUC")
    right.set_xlabel("epoch")
    right.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(
    matrix: np.ndarray, names: Sequence[str], path: str | os.PathLike, title: str, *,
    columns: Sequence[str] | None = None, xlabel: str = "predicted", ylabel: str = "true",
) -> Path:  # fmt: skip
    """A grid of counts as a PNG: a single-label run's confusion matrix (``matrix[true,
    predicted]``, ``names`` on both axes), or any ``[rows, columns]`` counts with ``columns``
    naming the columns. The figure is 7 x 6 inches and grows with a larger grid (up to 20); counts are written
    in the cells up to 40 columns and rows, names on the axes up to 80."""
    matrix = np.asarray(matrix)
    columns = list(names) if columns is None else list(columns)
    rows, cols = matrix.shape
    fig = _figure(figsize=(min(20.0, max(7.0, 3 + 0.45 * cols)), min(20.0, max(6.0, 2.5 + 0.4 * rows))))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues", aspect="auto")
    if cols <= 80:
        ax.set_xticks(range(cols), columns, rotation=60, ha="right")
    if rows <= 80:
        ax.set_yticks(range(rows), names)
    if rows <= 40 and cols <= 40:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                color = "white" if count > matrix.max() / 2 else "black"
                ax.text(j, i, str(count), ha="center", va="center", color=color)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_attention(att: AttentionLike, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Save spectrogram, attention map and top labels of ``att`` as a PNG; returns the path."""
    frames = att.features.shape[0]
    extent = (att.start, att.start + frames * att.frame_shift, 0, att.features.shape[1])
    fig = _figure(figsize=(10, 7.5), layout="constrained")
    ax_spec, ax_att, ax_top = fig.subplots(3, 1, height_ratios=(3, 3, 2))
    ax_spec.imshow(att.features.T, origin="lower", aspect="auto", extent=extent, cmap="magma")
    ax_spec.set(ylabel="mel bin", title=title or (att.path or "waveform"))
    ax_att.imshow(att.features.T, origin="lower", aspect="auto", extent=extent, cmap="gray")
    shown = att.map / att.map.max() if att.map.max() > 0 else att.map
    image = ax_att.imshow(shown.T, origin="lower", aspect="auto", extent=extent, cmap="inferno", alpha=0.6)
    ax_att.set(ylabel="mel bin", xlabel="time (s)", title=f"attention ({att.method}), scaled to its maximum")
    fig.colorbar(image, ax=ax_att, fraction=0.02)
    names = [name for name, _ in att.labels][::-1]
    ax_top.barh(names, [score for _, score in att.labels][::-1], color="tab:blue")
    ax_top.set(xlim=(0, 1), xlabel="probability", title="top labels")
    return _save(fig, path)


def plot_pretraining(rows: Sequence[Sequence[float]], path: str | os.PathLike) -> Path:
    """Pretraining curves as a PNG: the losses (left); the masked-patch accuracy and the linear
    probe's accuracy where it was scored (right). ``rows``: epoch, loss, discriminative loss,
    generative loss, masked-patch accuracy, lr, probe accuracy (NaN where not scored)."""
    data = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)  # (epochs, columns)
    epochs = data[:, 0]
    fig = _figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    left.plot(epochs, data[:, 2], "o-", label="discriminative (InfoNCE)")
    left.plot(epochs, data[:, 3], "o-", label="generative (MSE)")
    left.set_xlabel("epoch")
    left.legend()
    right.plot(epochs, data[:, 4], "o-", label="masked-patch accuracy")
    probed = ~np.isnan(data[:, 6])
    if probed.any():
        right.plot(epochs[probed], data[probed, 6], "s--", label="linear probe accuracy")
    right.set_xlabel("epoch")
    right.set_ylim(0, 1)
    right.legend()
    fig.tight_layout()
    return _save(fig, path)
