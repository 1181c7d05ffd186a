"""``ast-audio evaluate``'s report: per-class table, confusion, mistakes, the HTML page, on
real checkpoints and real audio in a folder, a CSV and a datafile JSON."""

from __future__ import annotations

import base64
import csv
import html.parser
import io
import json
import os
import urllib.parse
import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import ok, run_main
from factories import SR, loudness_model, noise, train_toy_model, write_audio
from PIL import Image
from sklearn import metrics as skm

from ast_audio.checkpoints import save_checkpoint
from ast_audio.train.metrics import ClassCounts, confusion_matrix, decisions

# --------------------------------------------------------------------------- the counts, by hand


def test_class_counts_match_a_hand_computation_and_scikit_learn():
    # 6 clips, 3 classes; top scores: 0, 0, 1, 1, 1, 0 against truth 0, 1, 1, 1, 2, 0
    scores = np.array([[.7, .2, .1], [.5, .4, .1], [.1, .8, .1], [.2, .6, .2], [.3, .4, .3], [.9, .05, .05]])
    truth = np.array([0, 1, 1, 1, 2, 0])
    predicted = decisions(scores, top1=True)
    assert predicted.sum(1).tolist() == [1] * 6 and predicted.argmax(1).tolist() == [0, 0, 1, 1, 1, 0]
    counts = ClassCounts.of(predicted, np.eye(3)[truth])
    # class 0: tp 2 fp 1 fn 0; class 1: tp 2 fp 1 fn 1; class 2: tp 0 fp 0 fn 1
    assert (counts.tp.tolist(), counts.fp.tolist(), counts.fn.tolist()) == ([2, 2, 0], [1, 1, 0], [0, 1, 1])
    np.testing.assert_allclose(counts.precision[:2], [2 / 3, 2 / 3])
    assert np.isnan(counts.precision[2])  # never predicted
    np.testing.assert_allclose(counts.recall, [1.0, 2 / 3, 0.0])
    np.testing.assert_allclose(counts.f1, [4 / 5, 4 / 6, 0.0])
    assert counts.balanced_accuracy == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert counts.macro_f1 == pytest.approx((4 / 5 + 4 / 6) / 3)
    assert counts.micro_f1 == pytest.approx(4 / 6)  # = accuracy
    guess = predicted.argmax(1)
    assert counts.macro_f1 == pytest.approx(skm.f1_score(truth, guess, average="macro"))
    assert counts.balanced_accuracy == pytest.approx(skm.balanced_accuracy_score(truth, guess))
    np.testing.assert_array_equal(confusion_matrix(truth, guess, 3), skm.confusion_matrix(truth, guess, labels=[0, 1, 2]))
    assert confusion_matrix(truth, guess, 3).tolist() == [[2, 0, 0], [1, 2, 0], [0, 1, 0]]


def test_multilabel_decisions_use_each_class_threshold():
    scores = np.array([[0.9, 0.4], [0.3, 0.7], [0.6, 0.2]])
    targets = np.array([[1, 1], [0, 1], [0, 0]])
    predicted = decisions(scores, top1=False, thresholds=np.array([0.5, 0.3]))
    assert predicted.tolist() == [[True, True], [False, True], [True, False]]
    counts = ClassCounts.of(predicted, targets)
    assert (counts.tp.tolist(), counts.fp.tolist(), counts.fn.tolist(), counts.support.tolist()) == (
        [1, 2], [1, 0], [0, 0], [1, 2])  # fmt: skip
    assert counts.micro_f1 == pytest.approx(2 * 3 / (2 * 3 + 1))
    assert counts.macro_f1 == pytest.approx(skm.f1_score(targets, predicted, average="macro"))


# --------------------------------------------------------------------------- real checkpoints and clips


