"""What a recipe does with its best model once training is done: score it on each held-out
split with an evaluation report (:mod:`ast_audio.train.report`), and store the open-set
threshold (:mod:`ast_audio.infer.openset`) calibrated on its validation clips."""

from __future__ import annotations

import logging
from pathlib import Path

from ..data.datafiles import read_datafile

log = logging.getLogger(__name__)

MISTAKES = 20  # the most confident mistakes each report lists


def calibrate_open_set(best: Path, valid: str, label_csv: str, tpr: float, cfg) -> dict:
    """Store in the best model the open-set threshold (:mod:`ast_audio.infer.openset`, score
    ``max_prob``) that keeps ``tpr`` of the validation clips of the known classes (the none
    label's clips left out), so ``predict`` and the timeline answer "unknown" below it;
    ``tpr = 0``: none stored. Computed in fp32, so a rerun stores the same threshold."""
    from dataclasses import replace

    from ..checkpoints.load import load_model, save_checkpoint
    from ..infer.engine import AudioTagger
    from ..infer.openset import calibrate, known_clips

    if tpr == 0:
        return {}
    model = load_model(best)
    data = read_datafile(valid, label_csv)
    wavs = known_clips(data, model.info.extra.get("none_label"))
    if not wavs:
        log.warning("folder recipe: no validation clips of the known classes; no open-set threshold stored")
        return {}
    tagger = AudioTagger(model, device=cfg.device, batch_size=max(1, cfg.batch_size), precision="fp32")
    result = calibrate(tagger, wavs, tpr=tpr)
    model.info = replace(model.info, extra={**model.info.extra, "open_set": result})
    save_checkpoint(model.cpu(), best)
    return {"open_set": result}


def evaluate_splits(best: Path, splits: dict[str, str], label_csv: str, exp: Path, cfg) -> dict:
    """The one place the recipe scores its best model: each split's datafile (``valid``, and
    ``test`` with ``test_dir``), with its evaluation report (per-class table, confusion, the
    most confident mistakes, ``report.html``) in ``EXP/report/<split>/``;
    ``{"valid_acc": ..., "valid_report": ..., "test_acc": ..., "test_report": ...}``."""
    from ..train.evaluate import evaluate
    from ..train.report import write_html, write_report_files

    scores: dict = {}
    for split, datafile in splits.items():
        ev = evaluate([best], datafile, label_csv, batch_size=max(1, cfg.batch_size), device=cfg.device)
        out = exp / "report" / split
        files = write_report_files(ev, out, MISTAKES)
        scores[f"{split}_acc"] = ev.results[0][1].acc
        scores[f"{split}_report"] = str(write_html(ev, out / "report.html", files, MISTAKES))
    return scores
