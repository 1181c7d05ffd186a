"""Checkpoints: reading every published layout (original AST, SSAST, Hugging Face, ours),
the registry of published files and their download, writing the layouts back, export to
ONNX and TorchScript, and model cards.

Loading never executes code from a file: safetensors, or ``torch.load(weights_only=True)``.
Import the public names from here; inside the package, from their modules.
"""

from .hub import REGISTRY, PublishedCheckpoint, cache_dir, download, register_checkpoint, resolve
from .layouts import hf_to_original, original_to_hf
from .load import export_hf, export_original, load_model, save_checkpoint
from .read import RawCheckpoint, read_checkpoint

__all__ = [
    "REGISTRY", "PublishedCheckpoint", "RawCheckpoint", "cache_dir", "download", "export_hf", "export_original",
    "hf_to_original", "load_model", "original_to_hf", "read_checkpoint", "register_checkpoint", "resolve",
    "save_checkpoint",
]  # fmt: skip
