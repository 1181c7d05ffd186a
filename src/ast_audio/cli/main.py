"""The ``ast-audio`` command: thin subcommands over the library.

Library errors (:class:`AstAudioError`) become one line on stderr and exit status 2; an
operating-system error (a full disk, no permission, a read-only folder, the file size limit)
becomes one line naming the path and the reason, exit status 1. What the command was writing
is removed by its writers on the way out (temporary files, folders they created), so a failed
command leaves no half-written output.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from .. import __version__
from ..base import allocator
from ..base.fileio import describe_os_error
from ..errors import AstAudioError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ast-audio", description="Audio Spectrogram Transformer tools")
    parser.add_argument("--version", action="version", version=f"ast-audio {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    from . import checkpoints, data, demo, distill, events, infer, pretrain, recipes, serve, shards, train

    for group in (checkpoints, data, demo, train, pretrain, distill, recipes, infer, serve, shards, events):  # the order in --help
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
    except BrokenPipeError:  # the reader of our output went away (`| head`): nothing left to say
        with contextlib.suppress(OSError, ValueError):  # so that the flush at exit does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:
        print(f"ast-audio: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = "; run the same command to resume after the last completed epoch" if args.command in ("train", "pretrain", "distill", "recipe") else ""
        print(f"ast-audio: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
