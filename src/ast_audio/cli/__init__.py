"""The ``ast-audio`` command: one module per command group, assembled in :mod:`.main`."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
