"""ast-audio: the Audio Spectrogram Transformer as real software.

Public API::

    from ast_audio import ASTModel, load_model
"""

from .checkpoints import REGISTRY, load_model, save_checkpoint
from .errors import AstAudioError, AudioError, CheckpointError, ConfigError, DownloadError
from .model import SIZES, ASTConfig, ASTModel, ModelInfo

__version__ = "0.1.0"

__all__ = [
    "ASTConfig",
    "ASTModel",
    "AstAudioError",
    "AudioError",
    "CheckpointError",
    "ConfigError",
    "DownloadError",
    "ModelInfo",
    "REGISTRY",
    "SIZES",
    "load_model",
    "save_checkpoint",
]
