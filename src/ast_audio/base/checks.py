"""Type and range checks of values from users: configs, JSON, TOML, command-line flags,
query parameters and keyword arguments, where ``True`` is an ``int`` to Python but never a
count or a number to a user, and ``nan`` or ``inf`` parse as floats but are never a
setting.

:func:`check_number` is the one rule for a numeric option (finite, in its range); the
library calls it where a value enters (:class:`~ast_audio.infer.frames.FrameGrid`,
:class:`~ast_audio.infer.events.PostProcessing`...), :func:`number_arg` wraps it as an
``argparse`` ``type=`` so a flag is refused where it is parsed with the same words, and
the service refuses a query parameter with them too.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ..errors import ConfigError

__all__ = ["check_number", "checked_arg", "is_int", "is_number", "number_arg"]


def is_int(value: object) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An integer or a float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _range(low, high, above) -> str:
    if above is not None:
        return ("positive" if above == 0 else f"above {above:g}") + ("" if high is None else f" and at most {high:g}")
    if low is not None and high is not None:
        return f"in [{low:g}, {high:g}]"
    if low is not None:
        return f"at least {low:g}"
    return f"at most {high:g}"


def check_number(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    integer: bool = False,
    unit: str = "",
) -> float | int:
    """``value`` if it is a finite number (an integer where ``integer``) with ``low <= value
    <= high`` and ``value > above`` (each bound optional); else :class:`ConfigError` naming
    ``name``, the range and the value (``unit``: words after the range, ``"seconds"``)."""
    kind = "an integer" if integer else "a number"
    numeric = is_int(value) or _numpy_number(value, "iu") if integer else is_number(value) or _numpy_number(value, "iuf")
    if not numeric:
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    if not is_int(value) and not math.isfinite(value):  # (an int is finite, and may be too large for a float)
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if (low is not None and value < low) or (high is not None and value > high) or (above is not None and value <= above):
        words = _range(low, high, above) + (f" {unit}" if unit else "")
        raise ConfigError(f"{name} must be {words}, got {value:g}" if isinstance(value, float) else
                          f"{name} must be {words}, got {value}")  # fmt: skip
    return value


def _numpy_number(value: object, kinds: str) -> bool:
    """A numpy scalar of a dtype kind in ``kinds`` (``np.float32(0.5)``, ``np.int64(3)``), as the
    library's own results hand back."""
    return type(value).__module__ == "numpy" and getattr(getattr(value, "dtype", None), "kind", "") in kinds


def number_arg(
    *, low: float | None = None, high: float | None = None, above: float | None = None, integer: bool = False,
    unit: str = "",
) -> Callable[[str], float | int]:  # fmt: skip
    """An ``argparse`` ``type=`` that parses a flag's text and checks it with :func:`check_number`:
    a bad value is a usage error (exit 2) naming the flag, before any work."""

    def parse(text: str) -> float | int:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if integer else 'a number'}, got {text!r}") from None
        try:
            return check_number(value, "the value", low=low, high=high, above=above, integer=integer, unit=unit)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix("the value ")) from None

    parse.__name__ = "integer" if integer else "number"  # argparse's "invalid <name> value" wording
    return parse


def checked_arg(check: Callable[[float], float]) -> Callable[[str], float]:
    """An ``argparse`` ``type=`` that parses a number and hands it to a library function's own
    ``check`` (which raises :class:`ConfigError`): the flag is refused where it is parsed, in the
    words and the range the library uses for the same setting from a config or the API."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            return check(value)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = "number"
    return parse
