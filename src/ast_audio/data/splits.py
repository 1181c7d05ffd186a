"""Seeded, stratified validation splits and cross-validation folds of labelled clips (the csv,
hack and Hugging Face recipes share them), and their grouped forms (the folder recipe, and the
clip-statistics fit's cross-validation), which keep related clips on one side."""

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


# --------------------------------------------------------------------------- grouped (the folder recipe)
# A group is a set of related clips (takes of one sound, one recording session): it goes to one
# side of a split, or to one fold, whole. Each group is stratified by its most common class
# (the lowest class on ties).


def _groups(labels: list[int], groups: list[str]) -> dict[int, list[list[int]]]:
    """Per class (sorted), its groups' member indices, the groups in sorted key order."""
    members: dict[str, list[int]] = {}
    for i, key in enumerate(groups):
        members.setdefault(key, []).append(i)
    by_class: dict[int, list[list[int]]] = {}
    for key in sorted(members):
        counts: dict[int, int] = {}
        for i in members[key]:
            counts[labels[i]] = counts.get(labels[i], 0) + 1
        stratum = min(counts, key=lambda c: (-counts[c], c))
        by_class.setdefault(stratum, []).append(members[key])
    return dict(sorted(by_class.items()))


def grouped_split(labels: list[int], groups: list[str], fraction: float, seed: int) -> list[bool]:
    """Which items go to validation, whole groups at a time: per class, its groups in an order
    drawn by one seeded generator (class after class), each taken while it brings the class's
    validation count closer to ``round(n * fraction)`` clips; at least one group when the class
    has two or more, never all of them (a class of one group stays in training)."""
    rng = np.random.default_rng(seed)
    is_valid = [False] * len(labels)
    for class_groups in _groups(labels, groups).values():
        n = sum(len(g) for g in class_groups)
        target = round(n * fraction)
        if len(class_groups) >= 2:
            target = max(target, 1)
        order = [class_groups[j] for j in rng.permutation(len(class_groups))]
        chosen: list[list[int]] = []
        count = 0
        for group in order:
            if count >= target:
                break
            if abs(count + len(group) - target) < target - count:
                chosen.append(group)
                count += len(group)
        if not chosen and len(order) >= 2:
            chosen.append(min(order, key=len))
        if len(chosen) == len(order):
            chosen.pop()
        for group in chosen:
            for i in group:
                is_valid[i] = True
    return is_valid


def grouped_folds(labels: list[int], groups: list[str], folds: int, seed: int) -> list[int]:
    """Each item's fold, 1..``folds``, whole groups at a time: per class, its groups in an order
    drawn by one seeded generator, largest first (a stable sort of that order), each to the fold
    holding the fewest clips of the class so far (ties: the fewest clips in all, then the lowest fold)."""
    rng = np.random.default_rng(seed)
    fold = [0] * len(labels)
    total = [0] * folds
    for class_groups in _groups(labels, groups).values():
        order = sorted((class_groups[j] for j in rng.permutation(len(class_groups))), key=len, reverse=True)
        mine = [0] * folds
        for group in order:
            k = min(range(folds), key=lambda f: (mine[f], total[f], f))
            mine[k] += len(group)
            total[k] += len(group)
            for i in group:
                fold[i] = k + 1
    return fold
