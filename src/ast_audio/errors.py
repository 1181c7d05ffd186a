"""One error family for everything a user can get wrong.

The library raises these; only the CLI turns them into a one-line message and an exit
status. Each carries the file (or source) at fault and the reason, so the message can
name both.
"""

from __future__ import annotations

import os


class AstAudioError(Exception):
    """Base class: ``str(err)`` is ``"<path>: <reason>"`` (or just the reason)."""

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        self.reason = reason
        self.path = None if path is None else os.fspath(path)
        message = f"{self.path}: {reason}" if self.path else reason
        # One line, whatever a file name or a datafile entry holds (a newline, a carriage return).
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


class ConfigError(AstAudioError, ValueError):
    """A model or run configuration that cannot work (bad size, stride, length...)."""


class CheckpointError(AstAudioError):
    """A checkpoint that cannot be read, is unsafe, or does not fit the model."""


class DownloadError(CheckpointError):
    """A published checkpoint that could not be fetched (offline, network, truncated)."""


class AudioError(AstAudioError):
    """An audio file that is missing, empty, undecodable or otherwise unusable."""


class DataError(AstAudioError):
    """A datafile, label table or dataset layout with an entry at fault."""


class ExportError(AstAudioError):
    """A model that could not be exported, or whose export does not match PyTorch."""
