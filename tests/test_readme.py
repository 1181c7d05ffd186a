"""Every command the README shows is one the project accepts, so the README cannot rot.

Shell lines are parsed by the real ``ast-audio`` parser (optional ``[--flag value]`` parts
included), ``make`` targets must exist, scripts must exist, Python blocks must compile.
What they do is tested by the rest of the suite and by ``make demo``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from ast_audio.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(bash|python)\n(.*?)```", README, flags=re.S)


def shell_commands() -> list[str]:
    commands = []
    for lang, body in BLOCKS:
        if lang != "bash":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.split(r"\s+#\s", " " + line.strip())[0].strip()
            if line:
                commands.append(line)
    return commands


def cli_args(command: str) -> list[str]:
    tokens = [t.strip("[]") for t in shlex.split(command) if t not in ("[", "]", "...")]
    return [t for t in tokens if t and t != "..."]


@pytest.mark.parametrize("command", shell_commands())
def test_readme_command_is_accepted(command):
    tokens = cli_args(command)
    if tokens[0] == "make":
        makefile = (ROOT / "Makefile").read_text()
        for target in tokens[1:]:
            assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"no make target {target!r}"
        return
    if tokens[0] == "torchrun":
        tokens = tokens[tokens.index("ast_audio") :]
    if tokens[0].endswith("python"):
        assert (ROOT / tokens[1]).exists(), command
        return
    assert tokens[0] in ("ast-audio", "ast_audio"), f"unknown kind of command in the README: {command}"
    try:
        build_parser().parse_args(tokens[1:])
    except SystemExit as err:
        pytest.fail(f"the CLI rejects the README command: {command} (exit {err.code})")


@pytest.mark.parametrize("index", range(sum(1 for lang, _ in BLOCKS if lang == "python")))
def test_readme_python_compiles(index):
    code = [body for lang, body in BLOCKS if lang == "python"][index]
    compile(code, f"README python block {index}", "exec")


def test_the_readme_shows_commands():
    assert len(shell_commands()) >= 20 and "make demo" in shell_commands()
