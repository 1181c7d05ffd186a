"""Training and evaluation: settings (:mod:`.config`), the step (:mod:`.step`), the run
(:mod:`.loop`), distillation (:mod:`.distill`, :mod:`.teacher_store`), evaluation of checkpoints (:mod:`.evaluate`) and the metrics of the original
(:mod:`.metrics`)."""

from .config import TrainConfig, contract_of, patchout_drops
from .distill import DistillConfig, distill
from .loop import Run, RunState, TrainingError, train
from .step import bucket_length, parameter_groups, train_step

__all__ = ["DistillConfig", "Run", "RunState", "TrainConfig", "TrainingError", "bucket_length", "contract_of",
           "distill", "parameter_groups", "patchout_drops", "train", "train_step"]  # fmt: skip
