"""Seeded, stratified validation splits and cross-validation folds of labelled clips
(the csv, hack and Hugging Face recipes share them)."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


def stratified_folds(labels: list[int], folds: int, seed: int) -> list[int]:
    """Each item's fold, 1..``folds``: per class (in order) the members shuffled by one seeded
    generator and dealt out in turn, so every fold gets its share of every class."""
    rng = np.random.default_rng(seed)
    fold, dealt = [0] * len(labels), 0
    for cls in sorted(set(labels)):
        members = [i for i, c in enumerate(labels) if c == cls]
        for j in rng.permutation(len(members)):
            fold[members[j]] = dealt % folds + 1
            dealt += 1
    return fold


def stratified_split(labels: list[int], fraction: float, seed: int) -> list[bool]:
    """Which items go to validation: per class, ``round(n * fraction)`` drawn at random
    (at least 1 if the class has 2 or more, never all); the same for the same input and seed."""
    rng = np.random.default_rng(seed)
    is_valid = [False] * len(labels)
    for cls in sorted(set(labels)):
        members = [i for i, c in enumerate(labels) if c == cls]
        n = len(members)
        take = min(max(round(n * fraction), 1 if n >= 2 else 0), n - 1)
        for j in rng.permutation(n)[:take]:
            is_valid[members[j]] = True
    return is_valid


def check_valid_fraction(valid_fraction: float) -> float:
    if not 0 < valid_fraction < 1:
        raise ConfigError(f"valid_fraction must be between 0 and 1 (exclusive), got {valid_fraction}")
    return float(valid_fraction)
