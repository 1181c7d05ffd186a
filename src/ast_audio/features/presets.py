"""What each dataset of the original recipes fixes about the model input.

One table, used by the feature path (target length, normalisation), by checkpoint
loading (what a published file was trained on) and by the recipes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetPreset:
    name: str
    label_table: str  # built-in label CSV (see labels.BUILTIN)
    target_length: int  # frames (10 ms hop) fed to the model
    mean: float  # of the un-normalised training filterbanks
    std: float
    multilabel: bool  # sigmoid scores (True) or softmax (False)
    sample_rate: int = 16000
    num_mel_bins: int = 128


PRESETS: dict[str, DatasetPreset] = {
    "audioset": DatasetPreset("audioset", "audioset", 1024, -4.2677393, 4.5689974, True),
    "esc50": DatasetPreset("esc50", "esc50", 512, -6.6268077, 5.358466, False),
    "speechcommands": DatasetPreset("speechcommands", "speechcommands", 128, -6.845978, 5.5654526, False),
}