@pytest.fixture(scope="module")
def loud(tmp_path_factory):
    """A hand-set loudness model (labels loud, quiet, never) saved single-label (softmax) and
    multi-label (sigmoid), and its clips: 3 loud and 1 quiet one filed as loud (the one
    mistake), 3 quiet ones in a nested session folder, as a folder, a CSV and a datafile."""
    root = tmp_path_factory.mktemp("loud")
    model = loudness_model(100)
    multi = save_checkpoint(model, root / "multi.safetensors")
    model.info.contract = model.info.contract.replace(activation="softmax")
    single = save_checkpoint(model, root / "single.safetensors")
    data = root / "clips"
    for folder in ("loud", "quiet/session 1", ".hidden"):
        (data / folder).mkdir(parents=True)
    rows = []
    for i in range(3):
        rows.append((write_audio(data / "loud" / f"l{i}.wav", noise(1.0, 0.3, seed=i), SR), "loud"))
        rows.append((write_audio(data / "quiet" / "session 1" / f"q{i}.wav", noise(1.0, 1e-4, seed=10 + i), SR), "quiet"))
    wrong = write_audio(data / "loud" / "filed <wrong>.wav", noise(6.0, 1e-4, seed=20), SR)
    rows.append((wrong, "loud"))
    write_audio(data / ".hidden" / "x.wav", noise(1.0, 0.3), SR)  # left out: hidden
    write_audio(data / "loose.wav", noise(1.0, 0.3), SR)  # left out: in no class folder
    table = root / "clips.csv"
    table.write_text("filename,label\n" + "".join(f'"{p.relative_to(root)}",{label}\n' for p, label in rows))
    (root / "labels.csv").write_text("index,mid,display_name\n0,/m/l,loud\n1,/m/q,quiet\n2,/m/n,never\n")
    mids = {"loud": "/m/l", "quiet": "/m/q"}
    datafile = root / "clips.json"
    datafile.write_text(json.dumps({"data": [{"wav": str(p), "labels": mids[label]} for p, label in rows]}))
    return {"root": root, "single": single, "multi": multi, "folder": data, "csv": table, "json": datafile,
            "labels": root / "labels.csv", "wrong": wrong}  # fmt: skip


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class Page(html.parser.HTMLParser):
    """Every tag with its attributes, and the text, of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def png_size(path_or_bytes) -> tuple[int, int]:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def test_single_label_report_from_a_folder_is_the_hand_computed_one(loud, tmp_path):
    out_dir, report = tmp_path / "out", tmp_path / "page" / "report.html"
    out = ok(run_main("evaluate", "--checkpoint", loud["single"], "--data", loud["folder"], "--out-dir", out_dir,
                      "--report", report, "--out", tmp_path / "stats.csv"))  # fmt: skip
    # 7 clips: loud 3 of 4 right (the quiet one filed as loud is called quiet), quiet 3 of 3
    classes = {r["label"]: r for r in read_rows(out_dir / "classes.csv")}
    assert list(classes) == ["loud", "quiet", "never"]
    assert [float(classes["loud"][k]) for k in ("precision", "recall", "f1")] == pytest.approx([1.0, 0.75, 6 / 7])
    assert [float(classes["quiet"][k]) for k in ("precision", "recall", "f1")] == pytest.approx([0.75, 1.0, 6 / 7])
    assert (classes["loud"]["support"], classes["quiet"]["support"], classes["never"]["support"]) == ("4", "3", "0")
    assert [classes["never"][k] for k in ("precision", "recall", "f1", "ap")] == ["", "", "", ""]  # undefined
    stats = read_rows(tmp_path / "stats.csv")[0]
    assert read_rows(out_dir / "stats.csv") == [stats]
    assert float(stats["acc"]) == pytest.approx(6 / 7) and float(stats["balanced_acc"]) == pytest.approx(0.875)
    assert float(stats["macro_F1"]) == pytest.approx(6 / 7) and float(stats["micro_F1"]) == pytest.approx(6 / 7)
    assert float(stats["mAP"]) == pytest.approx(np.mean([float(classes[c]["ap"]) for c in ("loud", "quiet")]))
    assert [r for r in csv.reader(open(out_dir / "confusion.csv"))][1:] == [
        ["loud", "3", "1", "0"], ["quiet", "0", "3", "0"], ["never", "0", "0", "0"]]  # fmt: skip
    assert png_size(out_dir / "confusion.png")[0] > 100
    mistakes = read_rows(out_dir / "mistakes.csv")
    assert len(mistakes) == 1 and mistakes[0]["file"] == str(loud["wrong"])
    assert (mistakes[0]["true_label"], mistakes[0]["predicted_label"]) == ("loud", "quiet")
    assert 0.5 < float(mistakes[0]["score"]) <= 1.0  # the softmax probability of "quiet"
    # printed: the single-label totals (no avg_recall), the table, the mistake
    header = out.stdout.splitlines()[0].split("\t")
    assert header == ["model", "acc", "balanced_acc", "macro_F1", "mAP", "mAUC", "d_prime"]
    assert "loud\t1.0000\t0.7500\t0.8571" in out.stdout and "1 of 7 clips decided wrong" in out.stdout
    assert f"{loud['wrong']}\tloud -> quiet" in out.stdout

    page = parse(report)
    text = " ".join(page.text)
    assert "filed <wrong>.wav" in text and "Confusion" in text and "Training" not in text  # no run folder here
    images = [a["src"] for tag, a in page.tags if tag == "img"]
    assert len(images) == 1 and png_size(base64.b64decode(images[0].split(",", 1)[1]))[0] > 100
    players = [a["src"] for tag, a in page.tags if tag == "audio"]
    assert len(players) == 1 and players[0].startswith("data:audio/wav;base64,")
    with wave.open(io.BytesIO(base64.b64decode(players[0].split(",", 1)[1]))) as clip:
        assert (clip.getnchannels(), clip.getframerate(), clip.getnframes()) == (1, 16000, 5 * 16000)  # first 5 s of 6
    # self-contained: nothing is fetched from elsewhere, and nothing runs
    links = [v for _, attrs in page.tags for k, v in attrs.items() if k in ("src", "href")]
    assert links and all(v.startswith("data:") for v in links)
    assert not {tag for tag, _ in page.tags} & {"script", "link", "iframe"}
    assert "http" not in report.read_text().replace("http-equiv", "")


def test_mistakes_past_the_embedded_ones_link_to_their_file(loud, tmp_path, monkeypatch):
    from ast_audio.train import report_html

    monkeypatch.setattr(report_html, "EMBEDDED_CLIPS", 0)
    report = tmp_path / "pages" / "r.html"
    ok(run_main("evaluate", "--checkpoint", loud["single"], "--data", loud["csv"], "--report", report))
    (player,) = [a["src"] for tag, a in parse(report).tags if tag == "audio"]
    assert urllib.parse.unquote(player) == os.path.relpath(loud["wrong"], report.parent)
    assert (report.parent / urllib.parse.unquote(player)).resolve() == loud["wrong"].resolve()


def test_csv_and_datafile_give_the_folder_s_numbers(loud, tmp_path):
    want = None
    for kind, extra in (("folder", []), ("csv", []), ("json", ["--label-csv", loud["labels"]])):
        out_dir = tmp_path / kind
        ok(run_main("evaluate", "--checkpoint", loud["single"], "--data", loud[kind], "--out-dir", out_dir, *extra))
        got = {name: read_rows(out_dir / name) for name in ("classes.csv", "mistakes.csv")}
        got["stats"] = {k: v for k, v in read_rows(out_dir / "stats.csv")[0].items() if k != "model"}
        assert want is None or got == want, kind
        want = got


def test_multilabel_report_counts_decisions_at_the_thresholds(loud, tmp_path):
    out_dir = tmp_path / "out"
    out = ok(run_main("evaluate", "--checkpoint", loud["multi"], "--data", loud["folder"], "--out-dir", out_dir,
                      "--report", tmp_path / "r.html", "--mistakes", "0"))  # fmt: skip
    grid = list(csv.reader(open(out_dir / "confusion.csv")))
    assert grid[0] == ["label", "true positive", "missed", "false positive", "true negative"]
    assert grid[1:] == [["loud", "3", "1", "0", "3"], ["quiet", "3", "0", "1", "3"], ["never", "0", "0", "0", "7"]]
    assert out.stdout.splitlines()[0].split("\t") == ["model", "mAP", "mAUC", "d_prime", "macro_F1", "micro_F1"]
    assert read_rows(out_dir / "mistakes.csv") == []  # --mistakes 0
    assert "1 of 7 clips decided wrong" in out.stdout
    assert [tag for tag, _ in parse(tmp_path / "r.html").tags].count("audio") == 0
    full = ok(run_main("evaluate", "--checkpoint", loud["multi"], "--data", loud["csv"], "--out-dir", tmp_path / "all"))
    (mistake,) = read_rows(tmp_path / "all" / "mistakes.csv")
    assert (mistake["true_label"], mistake["predicted_label"]) == ("loud", "quiet") and full.returncode == 0


def test_report_of_a_trained_run_shows_its_curves_and_ensemble(tmp_path):
    best = train_toy_model(tmp_path, epochs=2)
    toy = tmp_path / "toy"
    folder = tmp_path / "by class"
    entries = json.loads((toy / "val.json").read_text())["data"]
    names = {"/m/low": "low tone", "/m/high": "high tone", "/m/noise": "noise"}  # folders named by display name
    for entry in entries:
        (folder / names[entry["labels"]]).mkdir(parents=True, exist_ok=True)
        (folder / names[entry["labels"]] / Path(entry["wav"]).name).hardlink_to(entry["wav"])
    report = tmp_path / "report.html"
    out = ok(run_main("evaluate", "--checkpoint", best, best, "--data", folder, "--report", report))
    assert out.stdout.splitlines()[3].startswith("ensemble\t")  # header, two members, their ensemble
    page = parse(report)
    text = " ".join(page.text)
    assert "Training" in text and len([a for tag, a in page.tags if tag == "img"]) == 2  # confusion, curves
    assert f"{len(entries)} clips, 3 classes" in text


@pytest.mark.parametrize(
    "data, message",
    [
        ("missing", r"missing: not found \(expected a datafile JSON, a CSV or a folder of class folders\)"),
        ("bad.csv", r"bad.csv: name the label column 'label'"),
        ("unknown", r"unknown: label 'cow' .* is not one of the labels \(loud, quiet, never\)"),
        ("gone.csv", r"gone.csv: .*nowhere.wav: file not found"),
        ("empty", r"empty: no audio files in class subfolders"),
    ],
)
def test_bad_data_is_one_line_naming_the_file(loud, tmp_path, data, message):
    import re

    root = loud["root"]
    (tmp_path / "bad.csv").write_text("filename,a,b\nx.wav,cat,dog\n")
    (tmp_path / "gone.csv").write_text("filename,label\nnowhere.wav,loud\n")
    (tmp_path / "empty" / "loud").mkdir(parents=True)
    (tmp_path / "unknown" / "cow").mkdir(parents=True)
    (tmp_path / "unknown" / "cow" / "c.wav").write_bytes((root / "clips" / "loud" / "l0.wav").read_bytes())
    out = run_main("evaluate", "--checkpoint", loud["single"], "--data", tmp_path / data)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(message, lines[0]), out.stderr
