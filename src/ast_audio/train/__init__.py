"""Training and evaluation: settings (:mod:`.config`), the step (:mod:`.step`), the run
(:mod:`.loop`), evaluation of checkpoints (:mod:`.evaluate`) and the metrics of the original
(:mod:`.metrics`)."""

from .config import TrainConfig, contract_of, patchout_drops
from .loop import Run, RunState, TrainingError, train
from .step import bucket_length, parameter_groups, train_step

__all__ = ["Run", "RunState", "TrainConfig", "TrainingError", "bucket_length", "contract_of", "parameter_groups",
           "patchout_drops", "train", "train_step"]  # fmt: skip
