"""The package's folders are its layers, and no import runs back up the pipeline.

base -> audio -> features -> data -> model -> checkpoints -> train -> infer -> recipes ->
serve -> cli. A module's layer is the folder it sits in (``infer/engine.py`` is in
``infer``); the top level holds only ``__init__``, ``__main__`` (above everything: they
assemble the public API and the command) and ``errors`` (below everything). A module may
import its own layer and the layers under it, never one above, not even inside a function
(each import statement of the file counts, wherever it is), and no two modules may import
each other through any path.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ast_audio"

# Lowest first: the only thing written here is the order of the folders.
ORDER = ["base", "audio", "features", "data", "model", "checkpoints", "train", "infer", "recipes", "serve", "cli"]
TOP_LEVEL = {"errors": 0, "__init__": len(ORDER), "__main__": len(ORDER)}  # rank of the three top-level modules
LIMIT = 400  # lines; a longer module says why in its docstring ("over 400 lines: ..."), and none passes HARD_LIMIT
HARD_LIMIT = 500


def layers() -> list[str]:
    """The folders under the package that are Python packages, as found on disk."""
    return sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))


def layer_of(module: str) -> int:
    """``module`` is dotted under the package (``infer.engine`` belongs to ``infer``)."""
    top = module.split(".")[0]
    if top in TOP_LEVEL and "." not in module:
        return TOP_LEVEL[top]
    if top in ORDER:
        return ORDER.index(top)
    raise AssertionError(f"ast_audio.{module} is in no layer: put it in one of the folders {ORDER}")


def name_of(rank: int) -> str:
    return ORDER[rank] if rank < len(ORDER) else "top level"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path) -> set[str]:
    """Package modules that ``module`` imports anywhere in its file."""
    package_parts = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    if module == "__init__":
        package_parts = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)] if node.level > 1 else package_parts
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
                names = [target] if node.module else [".".join([*base, a.name]) for a in node.names]
            elif node.module and (node.module == "ast_audio" or node.module.startswith("ast_audio.")):
                names = [node.module.removeprefix("ast_audio").lstrip(".") or "__init__"]
            else:
                continue
            found.update(n for n in names if n)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("ast_audio.") for a in node.names if a.name.startswith("ast_audio."))
    return found


def resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {}
    for module, path in known.items():
        targets = {resolve(t, known) for t in imports_of(module, path)}
        edges[module] = {t for t in targets if t and t != module}
    return edges


def test_every_module_has_a_layer():
    for module in modules():
        layer_of(module)


def test_the_folders_are_the_layers():
    assert layers() == sorted(ORDER), "a package folder is missing from ORDER, or ORDER names a folder that is gone"
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == sorted(TOP_LEVEL), f"only {sorted(TOP_LEVEL)} sit at the top level, found {top}"


def test_a_module_ranks_by_its_folder():
    """Ranks come from folders; a module outside them has none."""
    assert layer_of("model.ast") > layer_of("features.kaldi") > layer_of("errors")
    assert layer_of("cli.main") < layer_of("__init__")
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("stray")


def test_no_import_runs_back_up_the_pipeline():
    upward = []
    for module, targets in graph().items():
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} ({name_of(layer_of(module))}) imports {target} "
                              f"({name_of(layer_of(target))})")  # fmt: skip
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    path = tmp_path / "model.py"
    path.write_text("def f():\n    from .checkpoints import load_model\n    from . import hub\n")
    assert imports_of("model", path) == {"checkpoints", "hub"}
    path.write_text("from ..dataset import AudioDataset\nimport ast_audio.infer.engine\n")
    assert imports_of("recipes.esc50", path) == {"dataset", "infer.engine"}


def test_modules_are_a_screenful_or_say_why():
    long = []
    for module, path in modules().items():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if lines > HARD_LIMIT or (lines > LIMIT and f"over {LIMIT} lines" not in doc.lower()):
            long.append(f"{module}: {lines} lines")
    assert not long, "modules over 500 lines, or over 400 without a reason in their docstring:\n" + "\n".join(long)
