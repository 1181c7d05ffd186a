"""The Audio Spectrogram Transformer: architecture (:mod:`.ast`) and position embeddings
(:mod:`.pos_embed`). ``from ast_audio.model.ast import ASTModel`` keeps working."""

from .ast import PATCH, SIZES, ASTConfig, ASTModel, ModelInfo, draw_patchout, patch_grid, patchout_drops

__all__ = ["PATCH", "SIZES", "ASTConfig", "ASTModel", "ModelInfo", "draw_patchout", "patch_grid", "patchout_drops"]
