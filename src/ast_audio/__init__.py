"""ast-audio: the Audio Spectrogram Transformer as real software.

Public API::

    from ast_audio import AudioTagger, ASTModel, load_model, load_audio, fbank, InputContract, waveform_to_input
"""

from .audio.io import AudioInfo, audio_info, load_audio, resample
from .checkpoints.hub import REGISTRY
from .checkpoints.load import load_model, save_checkpoint  # also hands ASTModel its weight loaders
from .errors import (
    AstAudioError,
    AudioError,
    CheckpointError,
    ConfigError,
    DataError,
    DownloadError,
    ExportError,
)
from .features.contract import InputContract, file_to_input, normalize, pad_or_cut, waveform_to_input
from .features.kaldi import fbank
from .infer import AudioTagger, Embedding, Event, Prediction, Timeline, Window, plot_attention
from .model.ast import ASTModel
from .model.config import SIZES, ASTConfig
from .model.info import ModelInfo

__version__ = "0.1.0"
FeatureConfig = InputContract  # the older name, kept for code written against it

__all__ = [
    "ASTConfig",
    "ASTModel",
    "AstAudioError",
    "AudioError",
    "AudioInfo",
    "AudioTagger",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DownloadError",
    "Embedding",
    "Event",
    "ExportError",
    "FeatureConfig",
    "InputContract",
    "ModelInfo",
    "Prediction",
    "REGISTRY",
    "SIZES",
    "Timeline",
    "Window",
    "audio_info",
    "fbank",
    "file_to_input",
    "load_audio",
    "load_model",
    "normalize",
    "pad_or_cut",
    "plot_attention",
    "resample",
    "save_checkpoint",
    "waveform_to_input",
]
