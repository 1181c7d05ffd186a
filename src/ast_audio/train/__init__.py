"""Training and evaluation: settings (:mod:`.config`), the run (:mod:`.loop`), evaluation of
checkpoints (:mod:`.evaluate`) and the metrics of the original (:mod:`.metrics`)."""

from .config import TrainConfig
from .loop import Run, RunState, TrainingError, train

__all__ = ["Run", "RunState", "TrainConfig", "TrainingError", "train"]
