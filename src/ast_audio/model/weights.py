"""The model's weight loaders, handed over by the checkpoint code so that the model file never
imports it (arrows point down; see the notes of :mod:`ast_audio.model.ast`)."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError

__all__ = ["provide_weights", "weights"]

# Filled by ast_audio.checkpoints.load when it is imported (see the notes of ast_audio.model.ast).
_WEIGHTS: dict[str, Callable] = {}


def provide_weights(*, init_trunk: Callable, load: Callable) -> None:
    """Hand the model its weight loaders: ``init_trunk(model, source, kind)`` initialises the
    trunk in place (``kind`` ``"imagenet"`` or ``"audioset"``), ``load(cls, source, **adapt)``
    builds a whole model from a checkpoint. Called by :mod:`ast_audio.checkpoints.load` on import."""
    _WEIGHTS.update(init_trunk=init_trunk, load=load)


def weights(name: str) -> Callable:
    if name not in _WEIGHTS:
        raise ConfigError(
            "pretrained weights need the checkpoint code: import ast_audio (or ast_audio.checkpoints.load) first"
        )
    return _WEIGHTS[name]
