"""The HEAR 2021 API (Turian et al., "HEAR: Holistic Evaluation of Audio Representations").

HEAR's evaluation kit, like PaSST's ``hear21passt`` and EfficientAT's ``EfficientAT_HEAR``,
imports a module that offers three functions::

    from ast_audio import hear
    model = hear.load_model("runs/esc50/best.safetensors")        # any load_model source; "" = AudioSet 10/10
    scene = hear.get_scene_embeddings(audio, model)              # [n_sounds, scene_embedding_size]
    emb, ts = hear.get_timestamp_embeddings(audio, model)       # [n_sounds, n_times, D], [n_sounds, n_times] (ms)

``audio`` is a float tensor ``[n_sounds, n_samples]`` at ``model.sample_rate`` (the
checkpoint's rate: 16 kHz for every AST), on the model's device; the outputs are float32
tensors on the same device.

**Timestamps come from the patch columns.** The features of a whole sound are cut into
model windows of ``input_tdim`` frames that follow each other without overlap
(``t_dim * tstride`` frames apart, so the columns of consecutive windows continue the same
regular grid; the last one is padded as training pads a short clip). Each column of
16x16 patches is one timestamp embedding: the mean of its patch outputs over the
frequency rows (:meth:`~ast_audio.model.ast.ASTModel.token_grid`). Column ``k`` covers frames
``k*tstride .. k*tstride+15``, and its timestamp is their centre in milliseconds,
``k * tstride * frame_shift + (15 * frame_shift + frame_length) / 2``: every 100 ms from
87.5 ms for tstride 10 (50 ms for tstride 5). Only columns whose 16 frames lie in the
sound are returned (at least one).

**The scene embedding** is AST's pooled token (the mean of the ``cls`` and ``dist``
outputs, what ``ast-audio embed`` gives), averaged over the same windows; for a sound
within one model window it equals ``AudioTagger.embed``.

Both sizes are the model's width (192 tiny, 384 small, 768 base).
"""

from __future__ import annotations

import math
import os

import torch

from ..checkpoints.hub import DEFAULT_AUDIOSET
from ..checkpoints.load import load_model as _load_checkpoint
from ..errors import ConfigError
from ..features.contract import waveform_to_input
from ..model.ast import PATCH, ASTModel

__all__ = ["HearModel", "get_scene_embeddings", "get_timestamp_embeddings", "load_model"]


class HearModel(torch.nn.Module):
    """An :class:`ASTModel` with the attributes HEAR asks for; ``batch_size`` model windows
    go through at once."""

    def __init__(self, model: ASTModel, batch_size: int = 16):
        super().__init__()
        contract = model.input_contract
        if not contract.resample:
            raise ConfigError("the model was trained at each file's own sample rate (resample=false); HEAR needs one rate")
        self.ast = model.eval()
        self.contract = contract
        self.batch_size = batch_size
        self.sample_rate: int = int(contract.sample_rate)
        self.scene_embedding_size: int = model.config.embed_dim
        self.timestamp_embedding_size: int = model.config.embed_dim

    @property
    def hop_ms(self) -> float:
        """Milliseconds between timestamps: one patch column, ``tstride`` frames."""
        return self.ast.config.tstride * self.contract.frame_shift

    def timestamps(self, columns: int) -> torch.Tensor:
        """The centres of the first ``columns`` patch columns, in milliseconds."""
        c = self.contract
        first = ((PATCH - 1) * c.frame_shift + c.frame_length) / 2
        return torch.arange(columns, dtype=torch.float64) * self.hop_ms + first


def load_model(model_file_path: str | os.PathLike = "", *, device: str | torch.device | None = None) -> HearModel:
    """HEAR's ``load_model``: any source :func:`ast_audio.load_model` takes (a file, a Hugging
    Face folder, a published name); an empty path is the published AudioSet model
    (``audioset_10_10_0.4593``, downloaded once)."""
    source = model_file_path or DEFAULT_AUDIOSET
    return HearModel(_load_checkpoint(source, device=device))


def _columns(model: HearModel, samples: int) -> int:
    """Patch columns whose 16 frames lie in a sound of ``samples`` samples (at least one)."""
    size, shift = model.contract.window
    frames = 0 if samples < size else 1 + (samples - size) // shift
    return max(1, (max(frames, PATCH) - PATCH) // model.ast.config.tstride + 1)


def _check_audio(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    if not isinstance(audio, torch.Tensor) or audio.dim() != 2 or not audio.is_floating_point():
        got = f"{audio.dtype} {list(audio.shape)}" if isinstance(audio, torch.Tensor) else type(audio).__name__
        raise ConfigError(f"HEAR audio must be a float tensor [n_sounds, n_samples], got {got}")
    return audio


@torch.no_grad()
def _windows(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Token grids and pooled tokens of the model windows: ``(n, W*t_dim, D)``, ``(n, W, D)``, columns."""
    cfg = model.ast.config
    t_dim = cfg.grid[1]
    columns = _columns(model, audio.shape[1])
    n_windows = math.ceil(columns / t_dim)
    step = t_dim * cfg.tstride  # frames between windows: the columns continue one regular grid
    total = (n_windows - 1) * step + cfg.input_tdim
    weight = model.ast.v.patch_embed.proj.weight
    x = waveform_to_input(audio.to(weight.device, torch.float32), model.contract.replace(target_length=total))
    x = torch.stack([x[:, w * step : w * step + cfg.input_tdim] for w in range(n_windows)], dim=1)
    x = x.reshape(-1, cfg.input_tdim, cfg.input_fdim).to(weight.dtype)  # (n*W, T, F)
    grids, pooled = [], []
    for batch in x.split(model.batch_size):
        tokens = model.ast.forward_tokens(batch)  # (b, 2 + f*t, D)
        pooled.append(model.ast.pool(tokens))
        grid = tokens[:, 2:].reshape(batch.shape[0], cfg.grid[0], t_dim, -1)  # (b, f, t, D)
        grids.append(grid.mean(dim=1))  # (b, t, D)
    n = audio.shape[0]
    columns_out = torch.cat(grids).reshape(n, n_windows * t_dim, -1)
    return columns_out, torch.cat(pooled).reshape(n, n_windows, -1), columns


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeddings [n_sounds, n_times, D], timestamps [n_sounds, n_times])``: one embedding
    per patch column, timestamps in milliseconds (the column centres; see the module notes)."""
    audio = _check_audio(audio, model)
    grid, _, columns = _windows(audio, model)
    stamps = model.timestamps(columns).to(torch.float32).to(audio.device)
    return grid[:, :columns].float().to(audio.device), stamps.expand(audio.shape[0], -1).contiguous()


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """``[n_sounds, D]``: AST's pooled token averaged over the model windows of each sound."""
    audio = _check_audio(audio, model)
    _, pooled, _ = _windows(audio, model)
    return pooled.mean(dim=1).float().to(audio.device)
