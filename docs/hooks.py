"""MkDocs hook: the command-line reference is generated from the real ``ast-audio`` parser.

``docs/cli.md`` holds the marker ``<!-- cli-reference -->``; at build time it is replaced by one
section per subcommand (nested ones such as ``prepare esc50`` included), in the parser's order:
its usage, description and a table of its arguments, read from ``ast_audio.cli.build_parser()``.
Nothing is pasted, so the page cannot drift from the flags the program accepts. The API pages
also lose the Sphinx role names that the docstrings put before code (``:func:``).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))  # document this tree's sources, as mkdocstrings does (paths: [src])

MARKER = "<!-- cli-reference -->"
# The docstrings name objects with Sphinx roles (:func:`load_model`); Markdown renders the role as
# text before the code, so the API pages drop it and keep the code (the name alone after a ~).
TABLE_CELL = re.compile(r"<td>.*?</td>", flags=re.S)
SPHINX_ROLE = re.compile(r":(?:func|meth|class|mod|attr|data|exc|obj|const):<code>(~?)([^<]*)</code>")
# A reStructuredText simple table in a docstring (rows between lines of ``=====  ===``) is a
# paragraph to Markdown; the API pages show it as the fixed-width text it is.
RST_TABLE = re.compile(r"<p>(=+(?: +=+)+\n.*?\n=+(?: +=+)+)</p>", flags=re.S)
CLI_PAGE = "cli.md"
WIDTH = 96  # usage lines wrap here, whatever the terminal of the build


def _formatter(parser: argparse.ArgumentParser) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(parser.prog, width=WIDTH, max_help_position=32)


def _escape(text: str) -> str:
    """Help text as Markdown table content: no table breaks, no HTML, no stray emphasis or links."""
    text = " ".join(text.split())
    for char, escaped in (("\\", "\\\\"), ("|", "\\|"), ("*", "\\*"), ("[", "\\["), ("]", "\\]")):
        text = text.replace(char, escaped)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    """Inline code that survives a table cell (a ``|`` inside it is escaped for the table)."""
    return "`" + text.replace("|", "\\|") + "`"


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    return _formatter(parser)._expand_help(action)


def _default(action: argparse.Action) -> str:
    if action.required and action.option_strings:
        return "required"
    if action.default in (None, argparse.SUPPRESS) or isinstance(action, argparse._StoreConstAction):
        return ""
    if isinstance(action.default, (list, tuple)):
        return _code(" ".join(str(v) for v in action.default)) if action.default else ""
    return _code(str(action.default))


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the order ``--help`` lists them."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((name, helps.get(name, ""), sub))
    return found


def subcommand_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every subcommand as its words after ``ast-audio`` (``("prepare", "esc50")``), depth first."""
    paths = []
    for name, _, sub in _subcommands(parser):
        paths.append((*prefix, name))
        paths.extend(subcommand_paths(sub, (*prefix, name)))
    return paths


def _section(words: tuple[str, ...], summary: str, parser: argparse.ArgumentParser) -> list[str]:
    level = "#" * (2 + len(words))
    lines = [f"{level} ast-audio {' '.join(words)}", ""]
    if summary:
        lines += [_escape(summary if summary.endswith((".", ")")) else summary + "."), ""]
    usage = _formatter(parser)
    usage.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    lines += ["```text", usage.format_help().strip(), "```", ""]
    if parser.description:
        lines += [_escape(parser.description), ""]
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            names = ", ".join(_code(name) for name in action.choices)
            rows.append((_code(action.dest.upper()), "", f"one of {names} (below)"))
            continue
        invocation = _formatter(parser)._format_action_invocation(action)
        rows.append((_code(invocation), _default(action), _escape(_help(parser, action))))
    if rows:
        lines += ["| argument | default | what it does |", "| --- | --- | --- |"]
        lines += [f"| {a} | {d} | {h} |" for a, d, h in rows]
        lines.append("")
    for name, sub_summary, sub in _subcommands(parser):
        lines += _section((*words, name), sub_summary, sub)
    return lines


def cli_reference() -> str:
    """The Markdown of every subcommand of ``ast-audio``, generated from its parser."""
    from ast_audio.cli import build_parser

    parser = build_parser()
    lines = []
    for name, summary, sub in _subcommands(parser):
        lines += _section((name,), summary, sub)
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != CLI_PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"docs/{CLI_PAGE}: the marker {MARKER} is missing; the CLI reference goes there")
    return markdown.replace(MARKER, cli_reference())


def _unescape_pipes(cell: re.Match) -> str:
    return cell.group(0).replace("\\|", "|")


def on_page_content(html: str, page, config, files) -> str:
    # A table cell's code keeps the backslash of an escaped pipe (`a\|b`) in Python-Markdown,
    # where GitHub drops it; the site drops it too, so one table source reads the same in both.
    html = TABLE_CELL.sub(_unescape_pipes, html)
    html = RST_TABLE.sub(r"<pre><code>\1</code></pre>", html)
    return SPHINX_ROLE.sub(_sphinx_role, html)


def _sphinx_role(role: re.Match) -> str:
    """``:func:`~a.b.name``` shows ``name`` (Sphinx's tilde), ``:func:`a.b``` shows ``a.b``."""
    tilde, target = role.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"
