"""Type checks of values read from configs, JSON and TOML, where ``True`` is an ``int`` to
Python but never a count or a number to a user."""

from __future__ import annotations

__all__ = ["is_int", "is_number"]


def is_int(value: object) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An integer or a float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)
