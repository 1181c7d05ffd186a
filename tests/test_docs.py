"""The documentation site builds with ``mkdocs build --strict``, offline, and its generated parts are whole.

The build is the one ``make docs`` runs (mkdocs.yml, docs/hooks.py, mkdocstrings over src/),
into a temporary folder. Strict mode turns every warning into a failure: a link to a page or
anchor that does not exist, a page missing from the nav, an include that is not there, an API
reference (``::: ast_audio.name``) that does not resolve. The last tests build small sites with
the same configuration to show that those mistakes do fail it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ast_audio.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about its successor, not a warning of ours
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = mkdocs_build(ROOT / "mkdocs.yml", out)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
    return out


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(words after ``ast-audio``, parser) of every subcommand, nested ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from subcommands(sub, (*prefix, name))


def test_the_site_builds_strict_with_every_page(site):
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = []
    stack = list(config["nav"])
    while stack:
        entry = stack.pop()
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            stack.extend(value)
        else:
            pages.append(value)
    assert len(pages) >= 20
    for name in pages:
        stem = name.removesuffix(".md").removesuffix("index").rstrip("/")
        assert (site / stem / "index.html").is_file(), f"{name} was not built"
    assert (site / "serve.png").is_file()


def test_the_site_fetches_nothing(site):
    """No font, script or stylesheet from another host: the site works offline, as the build does."""
    for html in site.rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        remote = re.findall(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=\"(?:https?:)?//[^\"]+\"", text)
        assert not remote, f"{html.relative_to(site)} loads {remote[:3]}"


def test_the_cli_reference_names_every_subcommand_and_flag(site):
    html = page(site, "cli")
    found = list(subcommands(build_parser()))
    assert len(found) >= 25 and ("prepare", "esc50") in [words for words, _ in found]
    for words, parser in found:
        assert f'id="ast-audio-{"-".join(words)}"' in html, f"no section for ast-audio {' '.join(words)}"
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:  # hidden from --help, so from the reference too
                continue
            for option in action.option_strings:
                assert option in html, f"ast-audio {' '.join(words)}: {option} is not in the CLI reference"


def test_the_api_reference_documents_the_public_api(site):
    import ast_audio

    html = "".join(page(site, f"api/{name}") for name in ("model", "infer", "features", "checkpoints", "errors"))
    aliases = {"FeatureConfig"}  # the older name of InputContract, said on the API index
    for name in set(ast_audio.__all__) - aliases:
        assert f'id="ast_audio.{name}"' in html or re.search(rf'id="ast_audio\.[\w.]*\.{name}"', html), name
    assert "set_input_size" in html and ":func:" not in html


def test_the_benchmarks_page_is_benchmarks_md(site):
    """Included at build time, so a benchmark that rewrites BENCHMARKS.md rewrites the page."""
    sections = re.findall(r"^## ", (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8"), flags=re.M)
    assert len(sections) >= 5
    assert page(site, "benchmarks").count("<h2 ") == len(sections)


def mini_site(tmp_path: Path, pages: dict[str, str]) -> Path:
    """The project's configuration (theme, extensions, plugins, hook) over a docs folder of ``pages``."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir(parents=True)
    for name, text in pages.items():
        (docs / name).write_text(text)
    config.pop("nav")
    config["docs_dir"] = str(docs)
    config["hooks"] = [str(ROOT / "docs" / "hooks.py")]
    config["plugins"][1]["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT / "src")]
    for extension in config["markdown_extensions"]:
        if isinstance(extension, dict) and "pymdownx.snippets" in extension:
            extension["pymdownx.snippets"]["base_path"] = [str(ROOT)]
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config))
    return path


GOOD = {"index.md": "# Home\n\nSee [the other page](other.md#a-section).\n", "other.md": "# Other\n\n## A section\n"}


@pytest.fixture(scope="module")
def good_site(tmp_path_factory) -> None:
    """The small site without a mistake builds: a failure below is the mistake's."""
    tmp = tmp_path_factory.mktemp("good")
    result = mkdocs_build(mini_site(tmp, GOOD), tmp / "site")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.parametrize(
    ("mistake", "named"),
    [
        ("See [the guide](no-such-page.md).", "no-such-page.md"),
        ("See [the page](other.md#no-such-anchor).", "no-such-anchor"),
        ("::: ast_audio.no_such_function", "no_such_function"),
        ('--8<-- "NO_SUCH_FILE.md"', "NO_SUCH_FILE.md"),
    ],
    ids=["link", "anchor", "api-reference", "include"],
)
def test_a_mistake_fails_the_build(good_site, tmp_path, mistake, named):
    bad = {**GOOD, "index.md": GOOD["index.md"] + "\n" + mistake + "\n"}
    result = mkdocs_build(mini_site(tmp_path, bad), tmp_path / "site")
    assert result.returncode != 0 and named in result.stdout + result.stderr, result.stderr[-2000:]
