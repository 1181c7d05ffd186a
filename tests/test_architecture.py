"""The package layout shows the pipeline, and no import runs back up it.

audio -> features -> data -> model -> train/evaluate -> infer -> serve/cli. Every module of
``src/ast_audio`` has a layer below; a module may import its own layer and the layers
under it, never one above, not even inside a function (each import statement of the file
counts, wherever it is), and no two modules may import each other through any path.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ast_audio"

# Lowest first. A new module must be placed here (the test fails until it is).
LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"errors", "fileio", "presets", "labels", "runtime", "allocator", "plots", "distributed"}),
    ("audio", {"audio", "cache", "listen"}),
    ("features", {"features"}),
    ("data", {"augment", "pipeline", "data", "dataset", "metrics", "synth", "shards"}),
    ("model", {"pos_embed", "model"}),
    ("checkpoints", {"hub", "layouts", "checkpoints"}),
    ("train/evaluate", {"config", "evaluate", "train", "export", "model_card", "evaluate_events"}),
    ("infer", {"infer", "hear"}),
    ("recipes", {"recipes", "demo"}),
    ("serve", {"serve"}),
    ("cli", {"cli", "cli_train", "cli_infer", "cli_events", "cli_recipes", "cli_serve", "cli_shards", "cli_dist", "__main__", "__init__"}),
]
LIMIT = 400  # lines; a longer module says why in its docstring ("over 400 lines: ...")


def layer_of(module: str) -> int:
    """``module`` is dotted under the package (``infer.engine`` belongs to ``infer``)."""
    top = module.split(".")[0]
    for rank, (_, names) in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"ast_audio.{module} is in no layer: add it to LAYERS in {Path(__file__).name}")


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


def test_no_import_runs_back_up_the_pipeline():
    upward = []
    for module, targets in graph().items():
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                              f"({LAYERS[layer_of(target)][0]})")  # fmt: skip
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
        if lines > LIMIT and f"over {LIMIT} lines" not in doc.lower():
            long.append(f"{module}: {lines} lines")
    assert not long, "modules over the limit without a reason in their docstring:\n" + "\n".join(long)
