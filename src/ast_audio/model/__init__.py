"""The Audio Spectrogram Transformer: architecture (:mod:`.ast`), its config (:mod:`.config`),
labels and input contract (:mod:`.info`), structured patchout (:mod:`.patchout`) and position
embeddings (:mod:`.pos_embed`), the distillation students (:mod:`.students`). ``from ast_audio.model.ast import ASTModel`` keeps working."""

from .ast import ASTModel
from .config import PATCH, SIZES, ASTConfig, patch_grid
from .info import ModelInfo
from .patchout import draw_patchout
from .students import STUDENTS, student_config

__all__ = ["PATCH", "SIZES", "STUDENTS", "ASTConfig", "ASTModel", "ModelInfo", "draw_patchout", "patch_grid",
           "student_config"]  # fmt: skip
