"""The ``ast-audio`` command: thin subcommands over the library.

Library errors (:class:`AstAudioError`) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..base import allocator
from ..errors import AstAudioError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ast-audio", description="Audio Spectrogram Transformer tools")
    parser.add_argument("--version", action="version", version=f"ast-audio {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    from . import checkpoints, data, demo, events, infer, recipes, serve, shards, train

    for group in (checkpoints, data, demo, train, recipes, infer, serve, shards, events):  # the order in --help
        group.add_commands(sub)
    return parser


def _safe_output() -> None:
    """File names that are not valid text (``caf\\xe9.wav`` on a UTF-8 system) are printed with
    the undecodable bytes escaped (``caf\\udce9.wav``): the output stays valid text."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _safe_output()
    allocator.tune()  # AST_AUDIO_MALLOC=reuse only: freed tensor memory kept for reuse (base/allocator.py)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except AstAudioError as err:
        print(f"ast-audio: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; run the same command to resume after the last completed epoch" if args.command in ("train", "recipe") else ""
        print(f"ast-audio: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
