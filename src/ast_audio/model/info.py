"""What a checkpoint says beyond the architecture: its labels and its input contract.

:class:`ModelInfo` holds the :class:`~ast_audio.features.contract.InputContract` itself, the
one type that training writes and evaluation, the tagger, recipes, export and the service
read (``model.info.contract``, or ``model.input_contract``). Its input size is the
architecture's (:class:`~ast_audio.model.config.ASTConfig`); the model keeps the two equal.

Checkpoints written before the contract was one object keep its settings as flat keys
(``dataset_mean``, ``multilabel``, ``sample_rate``...): :meth:`ModelInfo.from_dict` and the
constructor read them, and ``info.dataset_mean``/``dataset_std``/``multilabel``/``thresholds``
remain as views of the contract.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from ..features.contract import InputContract
from .config import ASTConfig

__all__ = ["ModelInfo", "describe", "missing_statistics"]

log = logging.getLogger(__name__)

# The flat keys of earlier checkpoints and the contract field each one is.
FLAT_KEYS = {"dataset_mean": "mean", "dataset_std": "std", "multilabel": "activation", "sample_rate": "sample_rate",
             "mono": "mono", "frame_length": "frame_length", "frame_shift": "frame_shift", "resample": "resample",
             "thresholds": "thresholds"}  # fmt: skip


def _activation(multilabel: bool) -> str:
    return "sigmoid" if multilabel else "softmax"


@dataclass(init=False)
class ModelInfo:
    """A checkpoint's labels and input contract.

    ``statistics`` says whether the contract's mean/std were recorded; when they were not,
    AudioSet's stand in (:func:`missing_statistics`). The flat keys of earlier checkpoints
    (``dataset_mean=...``, ``multilabel=...``) are accepted as keyword arguments."""

    labels: list[str] | None  # display names, in output order
    label_ids: list[str] | None  # e.g. AudioSet mids, in output order
    contract: InputContract
    statistics: bool
    extra: dict

    def __init__(
        self,
        labels: list[str] | None = None,
        label_ids: list[str] | None = None,
        contract: InputContract | None = None,
        statistics: bool | None = None,
        extra: dict | None = None,
        **flat: object,
    ):
        unknown = sorted(set(flat) - set(FLAT_KEYS))
        if unknown:
            raise TypeError(f"ModelInfo got unexpected keyword arguments: {', '.join(unknown)}")
        changes = {FLAT_KEYS[k]: v for k, v in flat.items() if v is not None or k == "thresholds"}
        if "activation" in changes:
            changes["activation"] = _activation(bool(changes["activation"]))
        statistics = (contract is not None if statistics is None else statistics) or "mean" in changes
        self.labels, self.label_ids, self.extra = labels, label_ids, dict(extra or {})
        self.contract = (contract or InputContract()).replace(**changes)
        self.statistics = statistics

    def to_dict(self) -> dict:
        return {"labels": self.labels, "label_ids": self.label_ids, "contract": self.contract.to_dict(),
                "statistics": self.statistics, "extra": self.extra}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> ModelInfo:
        """The info of :meth:`to_dict`, or of an earlier checkpoint's flat keys (others are ignored)."""
        flat = {k: v for k, v in data.items() if k in FLAT_KEYS}
        contract = data.get("contract")
        return cls(labels=data.get("labels"), label_ids=data.get("label_ids"),
                   contract=None if contract is None else InputContract.from_dict(contract),
                   statistics=data.get("statistics"), extra=data.get("extra"), **flat)  # fmt: skip

    def fit(self, config: ASTConfig) -> ModelInfo:
        """This info with the contract's input size set to the architecture's."""
        size = {"num_mel_bins": config.input_fdim, "target_length": config.input_tdim}
        if all(getattr(self.contract, k) == v for k, v in size.items()):
            return self
        return replace(self, contract=self.contract.replace(**size))

    # Views of the contract under the names of the flat keys.
    @property
    def dataset_mean(self) -> float | None:
        return self.contract.mean if self.statistics else None

    @dataset_mean.setter
    def dataset_mean(self, value: float) -> None:
        self.contract, self.statistics = self.contract.replace(mean=value), True

    @property
    def dataset_std(self) -> float | None:
        return self.contract.std if self.statistics else None

    @dataset_std.setter
    def dataset_std(self, value: float) -> None:
        self.contract, self.statistics = self.contract.replace(std=value), True

    @property
    def multilabel(self) -> bool:
        """Sigmoid scores (True) or softmax (False)."""
        return self.contract.activation == "sigmoid"

    @multilabel.setter
    def multilabel(self, value: bool) -> None:
        self.contract = self.contract.replace(activation=_activation(value))

    @property
    def thresholds(self) -> list[float] | None:
        """Per-class event/decision thresholds (``ast-audio calibrate``)."""
        return None if self.contract.thresholds is None else list(self.contract.thresholds)

    @thresholds.setter
    def thresholds(self, value: list[float] | None) -> None:
        self.contract = self.contract.replace(thresholds=value)


def missing_statistics(info: ModelInfo, source: object = None) -> ModelInfo:
    """The one policy for a checkpoint without normalisation statistics: use AudioSet's
    (what every published AST was trained with) and say so once, naming the values."""
    if info.statistics:
        return info
    default = InputContract()
    where = f"{source}: " if source is not None else ""
    log.warning(
        "%sthe checkpoint records no normalisation statistics; using AudioSet's (mean %s, std %s). "
        "Pass the statistics it was trained with if they differ", where, default.mean, default.std,
    )  # fmt: skip
    return replace(info, contract=info.contract.replace(mean=default.mean, std=default.std), statistics=True)


def describe(config: ASTConfig, parameters: int) -> str:
    """One line about a model, what its constructor logs with ``verbose=True``."""
    f_dim, t_dim = config.grid
    return (f"AST {config.model_size}: {config.depth} layers, strides {config.fstride}/{config.tstride}, "
            f"{f_dim}x{t_dim} patches ({f_dim * t_dim}), {config.label_dim} outputs, {parameters / 1e6:.1f}M parameters")  # fmt: skip
