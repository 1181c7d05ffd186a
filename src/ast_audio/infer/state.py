"""The typed state of a tagger call: its members, what it computes, and the accumulators that
collect the outputs of each model window on the way from batches back to recordings.

``Record`` (one recording) -> ``Segment`` (the whole of it, or a timeline window) ->
``Windows`` (one member's model windows in that segment: spans and outputs, in time
order). A ``Batch`` holds one member's windows waiting for the model, each with the
``Windows`` its outputs go to.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..base import runtime
from ..base.checks import check_number
from ..data.labels import LabelTable, match_labels
from ..errors import ConfigError, DataError
from ..features.contract import InputContract
from ..features.pipeline import batch_input, fit_waveform
from ..model.ast import ASTModel
from .frames import MAX_SECONDS, MIN_HOP
from .openset import OpenSet
from .windows import window_spans

log = logging.getLogger(__name__)

REDUCE = {"max": np.max, "mean": np.mean}  # aggregates over the model windows of a segment


def check_aggregate(aggregate: str) -> None:
    if aggregate not in REDUCE:
        raise ConfigError(f"unknown aggregate {aggregate!r}; choose one of {', '.join(REDUCE)}")


class Head(enum.Enum):
    """What a batch of model windows yields."""

    PROBS = "probs"  # probabilities [C] (sigmoid or softmax): the model's forward
    EMBEDDING = "embedding"  # pooled embedding [D] (mean of cls and dist): forward_tokens
    TOKENS = "tokens"  # pooled embedding and token grid [f, t, D]: forward_tokens


@dataclass(frozen=True)
class Plan:
    """What to compute and how recordings are cut."""

    head: Head
    hop: float | None = None  # seconds between model windows; None: half a window
    timeline: tuple[float, float] | None = None  # (window, hop) seconds of segments; None: one segment


@dataclass
class Member:
    """One checkpoint of the tagger with its feature settings and model-window length."""

    name: str
    model: ASTModel
    features: InputContract
    window: int  # samples of one model input
    compiled: dict[str, Callable] = field(default_factory=dict)  # "forward" / "tokens" -> torch.compile'd
    # int8 dynamic quantisation scales each linear layer's input by its whole tensor's range, so a
    # batched window's scores would depend on its batch-mates (the same file scored differently
    # alone, in a folder, on another torchrun rank). An int8 member runs its windows one at a time:
    # a window of 1212 tokens is a large matmul by itself, so little is lost.
    per_row: bool = False
    order: list[int] | None = None  # the columns of its outputs in the ensemble's label order (None: as they are)

    @classmethod
    def load(cls, index: int, source, device: torch.device, precision: str) -> Member:
        """Member ``index`` of a tagger from a :func:`~ast_audio.checkpoints.load.load_model` source or a model."""
        from ..checkpoints.load import load_model

        if isinstance(source, ASTModel):
            model, name = source.to(device).eval(), f"model {index}"
        else:
            model, name = load_model(source, device=device), os.fspath(source)
        if precision == "int8":  # a caller's model stays float
            model = runtime.quantize_int8(model, inplace=not isinstance(source, ASTModel))
        contract = model.input_contract  # what the checkpoint was trained with; one policy for what it lacks
        if not contract.resample:
            raise ConfigError(
                f"{name}: this model computes features at each file's own sample rate (trained with resample=false, "
                "the hack fork's way), which the tagger's fixed-length windows do not support; predict with "
                "`ast-audio recipe hack` or retrain with resample=true"
            )
        return cls(name, model, contract, contract.samples, per_row=precision == "int8")

    @property
    def rate(self) -> int:
        return self.features.sample_rate

    def hop(self, seconds: float | None) -> int:
        if seconds is not None:
            check_number(seconds, "hop", low=MIN_HOP, high=MAX_SECONDS, unit="seconds")
        return max(1, self.window // 2 if seconds is None else round(seconds * self.rate))

    def model_windows(
        self, num_samples: int, start: float, end: float, hop: float | None
    ) -> list[tuple[int, int]]:
        """``[a, b)`` sample spans of this member's model windows in the segment ``[start, end)`` seconds."""
        a, b = round(start * self.rate), min(num_samples, round(end * self.rate))
        return [(a + c0, a + c1) for c0, c1 in window_spans(max(1, b - a), self.window, self.hop(hop))]

    def detect_contract(self, samples: int) -> InputContract:
        """The input of a detection window of ``samples``: the model's own (padded as in
        training), or, for a window under half of it, one cut to the window's frames (at
        least one patch), which the model runs with its position grid cut (``any_length``)."""
        size, shift = self.features.window
        frames = max(16, 1 + max(0, samples - size) // shift)
        if 2 * frames >= self.features.target_length:
            return self.features
        return self.features.replace(target_length=frames)

    def function(self, head: Head, compile: bool, frames: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """The model (``Head.PROBS``: logits) or its ``forward_tokens``, through ``torch.compile``
        when asked (compiled on first use). An input of fewer ``frames`` than the model's
        runs eagerly with the position grid cut (``any_length``). An int8 member (``per_row``)
        runs a batch one window at a time, so a window's scores never depend on its batch-mates."""
        fn = self._function(head, compile, frames)
        if not self.per_row:
            return fn
        return lambda x: torch.cat([fn(x[i : i + 1]) for i in range(x.shape[0])])

    def _function(self, head: Head, compile: bool, frames: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
        if head is Head.PROBS and frames is not None and frames != self.model.config.input_tdim:
            model = self.model
            return lambda x: model(x, any_length=True)
        key = "forward" if head is Head.PROBS else "tokens"
        fn = self.model if key == "forward" else self.model.forward_tokens
        if not compile:
            return fn
        if key not in self.compiled:
            self.compiled[key] = torch.compile(fn, dynamic=False)
        return self.compiled[key]

    def align_to(self, reference: LabelTable) -> None:
        """Give this member's outputs in the order of ``reference`` (the first member's labels),
        matched by name (:func:`~ast_audio.data.labels.match_labels`); members that do not share
        their label names are refused."""
        info = self.model.info
        try:
            order = match_labels(reference, info.labels, info.label_ids, self.model.config.label_dim, self.name)
        except DataError as err:
            raise ConfigError(f"ensemble members disagree on their labels: {err}") from None
        self.order = None if order == list(range(len(order))) else order

    def model_input(
        self, waves: list[torch.Tensor], device: torch.device, contract: InputContract | None = None
    ) -> torch.Tensor:
        """Model input ``[B, T, F]`` of model windows (waveforms ``[samples]`` at :attr:`rate`) on ``device``.

        The tagger's one place from waveform to features (batches, detection frames and
        ``attention``): the batched pipeline of training and evaluation
        (:mod:`ast_audio.features.pipeline`) with the member's input contract (or ``contract``);
        a window shorter than the model's is zero-padded and its missing frames are zero, as
        ``waveform_to_input`` gives.
        """
        contract = contract or self.features
        fitted = [fit_waveform(wave, contract) for wave in waves]
        batch = torch.stack([w for w, _ in fitted]).to(device)  # (B, S)
        frames = torch.tensor([n for _, n in fitted])
        return batch_input(batch, frames, contract)  # (B, T, F)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities (sigmoid for a multi-label checkpoint, softmax for a single-label one),
        in the ensemble's label order."""
        logits = logits.float()
        probs = torch.sigmoid(logits) if self.model.info.multilabel else torch.softmax(logits, dim=-1)
        return probs if self.order is None else probs[..., self.order]


@dataclass
class Outputs:
    """Model outputs of a batch of ``n`` windows: those its :class:`Head` asks for."""

    probs: np.ndarray | None = None  # (n, C)
    pooled: np.ndarray | None = None  # (n, D)
    tokens: np.ndarray | None = None  # (n, f, t, D)
    logits: np.ndarray | None = None  # (n, C), with probs: what open-set scores read


@dataclass
class Windows:
    """The model windows of one member in one segment, in time order, and their outputs."""

    spans: list[tuple[float, float]] = field(default_factory=list)  # seconds
    probs: list[np.ndarray] = field(default_factory=list)  # [C] per window
    pooled: list[np.ndarray] = field(default_factory=list)  # [D] per window
    tokens: list[np.ndarray] = field(default_factory=list)  # [f, t, D] per window
    logits: list[np.ndarray] = field(default_factory=list)  # [C] per window

    def add(self, out: Outputs, j: int) -> None:
        """Row ``j`` of a batch's outputs: the next window's."""
        pairs = (self.probs, out.probs), (self.pooled, out.pooled), (self.tokens, out.tokens), (self.logits, out.logits)
        for rows, new in pairs:
            if new is not None:
                rows.append(new[j])


@dataclass
class Segment:
    """A stretch of a recording scored as one (the whole of it, or a timeline window)."""

    start: float
    end: float
    members: list[Windows]  # one per member

    def scores(self, aggregate: str) -> np.ndarray:
        """Each member's window probabilities aggregated over time, then the members averaged."""
        per_member = [REDUCE[aggregate](np.stack(w.probs), axis=0) for w in self.members]  # (C,) each
        return np.mean(per_member, axis=0) if len(per_member) > 1 else per_member[0]

    def known(self, open_set: OpenSet, scores: np.ndarray, aggregate: str) -> tuple[bool, float | None]:
        """Whether the segment is one of the classes, and its knownness (``None`` when no threshold
        was calibrated): the first member's (the one the open set was calibrated on) over its
        model windows, aggregated like the scores."""
        score = float(REDUCE[aggregate](open_set.window_scores(np.stack(self.members[0].logits))))
        known = bool(open_set.known(score, int(np.argmax(scores))))
        return known, score if open_set.threshold is not None else None


@dataclass
class Record:
    """A recording in flight."""

    path: str | None
    duration: float
    segments: list[Segment]


@dataclass
class Batch:
    """One member's model windows waiting for the model, each with the accumulator it goes to."""

    member: Member
    waves: list[torch.Tensor] = field(default_factory=list)  # [samples] each
    into: list[Windows] = field(default_factory=list)

    def add(self, wave: torch.Tensor, into: Windows) -> None:
        self.waves.append(wave)
        self.into.append(into)

    def clear(self) -> None:
        self.waves.clear()
        self.into.clear()
