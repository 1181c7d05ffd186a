"""``ast-audio listen | calibrate | evaluate-events``: sound events live, thresholds, event metrics.

Thin commands over :meth:`ast_audio.infer.AudioTagger.stream`, :mod:`ast_audio.audio.sources`,
:func:`ast_audio.infer.events.calibrate_thresholds` and :mod:`ast_audio.infer.scoring`;
the detection and post-processing flags are ``predict --timeline``'s
(:func:`ast_audio.cli.infer.add_post_processing`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..audio.io import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from ..base.checks import number_arg
from ..base.runtime import PRECISIONS
from ..errors import ConfigError
from ..infer.openset import DEFAULT_SCORE, DEFAULT_TPR, SCORES
from .infer import _batch_size, add_post_processing, post_processing


def _rate(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import numpy as np

    from ..checkpoints.load import load_model, save_checkpoint
    from ..data.datafiles import match_datafile, read_datafile
    from ..infer.engine import AudioTagger
    from ..infer.events import calibrate_thresholds

    out = Path(args.out or args.checkpoint)
    if out.suffix not in (".safetensors", ".pt"):
        raise ConfigError(f"{out}: calibrated thresholds are saved in ast-audio's format; give --out FILE.safetensors")
    if args.open_set:
        return _calibrate_open_set(args, out)
    if (args.data is None) == (args.scenes is None):
        raise ConfigError("calibrate needs either --data (clips) or --scenes DIR (recordings with events)")
    if args.scenes is not None:
        return _calibrate_on_scenes(args, out)
    model = load_model(args.checkpoint)
    data = match_datafile(read_datafile(args.data, args.label_csv), model.info.labels, model.info.label_ids,
                          model.config.label_dim, args.checkpoint)  # fmt: skip
    tagger = AudioTagger(model, device=args.device, batch_size=args.batch_size, precision="fp32")  # thresholds of the reference
    predictions = tagger.predict([e.wav for e in data.entries], top_k=1)
    scores = np.stack([p.scores for p in predictions])  # (clips, C)
    thresholds = calibrate_thresholds(scores, data.targets())
    model.info = replace(model.info, contract=model.info.contract.replace(thresholds=[round(float(t), 6) for t in thresholds]))
    save_checkpoint(model.cpu(), out)
    names = model.info.labels or [f"class {i}" for i in range(len(thresholds))]
    print(f"{out}: per-class thresholds from {len(scores)} clips of {args.data}")
    for name, t in zip(names, thresholds, strict=True):
        print(f"  {t:.4f}  {name}")
    return 0


def _calibrate_open_set(args: argparse.Namespace, out: Path) -> int:
    """The open-set threshold from validation clips of the known classes, into ``info.extra["open_set"]``."""
    from dataclasses import replace

    from ..checkpoints.load import load_model, save_checkpoint
    from ..data.datafiles import read_datafile
    from ..infer.engine import AudioTagger
    from ..infer.openset import calibrate, known_clips

    if args.data is None or args.label_csv is None or args.scenes is not None:
        raise ConfigError("calibrate --open-set needs --data and --label-csv: validation clips of the known classes")
    model = load_model(args.checkpoint)
    if model.info.multilabel:
        raise ConfigError(f"{args.checkpoint}: --open-set is for single-label (softmax) checkpoints")
    data = read_datafile(args.data, args.label_csv)
    known = set(model.info.labels or data.labels.names)
    stray = [name for name in data.labels.names if name not in known]
    if stray:
        raise ConfigError(f"{args.label_csv}: label {stray[0]!r} is not one of the checkpoint's labels")
    wavs = known_clips(data, model.info.extra.get("none_label"))
    if not wavs:
        raise ConfigError(f"{args.data}: no clips of the known classes to calibrate on")
    tagger = AudioTagger(model, device=args.device, batch_size=args.batch_size, precision="fp32")
    result = calibrate(tagger, wavs, args.open_set_score, args.tpr)
    model.info = replace(model.info, extra={**model.info.extra, "open_set": result})
    save_checkpoint(model.cpu(), out)
    print(f"{out}: open-set threshold from {result['clips']} clips of {args.data}: {result['score']} >= "
          f"{result['threshold']:.4f} keeps {result['kept']:.1%} of them as known (target {args.tpr:.0%}); "
          "predict answers unknown below it")  # fmt: skip
    return 0


def _calibrate_on_scenes(args: argparse.Namespace, out: Path) -> int:
    from ..checkpoints.load import load_model, save_checkpoint
    from ..infer.engine import AudioTagger
    from ..infer.scenes import calibrate_on_scenes

    if args.threshold is not None:
        raise ConfigError("--threshold: calibrate --scenes chooses the thresholds; the other post-processing flags apply")
    model = load_model(args.checkpoint)
    calibration = calibrate_on_scenes(
        AudioTagger(model, device=args.device, batch_size=args.batch_size, precision="fp32"), args.scenes,
        post=post_processing(args), window=args.window, hop=args.hop,
    )  # fmt: skip
    from dataclasses import replace

    model.info = replace(model.info, contract=model.info.contract.replace(thresholds=[round(float(t), 6) for t in calibration.thresholds]))
    save_checkpoint(model.cpu(), out)
    print(f"{out}: per-class event thresholds from the scenes of {args.scenes}, by event F1 (sed_eval)")
    print(f"event F1: {calibration.before:.4f} with every class at 0.5, {calibration.after:.4f} calibrated")
    names = model.info.labels or [f"class {i}" for i in range(len(calibration.thresholds))]
    for name, t in zip(names, calibration.thresholds, strict=True):
        f1 = calibration.class_f1.get(name)
        print(f"  {t:.2f}  {name}" + ("" if f1 is None else f"  (F1 {f1[0]:.3f} -> {f1[1]:.3f})"))
    return 0


def _cmd_listen(args: argparse.Namespace) -> int:
    import signal

    from ..audio.sources import file_blocks, microphone_blocks, paced, stdin_source
    from ..infer.engine import AudioTagger
    from ..infer.events import EventChange

    tagger = AudioTagger(args.checkpoint, device=args.device, batch_size=args.batch_size, precision=args.precision)
    flag = {"stop": False}

    def stop() -> bool:
        return flag["stop"]

    def interrupted(signum, frame) -> None:  # Ctrl-C: the source ends, the stream closes open events
        flag["stop"] = True

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        if args.input is None:
            rate = args.rate or tagger.rate
            blocks = microphone_blocks(rate, args.block, stop, args.mic)
        elif args.input == "-":
            rate, blocks = stdin_source(args.rate or tagger.rate, args.block, stop, ffmpeg=args.ffmpeg)
        else:
            rate, blocks = file_blocks(args.input, args.block, stop)
            if not args.as_fast_as_possible:
                blocks = paced(blocks, rate, stop)
        table = args.format == "table" or (args.format is None and sys.stdout.isatty())
        for item in tagger.stream(blocks, rate, window=args.window, hop=args.hop, post=post_processing(args),
                                  top_k=3, frames_per_call=args.frames_per_call):  # fmt: skip
            if isinstance(item, EventChange):
                if table:
                    print(f"\r{item.time:9.2f}  {item.kind:5s}  {item.label}  ({item.score:.2f})" + " " * 20)
                else:
                    print(json.dumps(item.to_json()))
                sys.stdout.flush()
            elif table:
                top = "  ".join(f"{name} {score:.2f}" for name, score in item.labels)
                top = f"unknown (nearest: {top})" if item.known is False else top
                print(f"\r{item.end:9.2f}  {top}"[:100].ljust(100), end="", flush=True)
        if table:
            print()
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


def _cmd_evaluate_events(args: argparse.Namespace) -> int:
    from ..infer.scoring import score_events

    scores = score_events(args.ref, args.pred, scores=args.scores, durations=args.durations)
    if args.format == "json":
        print(json.dumps(scores.to_json(), indent=2))
        return 0
    print(f"reference events {scores.reference_events}" + ("" if args.pred is None else f", predicted {scores.predicted_events}"))
    if args.pred is not None:
        print(f"event-based (collar 200 ms, offset max(200 ms, 20%)): F1 {scores.event_f1:.4f}  "
              f"precision {scores.event_precision:.4f}  recall {scores.event_recall:.4f}  ER {scores.event_error_rate:.4f}")
        print(f"segment-based (1 s): F1 {scores.segment_f1:.4f}  ER {scores.segment_error_rate:.4f}")
    source = ("score tables, every threshold" if scores.psds_from == "scores"
              else "the event tables' operating point only; --scores DIR for every threshold")
    print(f"PSDS (DTC 0.7, GTC 0.7, alpha_ct 0, alpha_st 0, max eFPR 100/h; {source}): {scores.psds:.4f}")
    for label in sorted(set(scores.class_wise_event_f1) | set(scores.class_wise_psds)):
        f1 = scores.class_wise_event_f1.get(label)
        psds = scores.class_wise_psds.get(label)
        print(f"  {'' if f1 is None else f'F1 {f1:.4f}  '}{'' if psds is None else f'PSDS {psds:.4f}  '}{label}")
    return 0  # fmt: skip


def add_commands(sub) -> None:
    """Register ``listen``, ``calibrate`` and ``evaluate-events`` on the subparsers of ``ast_audio.cli.main``."""
    p = sub.add_parser("listen", help="live tagging: events as they start and end (microphone, file or stdin)",
                       description="Reads the microphone (sounddevice/PortAudio), or --input FILE paced in real "
                       "time, or --input - (raw 16-bit mono PCM at --rate; a WAV, FLAC, Ogg or MP3 file piped in is "
                       "decoded at its own rate; --ffmpeg: any format), and prints each "
                       "event as it starts and ends: JSON lines {event, label, time, score} (a live table on a "
                       "terminal). Ctrl-C closes open events cleanly.")  # fmt: skip
    p.add_argument("--checkpoint", action="extend", nargs="+", required=True, help="file, folder or published name")
    p.add_argument("--input", default=None, help="an audio file, or - for stdin (default: the microphone)")
    p.add_argument("--rate", type=number_arg(low=MIN_SAMPLE_RATE, high=MAX_SAMPLE_RATE, integer=True), default=None, help="stdin / microphone sample rate (the model's)")
    p.add_argument("--ffmpeg", action="store_true", help="stdin is any format ffmpeg decodes")
    p.add_argument("--mic", default=None, help="sounddevice input device (name or index)")
    p.add_argument("--as-fast-as-possible", action="store_true", help="--input FILE: do not pace in real time")
    p.add_argument("--block", type=number_arg(above=0, high=60, unit="seconds"), default=0.1, help="seconds of audio read at a time (0.1)")
    p.add_argument("--format", choices=["json", "table"], default=None, help="default: table on a terminal, else json")
    p.add_argument("-b", "--batch-size", type=_batch_size, default=8)
    p.add_argument("--frames-per-call", type=number_arg(low=1, high=1000, integer=True), default=1,
                   help="frames scored together: throughput for large models on a CPU, one hop of latency each (1); "
                   "base384 on 2 CPU cores: 10 with the default precision auto keeps up with real time (README)")  # fmt: skip
    p.add_argument("--device", default=None)
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="as in predict (auto)")
    add_post_processing(p)
    p.set_defaults(func=_cmd_listen)

    p = sub.add_parser("calibrate", help="per-class thresholds from labelled clips or scenes, into the checkpoint",
                       description="Scores every clip of --data and picks for each class the threshold with the best "
                       "clip F1; or detects the events of the recordings of --scenes DIR (synth --scenes' layout: "
                       "audio/, reference.tsv) at thresholds 0.05-0.95 and picks for each class the one with the "
                       "best event F1 (sed_eval, DCASE collars). Stores them in the checkpoint's metadata (predict: "
                       "present/absent per class; timeline and listen: the on thresholds of events).")  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="an ast-audio checkpoint (.safetensors or .pt)")
    p.add_argument("--data", default=None, help="labelled datafile (the training format)")
    p.add_argument("--label-csv", default=None,
                   help="the label CSV of the datafile, matched to the checkpoint's labels by name; default: the "
                   "datafile's labels matched by name (needs a checkpoint that stores them)")  # fmt: skip
    p.add_argument("--scenes", default=None, help="a folder of recordings with reference events (audio/, reference.tsv)")
    p.add_argument("--out", default=None, help="where to write the calibrated checkpoint (default: in place)")
    p.add_argument("--open-set", action="store_true",
                   help="instead of per-class thresholds: the threshold on a knownness score under which "
                   "predict answers unknown (none of the classes), from --data clips of the known classes")  # fmt: skip
    p.add_argument("--open-set-score", choices=SCORES, default=DEFAULT_SCORE,
                   help=f"--open-set: max_prob (largest softmax probability) or energy (log-sum-exp of the "
                   f"logits) ({DEFAULT_SCORE})")  # fmt: skip
    p.add_argument("--tpr", type=_rate, default=DEFAULT_TPR,
                   help=f"--open-set: the share of the known clips kept known ({DEFAULT_TPR})")
    p.add_argument("-b", "--batch-size", type=_batch_size, default=8)
    p.add_argument("--device", default=None)
    add_post_processing(p)
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("evaluate-events", help="score predicted events against reference events (sed_eval, sed_scores_eval)",
                       description="Event-based F1/ER (collar 200 ms on onsets, max(200 ms, 20%%) on offsets) and "
                       "segment-based F1/ER (1 s) by sed_eval; PSDS (DCASE scenario 1) by sed_scores_eval, over every "
                       "threshold of --scores tables (predict --timeline --scores-dir), else at the operating point "
                       "of the --pred tables. Event tables are DCASE TSV: filename, onset, offset, event_label.")  # fmt: skip
    p.add_argument("--ref", required=True, help="reference events (TSV)")
    p.add_argument("--pred", default=None, nargs="+",
                   help="predicted events (TSV); several: PSDS operating points, the first one scored for F1")  # fmt: skip
    p.add_argument("--scores", default=None,
                   help="a folder of frame score tables (predict --timeline --scores-dir): PSDS over every threshold")  # fmt: skip
    p.add_argument("--durations", default=None, help="filename<TAB>duration (TSV), e.g. synth --scenes' durations.tsv")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=_cmd_evaluate_events)

