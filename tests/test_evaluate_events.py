"""`ast-audio evaluate-events`: sed_eval's event- and segment-based scores on hand-counted tables."""

from __future__ import annotations

import json

import numpy as np
from conftest import run_main

from ast_audio.infer.scoring import read_events

REF = """filename\tonset\toffset\tevent_label
a.wav\t1.000\t3.000\tdog
a.wav\t5.000\t6.000\tcat
b.wav\t0.500\t2.500\tdog
b.wav\t4.000\t8.000\tcat
"""
# a.wav dog exact; a.wav cat onset 0.3 s late (outside the 200 ms collar: a miss and a false
# alarm); b.wav dog offset 0.35 s early (inside max(0.2, 20% of 2 s = 0.4)); b.wav cat missed.
PRED = """filename\tonset\toffset\tevent_label
a.wav\t1.000\t3.000\tdog
a.wav\t5.300\t6.000\tcat
b.wav\t0.550\t2.150\tdog
"""


def test_event_based_f1_with_the_dcase_collars(tmp_path):
    (tmp_path / "ref.tsv").write_text(REF)
    (tmp_path / "pred.tsv").write_text(PRED)
    out = run_main("evaluate-events", "--ref", tmp_path / "ref.tsv", "--pred", tmp_path / "pred.tsv", "--format", "json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    # TP 2, FP 1, FN 2: precision 2/3, recall 1/2, F1 4/7; ER = (S + D + I) / N = (0 + 2 + 1) / 4
    assert (got["event_precision"], got["event_recall"]) == (round(2 / 3, 6), 0.5)
    assert got["event_f1"] == round(4 / 7, 6) and got["event_error_rate"] == 0.75
    assert got["reference_events"] == 4 and got["predicted_events"] == 3
    assert got["class_wise_event_f1"]["dog"] == 1.0
    assert 0 < got["segment_f1"] < 1
    perfect = run_main("evaluate-events", "--ref", tmp_path / "ref.tsv", "--pred", tmp_path / "ref.tsv")
    assert perfect.returncode == 0 and "F1 1.0000" in perfect.stdout


def test_bad_tables_are_one_line_errors(tmp_path):
    (tmp_path / "ref.tsv").write_text(REF)
    (tmp_path / "bad.tsv").write_text("a.wav\t3.0\t1.0\tdog\n")
    out = run_main("evaluate-events", "--ref", tmp_path / "ref.tsv", "--pred", tmp_path / "bad.tsv")
    assert out.returncode == 2 and out.stderr.strip() == f"ast-audio: error: {tmp_path / 'bad.tsv'}: line 1: onset 3.0 after offset 1.0 (or negative)"
    (tmp_path / "other.tsv").write_text("c.wav\t1.0\t2.0\tdog\n")
    out = run_main("evaluate-events", "--ref", tmp_path / "ref.tsv", "--pred", tmp_path / "other.tsv")
    assert out.returncode == 2 and "predictions for files not in the reference: c.wav" in out.stderr
    assert read_events(tmp_path / "ref.tsv")[1] == {"filename": "a.wav", "onset": 5.0, "offset": 6.0, "event_label": "cat"}


def _table(seconds: float, spans: dict[int, list[tuple[float, float, float]]], classes: int = 2, hop: float = 0.1):
    """A score table of ``seconds`` at ``hop``: ``spans[class]`` = [(start, end, score)], 0 elsewhere."""
    from ast_audio.infer.scoring import ScoreTable

    n = round(seconds / hop)
    scores = np.zeros((n, classes))
    for c, rows in spans.items():
        for a, b, v in rows:
            scores[round(a / hop) : round(b / hop), c] = v
    return ScoreTable(np.arange(n + 1) * hop, scores, ["x", "y"][:classes])


def test_psds_over_every_threshold_by_hand():
    from ast_audio.infer.scoring import psds_of_scores

    ref = [{"filename": "a.wav", "onset": 2.0, "offset": 5.0, "event_label": "x"},
           {"filename": "a.wav", "onset": 6.0, "offset": 8.0, "event_label": "y"}]  # fmt: skip
    perfect = _table(72, {0: [(2, 5, 0.9)], 1: [(6, 8, 0.8)]})
    assert psds_of_scores({"a": perfect}, ref) == (1.0, {"x": 1.0, "y": 1.0})
    # one false alarm of x (30-32 s) scored above its true event, in 72 s: 50 per hour. x's ROC:
    # TPR 0 up to eFPR 50, then 1 (its event found at the threshold below 0.9): area 50/100.
    # y is perfect (1 from eFPR 0). PSDS (alpha_st 0) is the area of the mean: 0.5 up to 50, 1 after.
    alarm = _table(72, {0: [(2, 5, 0.9), (30, 32, 0.95)], 1: [(6, 8, 0.8)]})
    assert psds_of_scores({"a": alarm}, ref) == (0.75, {"x": 0.5, "y": 1.0})
    # the same false alarm in 36 s is 100 per hour: x's TPR never rises inside [0, 100)
    short = _table(36, {0: [(2, 5, 0.9), (30, 32, 0.95)], 1: [(6, 8, 0.8)]})
    assert psds_of_scores({"a": short}, ref) == (0.5, {"x": 0.0, "y": 1.0})


def test_score_tables_round_trip_and_evaluate_events_scores(tmp_path):
    from ast_audio.infer.scoring import read_score_tables, write_score_table

    ref = tmp_path / "ref.tsv"
    ref.write_text("filename\tonset\toffset\tevent_label\na.wav\t2.0\t5.0\tx\na.wav\t6.0\t8.0\ty\nb.wav\n")
    scores = tmp_path / "scores"
    scores.mkdir()
    hop = 0.1  # 0.1 * i is not exact in binary: the 6-decimal times still chain
    a = _table(72, {0: [(2, 5, 0.9), (30, 32, 0.95)], 1: [(6, 8, 0.123456789)]})
    b = _table(36, {})
    for name, t in (("a", a), ("b", b)):
        write_score_table(scores / f"{name}.tsv", [i * hop for i in range(len(t.scores))],
                          [(i + 1) * hop for i in range(len(t.scores))], t.scores, t.labels)  # fmt: skip
    back = read_score_tables(scores)
    assert sorted(back) == ["a", "b"] and back["a"].labels == ["x", "y"] and back["b"].duration == 36.0
    assert np.abs(back["a"].scores - a.scores).max() <= 5e-7 and np.abs(back["a"].times - a.times).max() <= 5e-7
    out = run_main("evaluate-events", "--ref", ref, "--scores", scores, "--format", "json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    # b.wav adds 36 s with no alarm: x's false alarm is 1 per 108 s = 33.3/h; x's area (100 - 33.3) / 100
    x = 1 - 3600 / 108 / 100
    assert abs(got["class_wise_psds"]["x"] - x) < 1e-6 and got["class_wise_psds"]["y"] == 1.0
    assert abs(got["psds"] - (x + 1) / 2) < 1e-6 and got["psds_from"] == "scores" and got["event_f1"] is None
    (scores / "c.tsv").write_text("onset\toffset\tx\ty\n0.0\t1.0\t0.5\t0.5\n")
    out = run_main("evaluate-events", "--ref", ref, "--scores", scores)
    assert out.returncode == 2 and "score tables and reference name different files: not in the reference: c" in out.stderr
    (scores / "c.tsv").write_text("onset\toffset\tx\ty\n0.0\t1.0\t0.5\t0.5\n1.5\t2.0\t0.5\t0.5\n")
    out = run_main("evaluate-events", "--ref", ref, "--scores", scores)
    assert out.returncode == 2 and out.stderr.strip() == (
        f"ast-audio: error: {scores / 'c.tsv'}: frames must follow each other: each onset the previous offset, "
        "each offset after its onset"
    )


def test_psds_of_event_tables_is_one_operating_point(tmp_path):
    (tmp_path / "ref.tsv").write_text(REF)
    (tmp_path / "pred.tsv").write_text(PRED)
    out = run_main("evaluate-events", "--ref", tmp_path / "ref.tsv", "--pred", tmp_path / "ref.tsv", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["psds"] == 1.0 and json.loads(out.stdout)["psds_from"] == "events"
    # b.wav's cat (4-8 s) missed, no false alarm: cat's TPR is 1/2 (a.wav's cat, 5.2-6.0 against 5-6,
    # covers 80% of it: GTC 0.7 met), dog's 1: PSDS 0.75
    (tmp_path / "pred.tsv").write_text(PRED.replace("5.300", "5.200"))
    out = run_main("evaluate-events", "--ref", tmp_path / "ref.tsv", "--pred", tmp_path / "pred.tsv", "--format", "json")
    got = json.loads(out.stdout)
    assert got["class_wise_psds"] == {"cat": 0.5, "dog": 1.0} and got["psds"] == 0.75
    none = run_main("evaluate-events", "--ref", tmp_path / "ref.tsv")
    assert none.returncode == 2 and "give predicted events (--pred) or score tables (--scores)" in none.stderr
