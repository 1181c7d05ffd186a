"""Every command the README and the documentation site show is one the project accepts, so they cannot rot.

The pages are README.md and every Markdown page under docs/. Shell lines are parsed by the
real ``ast-audio`` parser (optional ``[--flag value]`` parts included), ``make`` targets must
exist, scripts must exist, Python blocks must compile and every name they import from
ast_audio must exist, and every ``ast_audio.module.name`` a page mentions must resolve.
What the commands do is tested by the rest of the suite and by ``make demo``.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

from ast_audio.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
TEXT = {page.relative_to(ROOT).as_posix(): page.read_text(encoding="utf-8") for page in PAGES}
BLOCKS = [
    (name, lang, body)
    for name, text in TEXT.items()
    for lang, body in re.findall(r"```(bash|python)\n(.*?)```", text, flags=re.S)
]
PYTHON = [(name, body) for name, lang, body in BLOCKS if lang == "python"]
# Dotted names in backticks that are not Python objects (the TorchScript extra file's name).
NOT_OBJECTS = {"ast_audio.json"}


def shell_commands(page: str | None = None) -> list[tuple[str, str]]:
    """(page, command) for every shell line of the pages (of one page when named)."""
    commands = []
    for name, lang, body in BLOCKS:
        if lang != "bash" or page not in (None, name):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.split(r"\s+#\s", " " + line.strip())[0].strip()
            if line:
                commands.append((name, line))
    return commands


def cli_args(command: str) -> list[str]:
    tokens = [t.strip("[]") for t in shlex.split(command) if t not in ("[", "]", "...")]
    return [t for t in tokens if t and t != "..."]


def resolves(dotted: str) -> bool:
    """``ast_audio.a.b.name``: a module, or an attribute of the longest module prefix (as
    ``from ast_audio.a.b import name`` finds a submodule or an attribute)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize(("page", "command"), shell_commands(), ids=lambda v: v if v.endswith(".md") else "")
def test_documented_command_is_accepted(page, command):
    tokens = cli_args(command)
    if tokens[0] == "make":
        makefile = (ROOT / "Makefile").read_text()
        for target in tokens[1:]:
            assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"{page}: no make target {target!r}"
        return
    if tokens[0] == "torchrun":
        tokens = tokens[tokens.index("ast_audio") :]
    if tokens[0].endswith("python"):
        assert (ROOT / tokens[1]).exists(), f"{page}: {command}"
        return
    assert tokens[0] in ("ast-audio", "ast_audio"), f"{page}: unknown kind of command: {command}"
    try:
        build_parser().parse_args(tokens[1:])
    except SystemExit as err:
        pytest.fail(f"{page}: the CLI rejects the command: {command} (exit {err.code})")


@pytest.mark.parametrize(("page", "code"), PYTHON, ids=[f"{name}:{i}" for i, (name, _) in enumerate(PYTHON)])
def test_documented_python_compiles_and_its_imports_exist(page, code):
    tree = compile(code, f"{page} python block", "exec", flags=ast.PyCF_ONLY_AST)
    compile(tree, f"{page} python block", "exec")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ast_audio":
            for alias in node.names:
                assert resolves(f"{node.module}.{alias.name}"), f"{page}: `from {node.module} import {alias.name}` fails"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ast_audio":
                    importlib.import_module(alias.name)


def test_every_module_path_the_pages_name_exists():
    named = {
        (page, dotted)
        for page, text in TEXT.items()
        for dotted in re.findall(r"`(ast_audio(?:\.[A-Za-z_]\w*)+)", text)
        if dotted not in NOT_OBJECTS
    }
    assert len(named) >= 10
    missing = sorted(f"{page}: {dotted}" for page, dotted in named if not resolves(dotted))
    assert not missing, "the pages name modules or objects that do not exist:\n" + "\n".join(missing)


def test_the_pages_show_commands():
    """The README keeps its quick start; the pages keep every command the README used to hold."""
    readme = [command for _, command in shell_commands("README.md")]
    assert "make demo" in readme and "make test" in readme
    assert any(c.startswith("ast-audio predict") for c in readme) and any(c.startswith("ast-audio serve") for c in readme)
    assert len(shell_commands()) >= 65 and len(PYTHON) >= 8  # the README held 57 and 6 before the site


def test_the_readme_links_point_at_files():
    """The README is read on GitHub, outside the site's strict build: its relative links are checked here."""
    links = re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", TEXT["README.md"])
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert len(local) >= 15 and "docs/cli.md" in local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
