"""`ast-audio evaluate-events`: sed_eval's event- and segment-based scores on hand-counted tables."""

from __future__ import annotations

import json

from conftest import run_cli

from ast_audio.evaluate_events import read_events

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
    out = run_cli("evaluate-events", "--ref", tmp_path / "ref.tsv", "--pred", tmp_path / "pred.tsv", "--format", "json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    # TP 2, FP 1, FN 2: precision 2/3, recall 1/2, F1 4/7; ER = (S + D + I) / N = (0 + 2 + 1) / 4
    assert (got["event_precision"], got["event_recall"]) == (round(2 / 3, 6), 0.5)
    assert got["event_f1"] == round(4 / 7, 6) and got["event_error_rate"] == 0.75
    assert got["reference_events"] == 4 and got["predicted_events"] == 3
    assert got["class_wise_event_f1"]["dog"] == 1.0
    assert 0 < got["segment_f1"] < 1
    perfect = run_cli("evaluate-events", "--ref", tmp_path / "ref.tsv", "--pred", tmp_path / "ref.tsv")
    assert perfect.returncode == 0 and "F1 1.0000" in perfect.stdout


def test_bad_tables_are_one_line_errors(tmp_path):
    (tmp_path / "ref.tsv").write_text(REF)
    (tmp_path / "bad.tsv").write_text("a.wav\t3.0\t1.0\tdog\n")
    out = run_cli("evaluate-events", "--ref", tmp_path / "ref.tsv", "--pred", tmp_path / "bad.tsv")
    assert out.returncode == 2 and out.stderr.strip() == f"ast-audio: error: {tmp_path / 'bad.tsv'}: line 1: onset 3.0 after offset 1.0 (or negative)"
    (tmp_path / "other.tsv").write_text("c.wav\t1.0\t2.0\tdog\n")
    out = run_cli("evaluate-events", "--ref", tmp_path / "ref.tsv", "--pred", tmp_path / "other.tsv")
    assert out.returncode == 2 and "predictions for files not in the reference: c.wav" in out.stderr
    assert read_events(tmp_path / "ref.tsv")[1] == {"filename": "a.wav", "onset": 5.0, "offset": 6.0, "event_label": "cat"}
