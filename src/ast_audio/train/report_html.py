"""The evaluation report as one self-contained HTML page.

One file to open, mail or archive: the figures are inline (PNG as ``data:`` URIs), and
each listed mistake has an ``<audio>`` player whose source is the clip's first
:data:`AUDIO_SECONDS` seconds as a 16 kHz, 16-bit mono WAV ``data:`` URI (about 210 kB of
page per clip). Past :data:`EMBEDDED_CLIPS` clips, and for a clip that does not decode, the
player links to the file by its path relative to the page instead, so a long list of
mistakes does not make a page of hundreds of megabytes. No script, and nothing loaded
from elsewhere; every string that comes from a file (paths, label names) is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import urllib.parse
import wave
from pathlib import Path

import numpy as np

from ..audio.io import load_audio
from ..errors import AstAudioError
from .evaluate import Evaluation

AUDIO_SECONDS = 5.0
AUDIO_RATE = 16000
EMBEDDED_CLIPS = 40

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
th { background: #f3f3f3; } td.name { text-align: left; } td.path { text-align: left; font-size: 0.85em; }
img { max-width: 100%; border: 1px solid #eee; } .note { color: #666; font-size: 0.9em; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float) -> str:
    return "&ndash;" if isinstance(value, float) and math.isnan(value) else f"{value:.3f}"


def _bar(value: float) -> str:
    """A table cell shaded to ``value`` (0..1), so strong and weak classes stand out without a script."""
    if isinstance(value, float) and math.isnan(value):
        return "<td>&ndash;</td>"
    pct = max(0.0, min(100.0, 100 * value))
    return f'<td style="background: linear-gradient(90deg, #cfe3f7 {pct:.0f}%, transparent {pct:.0f}%)">{value:.3f}</td>'


def png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def wav_uri(path: Path, seconds: float = AUDIO_SECONDS) -> str:
    """The first ``seconds`` of an audio file as a 16 kHz 16-bit mono WAV ``data:`` URI."""
    samples = load_audio(path, sample_rate=AUDIO_RATE)[: int(seconds * AUDIO_RATE)].numpy()
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(AUDIO_RATE)
        out.writeframes(pcm.tobytes())
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _player(path: Path, base: Path, embed: bool) -> str:
    source = None
    if embed:
        try:
            source = wav_uri(path)
        except AstAudioError:
            source = None
    if source is None:
        source = urllib.parse.quote(Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix())
    return f'<audio controls preload="none" src="{_e(source)}"></audio>'


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(f"<tr>{''.join(row)}</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(ev: Evaluation, rows: list[dict], totals: dict[str, float], mistakes: list, files: dict[str, Path],
           base: Path) -> str:  # fmt: skip
    """The page: what was evaluated, the totals, the per-class table, the confusion figure,
    the mistakes with their audio, and the training curves when there are some."""
    kind = ("single-label: each clip gets its top-scoring label" if ev.top1 else
            "multi-label: a label is given when its score reaches its threshold")  # fmt: skip
    models = ", ".join(_e(c) for c in ev.checkpoints) + (" (ensemble: the mean of their scores)" if len(ev.checkpoints) > 1 else "")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Evaluation: {_e(Path(ev.checkpoints[0]).name)} on {_e(ev.datafile.path.name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Evaluation report</h1>",
        f"<p>Model: {models}<br>Data: {_e(ev.datafile.path)} &mdash; {len(ev.datafile)} clips, {len(ev.labels)} classes"
        f"<br>Decisions: {_e(kind)}</p>",
        "<h2>Totals</h2>",
        _table(list(totals), [[f"<td>{_num(v)}</td>" for v in totals.values()]]),
        "<h2>Per class</h2>",
        '<p class="note">Precision, recall and F1 of the decisions; AP ranks the clips by score (its mean is mAP); '
        "support: clips of the class.</p>",
        _table(["label", "precision", "recall", "F1", "AP", "support"], [
            [f'<td class="name">{_e(r["label"])}</td>', _bar(r["precision"]), _bar(r["recall"]), _bar(r["f1"]),
             _bar(r["ap"]), f"<td>{r['support']}</td>"] for r in rows
        ]),
        "<h2>Confusion</h2>" if ev.top1 else "<h2>Decisions per class</h2>",
        f'<img alt="confusion" src="{png_uri(files["confusion"])}">',
        f"<h2>Most confident mistakes ({len(mistakes)})</h2>",
    ]  # fmt: skip
    if mistakes:
        parts.append(_table(["#", "file", "true", "predicted", "score", "listen"], [
            [f"<td>{n}</td>", f'<td class="path" title="{_e(m.file)}">{_e(m.file)}</td>',
             f'<td class="name">{_e("; ".join(m.true))}</td>',
             f'<td class="name">{_e("; ".join(m.predicted) or "(none)")}</td>', f"<td>{m.score:.3f}</td>",
             f"<td>{_player(m.file, base, n <= EMBEDDED_CLIPS)}</td>"] for n, m in enumerate(mistakes, 1)
        ]))  # fmt: skip
        parts.append(f'<p class="note">Players hold the first {AUDIO_SECONDS:g} s of each clip'
                     f" (the first {EMBEDDED_CLIPS}; later ones link to the file).</p>")  # fmt: skip
    else:
        parts.append("<p>None: every clip was decided right.</p>")
    if "curves" in files:
        parts += ["<h2>Training</h2>", f'<img alt="training curves" src="{png_uri(files["curves"])}">']
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
