"""plots.py: each figure is a PNG that decodes, written atomically, with no global matplotlib effect."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from conftest import cli_env
from PIL import Image

from ast_audio.base.plots import plot_attention, plot_confusion, plot_curves
from ast_audio.infer import AttentionMap


def curve_rows(epochs: int = 3) -> list[list[float]]:
    """Rows as train.py writes result.csv: metric, mAUC, precision, recall, d-prime, train loss,
    valid loss, cumulative metric, cumulative mAUC, lr."""
    rng = np.random.default_rng(0)
    return [list(rng.random(10)) for _ in range(epochs)]


def attention_map() -> AttentionMap:
    rng = np.random.default_rng(1)
    features = rng.standard_normal((100, 128)).astype(np.float32)
    attention = rng.random((100, 128)).astype(np.float32)
    grid = rng.random((12, 9)).astype(np.float32)
    return AttentionMap(
        "clip.wav", 1.5, 2.5, "rollout", features, grid, attention, [("dog", 0.9), ("cat", 0.2)]
    )


def decoded(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()  # decodes every pixel: a truncated file fails here
        assert image.format == "PNG"
        return image.size


def test_each_plot_writes_a_png_that_decodes_and_nothing_else(tmp_path):
    matrix = np.array([[5, 1, 0], [0, 7, 2], [1, 0, 9]])
    curves = plot_curves(curve_rows(), tmp_path / "run" / "curves.png", "acc")
    confusion = plot_confusion(
        matrix, ["tone", "noise", "chirp"], tmp_path / "run" / "confusion.png", "fold 5"
    )
    attention = plot_attention(attention_map(), tmp_path / "run" / "attention.png", title="a title")
    assert (decoded(curves), decoded(confusion), decoded(attention)) == ((1000, 400), (700, 600), (1000, 750))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "attention.png",
        "confusion.png",
        "curves.png",
    ]
    before = curves.read_bytes()
    plot_curves(curve_rows(5), curves, "mAP")  # replaced whole, no temporary file left beside it
    assert curves.read_bytes() != before and decoded(curves) == (1000, 400)
    assert len(list((tmp_path / "run").iterdir())) == 3


def test_plotting_changes_neither_the_backend_nor_pyplot(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import matplotlib
        matplotlib.use("pdf")  # a caller's own choice, which plotting must leave alone
        import numpy as np
        import test_plots
        from ast_audio.base import plots

        def draw(tag):
            plots.plot_curves(test_plots.curve_rows(), {str(tmp_path)!r} + f"/curves-{{tag}}.png", "acc")
            plots.plot_confusion(np.eye(3, dtype=int), ["a", "b", "c"], {str(tmp_path)!r} + f"/cm-{{tag}}.png", "t")
            plots.plot_attention(test_plots.attention_map(), {str(tmp_path)!r} + f"/att-{{tag}}.png")

        draw("a")
        assert "matplotlib.pyplot" not in sys.modules, "plots imported pyplot"
        assert matplotlib.get_backend() == "pdf", matplotlib.get_backend()
        import matplotlib.pyplot as plt
        mine = plt.figure()
        draw("b")
        assert matplotlib.get_backend() == "pdf", matplotlib.get_backend()
        assert plt.get_fignums() == [mine.number] and plt.gcf() is mine, plt.get_fignums()
        print("unchanged")
    """)
    here = Path(__file__).parent  # the script imports this module's helpers
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=here, timeout=300, env=cli_env()
    )
    assert out.returncode == 0 and out.stdout.strip() == "unchanged", out.stderr
    assert len(list(tmp_path.glob("*.png"))) == 6
