"""The model card (``README.md``) that ``ast-audio convert ... --format hf`` writes beside the
Hugging Face files, so the folder is ready to upload.

It says what a user of the hub folder needs and cannot see in ``config.json``: the labels,
the input contract (rate, mono policy, frames, bins, statistics, score activation), the
architecture, and, when the converted file sits in a training run folder (``EXP/`` or
``EXP/models/``, with the ``config.json`` that :func:`ast_audio.train.loop.train` writes), the
training settings and results of that run (``result.csv``: best and last epoch;
``wa_result.csv``, ``eval_result.csv`` and a recipe's ``recipe_result.json`` when present).
The card starts with the hub's YAML metadata (``library_name: transformers``,
``pipeline_tag: audio-classification``). Nothing of the run is invented: a number that no
file holds is not on the card.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..base.checks import is_number
from ..base.fileio import atomic_write
from ..model.ast import ASTModel

RESULT_COLUMNS = ("mAUC", "avg precision", "avg recall", "d-prime", "train loss", "valid loss")
SETTINGS = (
    "model_size", "depth", "fstride", "tstride", "audio_length", "num_mel_bins", "imagenet_pretrain",
    "audioset_pretrain", "lr", "n_epochs", "batch_size", "loss", "metrics", "freqm", "timem", "mixup", "noise",
    "bal", "wa", "warmup", "lrscheduler_start", "lrscheduler_step", "lrscheduler_decay", "seed",
)  # fmt: skip


def run_folder(source: str | os.PathLike) -> Path | None:
    """The training run a checkpoint file belongs to (``EXP`` of ``EXP/models/x.safetensors``), if any."""
    path = Path(source)
    if not path.is_file():
        return None
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.json").is_file() and (folder / "result.csv").is_file():
            try:
                if "config" in json.loads((folder / "config.json").read_text(encoding="utf-8")):
                    return folder
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                return None
    return None


def _table(header: tuple[str, str], rows) -> list[str]:
    return [f"| {header[0]} | {header[1]} |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)]


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _run_sections(run: Path) -> list[str]:
    settings = json.loads((run / "config.json").read_text(encoding="utf-8"))["config"]
    metric = settings.get("metrics", "mAP")
    lines = ["## Training", "", f"Settings of the run in `{run.name}` (its `config.json`):", ""]
    lines += _table(("setting", "value"), [(k, f"`{settings[k]}`") for k in SETTINGS if k in settings])
    rows = np.loadtxt(run / "result.csv", delimiter=",", ndmin=2)
    best = int(rows[:, 0].argmax())
    lines += ["", "## Results", "", f"Validation after each of {len(rows)} epochs (`result.csv`):", ""]
    picks = [("best", best), ("last", len(rows) - 1)] if best != len(rows) - 1 else [("best = last", best)]
    lines += [f"| epoch | {metric} | " + " | ".join(RESULT_COLUMNS) + " |", "|" + " --- |" * (2 + len(RESULT_COLUMNS))]
    for name, i in picks:
        lines.append(f"| {i + 1} ({name}) | " + " | ".join(f"{v:.4f}" for v in rows[i, :7]) + " |")
    if (run / "wa_result.csv").is_file():
        wa = np.loadtxt(run / "wa_result.csv", delimiter=",", ndmin=1)
        lines += ["", f"Weight-averaged model (`wa_result.csv`): mAP {wa[0]:.4f}, mAUC {wa[1]:.4f}."]
    if (run / "eval_result.csv").is_file():
        ev = np.loadtxt(run / "eval_result.csv", delimiter=",", ndmin=1)
        lines += ["", f"Best model on the evaluation set (`eval_result.csv`): accuracy {ev[2]:.4f}, mAUC {ev[3]:.4f} "
                      f"(validation: {ev[0]:.4f}, {ev[1]:.4f})."]  # fmt: skip
    recipe = run / "recipe_result.json"
    if recipe.is_file():
        result = json.loads(recipe.read_text(encoding="utf-8"))
        numbers = [(k, _number(v)) for k, v in result.items() if is_number(v)]
        if numbers:
            lines += ["", f"Recipe `{result.get('recipe', '?')}` (`recipe_result.json`):", ""]
            lines += _table(("result", "value"), numbers)
    return lines + [""]


def model_card(model: ASTModel, source: str | os.PathLike, name: str = "") -> str:
    """The card's Markdown for ``model`` converted from ``source``."""
    cfg, info, contract = model.config, model.info, model.input_contract
    labels = info.labels or [f"LABEL_{i}" for i in range(cfg.label_dim)]
    seconds = (contract.samples / contract.sample_rate) if contract.resample else None
    activation = "sigmoid (multi-label)" if contract.activation == "sigmoid" else "softmax (single-label)"
    lines = [
        "---", "library_name: transformers", "pipeline_tag: audio-classification",
        "tags:", "- audio", "- audio-classification", "- audio-spectrogram-transformer", "- ast-audio", "---", "",
        f"# {name or Path(source).stem}", "",
        f"An Audio Spectrogram Transformer (AST; Gong, Chung and Glass, 2021) with {cfg.label_dim} outputs, "
        f"converted by ast-audio from `{Path(source).name}`. The files load with transformers' "
        "`ASTForAudioClassification.from_pretrained` and with `ast_audio.load_model`.", "",
        "## Input", "",
        *_table(("", "value"), [
            ("sample rate", f"{contract.sample_rate} Hz" if contract.resample else "each file's own"),
            ("channels", f"{contract.mono} of the channels"),
            ("features", f"Kaldi fbank, {contract.num_mel_bins} mel bins, {contract.frame_length} ms frames every "
                         f"{contract.frame_shift} ms"),
            ("length", f"{contract.target_length} frames" + (f" ({seconds:.3f} s)" if seconds else "")
             + ", shorter clips padded"),
            ("normalisation", f"(x - {contract.mean}) / (2 x {contract.std})"),
            ("scores", activation),
        ]),  # fmt: skip
        "", "## Model", "",
        *_table(("", "value"), [
            ("size", f"{cfg.model_size}, {cfg.depth} blocks, width {cfg.embed_dim}"),
            ("patches", f"16x16, strides {cfg.fstride}/{cfg.tstride}, grid {cfg.grid[0]}x{cfg.grid[1]}"),
            ("parameters", f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M"),
        ]),  # fmt: skip
        "", f"## Labels ({len(labels)})", "",
        *_table(("id", "label"), ((i, name.replace("|", "\\|")) for i, name in enumerate(labels))), "",
    ]
    run = run_folder(source)
    if run is not None:
        lines += _run_sections(run)
    lines += [
        "## Use", "", "```python", "from transformers import ASTFeatureExtractor, ASTForAudioClassification", "",
        'model = ASTForAudioClassification.from_pretrained("PATH")',
        'extractor = ASTFeatureExtractor.from_pretrained("PATH")', "",
        "from ast_audio import AudioTagger  # the same features as training, long files in windows",
        'print(AudioTagger("PATH").predict("clip.wav", top_k=3).labels)', "```", "",
    ]
    return "\n".join(lines)


def write_model_card(model: ASTModel, folder: str | os.PathLike, source: str | os.PathLike) -> Path:
    """``folder/README.md`` (atomically): :func:`model_card` named after the folder."""
    folder = Path(folder)
    text = model_card(model, source, folder.name)
    return atomic_write(folder / "README.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
