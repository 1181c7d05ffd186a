"""The student presets of ``ast-audio distill``: small ASTs that run anywhere.

Each preset is a trunk width (a :data:`~ast_audio.model.config.SIZES` entry), a depth and
a pooling; every student cuts its input into non-overlapping 16x16 patches (strides 16:
a 10-s, 128-bin input is 8 x 64 = 512 patches, where AST's strides of 10 make 1,212), and
pools the patch tokens (``mean``: what a small model learns fastest from, see
:data:`~ast_audio.model.config.POOLS`). Parameters and FLOPs are computed from the
architecture (:func:`student_cost`), never typed in; :data:`STUDENTS` lists the presets
smallest first, the order ``distill --help`` shows them in.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .ast import ASTModel
from .config import PATCH, ASTConfig

__all__ = ["STUDENTS", "StudentPreset", "student_config", "student_cost"]

STRIDE = PATCH  # non-overlapping patches


@dataclass(frozen=True)
class StudentPreset:
    model_size: str  # the trunk width and heads (model.config.SIZES)
    depth: int
    pool: str = "mean"


# Smallest first (tests/test_distill.py checks the order against the computed parameters).
STUDENTS: dict[str, StudentPreset] = {
    "tiny2": StudentPreset("tiny224", 2),
    "tiny4": StudentPreset("tiny224", 4),
    "tiny": StudentPreset("tiny224", 12),
    "small6": StudentPreset("small224", 6),
    "small": StudentPreset("small224", 12),
}


def student_config(name: str, label_dim: int, input_fdim: int = 128, input_tdim: int = 1024,
                   clip_stats: bool = False) -> ASTConfig:  # fmt: skip
    """The architecture of student ``name`` for ``label_dim`` classes and this input size
    (``clip_stats``: with the clip-statistics branch, :mod:`ast_audio.model.clipstats`)."""
    if name not in STUDENTS:
        raise ConfigError(f"unknown student {name!r}; choose one of {', '.join(STUDENTS)}")
    preset = STUDENTS[name]
    return ASTConfig(label_dim=label_dim, fstride=STRIDE, tstride=STRIDE, input_fdim=input_fdim,
                     input_tdim=input_tdim, model_size=preset.model_size, depth=preset.depth,
                     pool=preset.pool, clip_stats=clip_stats)  # fmt: skip


def student_cost(name: str, label_dim: int = 527, input_fdim: int = 128, input_tdim: int = 1024) -> tuple[int, int]:
    """``(parameters, FLOPs of one forward pass)`` of student ``name`` on one input of this size
    (the defaults: a 10-s AudioSet clip, 527 classes), from the model itself
    (:meth:`ASTModel.flops`: the matmuls, counted as two FLOPs per multiply-accumulate)."""
    model = ASTModel.from_config(student_config(name, label_dim, input_fdim, input_tdim))
    return sum(p.numel() for p in model.parameters()), model.flops()
