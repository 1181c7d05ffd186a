"""``ast-audio predict | embed | export``: inference commands over :mod:`ast_audio.infer` and :mod:`ast_audio.checkpoints.export`.

Paths may be files or folders (walked recursively for audio files, in sorted order,
hidden files and folders skipped). A file that cannot be read is reported as one line
``ast-audio: error: <path>: <reason>`` on stderr and the others are still processed; the
exit status is then 1. Usage errors and fatal errors (a bad checkpoint, no input at all)
exit with 2, as every ``ast-audio`` command does.

Over 400 lines: predict, embed and export share the file walk, the output writers and the
failure reporting, which would otherwise be repeated per command.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from ..audio.io import AUDIO_EXTENSIONS, file_problem
from ..base.checks import number_arg
from ..base.fileio import atomic_write, dumps_json
from ..base.runtime import PRECISIONS
from ..errors import AstAudioError, AudioError, ConfigError
from ..infer.sharded import PredictOptions, shard_device, wants_shards, write_embeddings, write_predictions

GROUP_FILES = 64  # files per library call: output appears as it is ready, memory stays bounded
MAX_BATCH = 65536  # model windows per batch: beyond any memory, and --compile pads every batch to it


def _report(err: AstAudioError) -> None:
    print(f"ast-audio: error: {err}", file=sys.stderr, flush=True)


_top_k = number_arg(low=1, high=10_000, integer=True)  # the service's bound too
_batch_size = number_arg(low=1, high=MAX_BATCH, integer=True)


def expand_paths(paths: list[str]) -> tuple[list[str], list[AstAudioError]]:
    """Files named and audio files under folders (recursive, sorted), and errors for missing paths."""
    files: list[str] = []
    errors: list[AstAudioError] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = []
            for root, dirs, names in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [
                    os.path.join(root, n)
                    for n in names
                    if not n.startswith(".") and Path(n).suffix.lower() in AUDIO_EXTENSIONS
                ]
            files += sorted(found)
        elif path.exists():
            files.append(name)
        else:
            errors.append(AudioError(file_problem(name) or "file not found", name))
    return list(dict.fromkeys(files)), errors


def _groups(files: list[str], size: int):
    for i in range(0, len(files), size):
        yield files[i : i + size]


def _progress(total: int, quiet: bool):
    from tqdm.auto import tqdm

    # Off with -q, for a single file, and when stderr is not a terminal (tqdm's disable=None).
    return tqdm(total=total, unit="file", disable=True if quiet or total < 2 else None, leave=False)


class _Output:
    """Writes predictions or timelines as a table, JSON or CSV on stdout, as they come.

    JSON objects and CSV rows are the results' own (``to_json``, ``csv_rows``, ``CSV_HEADER``).
    """

    def __init__(self, fmt: str, timeline: bool, open_set=None):
        from ..infer.results import Prediction, Timeline

        self.fmt, self.timeline, self.open_set = fmt, timeline, open_set
        self.objects: list[dict] = []
        if fmt == "tsv" and not timeline:
            raise ConfigError("--format tsv (DCASE events) needs --timeline")
        delimiter = "\t" if fmt == "tsv" else ","
        self.csv = csv.writer(sys.stdout, lineterminator="\n", delimiter=delimiter) if fmt in ("csv", "tsv") else None
        if self.csv:
            header = Timeline.CSV_HEADER if timeline else Prediction.csv_header(open_set is not None)
            header = Timeline.TSV_HEADER if fmt == "tsv" else header
            self.csv.writerow(header)

    def prediction(self, p) -> None:
        if self.fmt == "json":
            self.objects.append(p.to_json())
        elif self.csv:
            self.csv.writerows(p.csv_rows())
        else:
            windows = f", {len(p.spans)} windows, max over windows" if len(p.spans) > 1 else ""
            print(f"{p.path}  ({p.duration:.2f} s{windows})")
            for rank, (name, score) in enumerate(p.labels, 1):
                print(f"  {rank:2d}  {score:.4f}  {name}")
            if p.present is not None:
                print(f"  present (calibrated thresholds): {', '.join(p.present) or 'none'}")
            if p.known is not None:
                print(f"  answer: {p.label}  ({self.open_set.reason(p.known, p.open_set_score)})")
        sys.stdout.flush()

    def timeline_of(self, t) -> None:
        if self.fmt == "json":
            self.objects.append(t.to_json())
        elif self.csv:
            self.csv.writerows(t.tsv_rows() if self.fmt == "tsv" else t.csv_rows())
        else:
            print(f"{t.path}  ({t.duration:.2f} s, {len(t.windows)} windows)")
            for w in t.windows:
                top = ", ".join(f"{name} {score:.2f}" for name, score in w.labels)
                top = f"unknown (nearest: {top})" if w.known is False else top
                print(f"  {w.start:8.2f} - {w.end:8.2f}  {top}")
            print(f"  events ({len(t.events)}):")
            for e in t.events:
                print(f"  {e.start:8.2f} - {e.end:8.2f}  {e.label}  (peak {e.peak:.2f})")
        sys.stdout.flush()

    def close(self) -> None:
        if self.fmt == "json":
            print(dumps_json(self.objects, indent=2))  # standard JSON: a non-finite score is null


class _Failures:
    """Reports each file that could not be read (one stderr line) and counts them."""

    def __init__(self, errors=()):
        self.count = 0
        for err in errors:
            self(err)

    def __call__(self, err: AstAudioError) -> None:
        self.count += 1
        _report(err)


def _files_and_tagger(args: argparse.Namespace, device: str | None = None):
    """The audio files named by ``args.paths`` (folders searched), the tagger (on ``device``, default
    ``--device``), the failure counter."""
    from ..infer.engine import AudioTagger

    files, missing = expand_paths(args.paths)
    failures = _Failures(missing)
    if not files:
        raise ConfigError(
            f"no audio files found in {', '.join(args.paths)} ({', '.join(sorted(AUDIO_EXTENSIONS))})"
        )
    tagger = AudioTagger(
        args.checkpoint, device=device or args.device, batch_size=args.batch_size, precision=args.precision,
        compile=args.compile, open_set=not getattr(args, "no_open_set", False),
    )  # fmt: skip
    if getattr(args, "label_csv", None) is not None:  # predict: the table's names on the outputs they match by name
        from ..data.labels import match_labels, read_label_csv

        table, first = read_label_csv(args.label_csv), tagger.members[0]
        info = first.model.info
        for row, output in enumerate(match_labels(table, info.labels, info.label_ids, len(tagger.labels), first.name)):
            tagger.labels[output] = table.names[row]
    return files, tagger, failures


def _predict_options(args: argparse.Namespace) -> PredictOptions:
    """What the ``predict`` flags ask of the tagger, for every output path (stdout, ``--out DIR``)."""
    return PredictOptions(top_k=args.top_k, aggregate=args.aggregate, timeline=args.timeline, window=args.window,
                          hop=args.hop, method=args.events, post=post_processing(args))  # fmt: skip


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..infer.scenes import write_timeline_scores

    if args.scores_dir is not None and not (args.timeline and args.events == "frames") or args.scores_dir and args.out:
        raise ConfigError("--scores-dir writes detection frame scores: it needs --timeline (with --events frames), not --out")
    options = _predict_options(args)
    if wants_shards("predict", args.out):  # --out DIR: one shard per process, resumable (ast_audio.infer.sharded)
        files, tagger, on_error = _files_and_tagger(args, shard_device(args.device))
        done = write_predictions(args.out, files, tagger, options, csv_rows=args.format == "csv", on_error=on_error)
        print(f"{done.path}: {done.new} new files, {done.earlier} from an earlier run")
        return 1 if on_error.count else 0
    files, tagger, on_error = _files_and_tagger(args)
    if args.scores_dir is not None:
        stems = sorted(Path(f).stem for f in files)
        twice = sorted({s for a, s in zip(stems, stems[1:], strict=False) if a == s})
        if twice:
            raise ConfigError(f"--scores-dir: one table per file stem, and {twice[0]!r} names several files")
    out = _Output(args.format, args.timeline, tagger.open_set)
    with _progress(len(files), args.quiet) as bar:
        for group in _groups(files, GROUP_FILES):
            for result in options.results(tagger, group, on_error):
                if not args.timeline:
                    out.prediction(result)
                    continue
                out.timeline_of(result)
                if args.scores_dir is not None:
                    write_timeline_scores(result, args.scores_dir, tagger.ignored, options.post)
            bar.update(len(group))
    out.close()
    return 1 if on_error.count else 0


def post_processing(args: argparse.Namespace):
    """The event post-processing of the flags of :func:`add_post_processing`."""
    from ..infer.events import PostProcessing

    return PostProcessing(threshold=args.threshold, off_ratio=args.off_ratio, median=args.median,
                          min_duration=args.min_duration, min_gap=args.min_gap)  # fmt: skip


def add_post_processing(p: argparse.ArgumentParser) -> None:
    """Detection frames and event post-processing flags (predict --timeline, listen, calibrate); their
    defaults are the library's (:mod:`ast_audio.infer.frames`, :class:`~ast_audio.infer.events.PostProcessing`)."""
    from ..infer.events import MAX_MEDIAN, PostProcessing
    from ..infer.frames import DEFAULT_HOP, DEFAULT_WINDOW, MAX_SECONDS, MIN_HOP
    from ..infer.windows import DEFAULT_WINDOWS

    d = PostProcessing()
    seconds = number_arg(low=0, high=MAX_SECONDS, unit="seconds")  # the ranges PostProcessing and FrameGrid check
    p.add_argument("--window", type=number_arg(above=0, high=MAX_SECONDS, unit="seconds"), default=None,
                   help=f"seconds each frame's window sees (default {DEFAULT_WINDOW:g}, at most the model input; "
                   f"--events windows: {DEFAULT_WINDOWS[0]:g})")  # fmt: skip
    p.add_argument("--hop", type=number_arg(low=MIN_HOP, high=MAX_SECONDS, unit="seconds"), default=None,
                   help=f"seconds between frames (default {DEFAULT_HOP:g}; --events windows: {DEFAULT_WINDOWS[1]:g})")  # fmt: skip
    p.add_argument("--threshold", type=number_arg(low=0, high=1), default=None,
                   help="on threshold of every class (default: the checkpoint's calibrated ones, else 0.5)")  # fmt: skip
    p.add_argument("--off-ratio", type=number_arg(above=0, high=1), default=d.off_ratio,
                   help=f"hysteresis: a class goes off below off-ratio x its on threshold ({d.off_ratio})")  # fmt: skip
    p.add_argument("--median", type=number_arg(low=0, high=MAX_MEDIAN, unit="seconds"), default=d.median,
                   help=f"median filter, seconds ({d.median})")  # fmt: skip
    p.add_argument("--min-duration", type=seconds, default=d.min_duration,
                   help=f"shorter events are dropped, seconds ({d.min_duration})")  # fmt: skip
    p.add_argument("--min-gap", type=seconds, default=d.min_gap,
                   help=f"events of a class closer than this merge, seconds ({d.min_gap})")  # fmt: skip


def _cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    if wants_shards("embed", args.out):  # --out DIR: one shard per process, resumable (ast_audio.infer.sharded)
        if args.tokens or args.per_window:
            raise ConfigError("--tokens and --per-window write one .npz: give --out FILE.npz (without torchrun)")
        files, tagger, on_error = _files_and_tagger(args, shard_device(args.device))
        done = write_embeddings(args.out, files, tagger, on_error=on_error)
        print(f"{done.path}: {done.rows} rows ({done.earlier} files from an earlier run)")
        return 1 if on_error.count else 0
    files, tagger, on_error = _files_and_tagger(args)
    results = []
    with _progress(len(files), args.quiet) as bar:
        for group in _groups(files, GROUP_FILES):
            results += tagger.embed(group, tokens=args.tokens, on_error=on_error)
            bar.update(len(group))
    if not results:
        raise ConfigError("no file could be read; nothing written")
    if args.per_window:
        arrays = {
            "paths": np.array([r.path for r in results for _ in r.spans], dtype=str),
            "starts": np.array([s for r in results for s, _ in r.spans], dtype=np.float64),
            "ends": np.array([e for r in results for _, e in r.spans], dtype=np.float64),
            "embeddings": np.concatenate([r.window_embeddings for r in results]).astype(np.float32),
        }
        if args.tokens:
            arrays["tokens"] = np.concatenate([r.tokens for r in results]).astype(np.float32)
    else:
        arrays = {
            "paths": np.array([r.path for r in results], dtype=str),
            "durations": np.array([r.duration for r in results], dtype=np.float64),
            "embeddings": np.stack([r.embedding for r in results]).astype(np.float32),
        }
        if args.tokens:
            arrays["tokens"] = np.stack([r.tokens.mean(axis=0) for r in results]).astype(np.float32)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: numpy adds no ".npz" to the name
            np.savez(fh, **arrays)

    out = atomic_write(Path(args.out), write)
    rows, dim = arrays["embeddings"].shape
    unit = "windows" if args.per_window else "files"
    print(
        f"{out}: {rows} {unit} x {dim} dims"
        + (f", token grids {list(arrays['tokens'].shape[1:])}" if args.tokens else "")
    )
    return 1 if on_error.count else 0


def _cmd_export_web(args: argparse.Namespace) -> int:
    from ..checkpoints.load import load_model
    from ..serve.web import check_runtime, write_site

    check_runtime()  # before the model is loaded and exported
    out = write_site(args.out, load_model(args.checkpoint, input_tdim=args.input_tdim))
    print(f"wrote {out}: a static page that tags audio in the browser (index.html, static/, model.onnx); "
          "host the folder with any web server")  # fmt: skip
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..checkpoints.export import TOLERANCE, export_onnx, export_torchscript, verify_export
    from ..checkpoints.load import load_model

    if args.format == "web":
        return _cmd_export_web(args)
    out = Path(args.out)
    fmt = args.format or ("onnx" if out.suffix == ".onnx" or args.input == "waveform" else "torchscript")
    if fmt == "torchscript" and args.dynamic_time:
        raise ConfigError("--dynamic-time needs --format onnx (TorchScript is traced at a fixed length)")
    if args.input == "waveform":
        return _export_waveform(args, out, fmt)
    if args.int8:
        raise ConfigError("--int8 needs --input waveform (the graph with the features in it)")
    model = load_model(args.checkpoint, input_tdim=args.input_tdim)
    cfg = model.config
    if fmt == "onnx":
        export_onnx(model, out, dynamic_time=args.dynamic_time, dynamo=not args.legacy_exporter)
    else:
        export_torchscript(model, out)
    time_axis = f"16..{cfg.input_tdim}" if args.dynamic_time else str(cfg.input_tdim)
    print(f"wrote {out}: {fmt}, input [batch, {time_axis}, {cfg.input_fdim}] normalised fbank "
          f"(batch dynamic; features are not in the graph), logits [batch, {cfg.label_dim}]")  # fmt: skip
    if args.no_verify:
        return 0
    lengths = (
        sorted({cfg.input_tdim, max(16, cfg.input_tdim // 2), 16}, reverse=True)
        if args.dynamic_time
        else None
    )
    diff = verify_export(model, out, kind=fmt, lengths=lengths)
    runtime = "onnxruntime" if fmt == "onnx" else "TorchScript"
    print(
        f"verified: {runtime} logits match PyTorch within {TOLERANCE:g} on random input (max |diff| {diff:.2e})"
    )
    return 0


def _export_waveform(args: argparse.Namespace, out: Path, fmt: str) -> int:
    """``export --input waveform``: one graph from waveform to probabilities (checkpoints.onnx_waveform)."""
    from ..checkpoints.export import TOLERANCE
    from ..checkpoints.load import load_model
    from ..checkpoints.onnx_waveform import write_waveform_onnx

    if fmt != "onnx":
        raise ConfigError("--input waveform needs --format onnx")
    if args.dynamic_time:
        raise ConfigError("--dynamic-time is for the fbank graph; the waveform graph takes any length already")
    model = load_model(args.checkpoint, input_tdim=args.input_tdim)
    contract = model.input_contract
    agreement = write_waveform_onnx(model, out, int8=args.int8, verify=not args.no_verify,
                                    dynamo=not args.legacy_exporter)  # fmt: skip
    print(f"wrote {out}: onnx{' int8' if args.int8 else ''}, input waveform [batch, samples] mono float32 at "
          f"{contract.sample_rate} Hz (features in the graph; cut or padded to {contract.samples} samples), "
          f"probabilities [batch, {model.config.label_dim}] ({contract.activation})")  # fmt: skip
    if agreement is None:
        return 0
    if args.int8:
        print(f"int8 against PyTorch float32 on {agreement.clips} clips: max |diff| {agreement.max_abs_diff:.2e}, "
              f"top-1 agreement {100 * agreement.top1:.0f}%")  # fmt: skip
    else:
        print(f"verified: onnxruntime probabilities match PyTorch within {TOLERANCE:g} on {agreement.clips} "
              f"synthetic clips of three lengths (max |diff| {agreement.max_abs_diff:.2e})")  # fmt: skip
    return 0


def add_commands(sub) -> None:
    """Register ``predict``, ``embed`` and ``export`` on the subparsers of ``ast_audio.cli.main``."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "paths", nargs="+", metavar="PATH", help="audio files or folders (searched recursively)"
        )
        p.add_argument("--checkpoint", action="extend", nargs="+", required=True,
                       help="file, Hugging Face folder or published name; several (repeated or listed) = ensemble")  # fmt: skip
        p.add_argument(
            "-b", "--batch-size", type=_batch_size, default=8, help="model windows per batch (8)"
        )
        p.add_argument("--device", default=None,
                       help="cpu, cuda, cuda:1... (default: cuda if available; the CPU for --precision int8)")  # fmt: skip
        p.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto: bf16 on a CPU with bf16 units (AMX, AVX512-BF16) or a GPU with bf16, int8 on "
                       "other CPUs, fp32 on other GPUs, or what AST_AUDIO_PRECISION pins it to; fp32: the "
                       "reference; bf16 autocast; int8: dynamically quantised Linear layers, CPU only (auto)")  # fmt: skip
        p.add_argument("--compile", action="store_true",
                       help="torch.compile the model: slow start, batches padded to --batch-size")  # fmt: skip
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("predict", help="tag audio files: top labels, or a timeline of long recordings",
                       description="Top labels of each file (long files: max over model windows), or with "
                       "--timeline the scores of each window and the merged events.")  # fmt: skip
    common(p)
    p.add_argument("-k", "--top-k", type=_top_k, default=5, help="labels shown per file or window (5)")
    p.add_argument("--label-csv", default=None,
                   help="a label CSV (index,mid,display_name) whose display names the output shows: matched to the "
                   "checkpoint's labels by name, or by position where the checkpoint stores none")  # fmt: skip
    p.add_argument("--format", choices=["table", "json", "csv", "tsv"], default="table",
                   help="table; json (a list of objects); csv: path,rank,label,score (with --timeline: "
                   "the events, path,label,start,end,peak,onset,offset); tsv (--timeline): DCASE "
                   "filename,onset,offset,event_label")  # fmt: skip
    p.add_argument("--aggregate", choices=["max", "mean"], default="max",
                   help="how the model windows of a long file (or timeline window) combine (max)")  # fmt: skip
    p.add_argument("--timeline", action="store_true",
                   help="sound events in time: scores every --hop seconds, events with onsets and offsets")  # fmt: skip
    p.add_argument("--events", choices=["frames", "windows"], default="frames",
                   help="frames: post-processed detection frames (default); windows: long "
                   "--window/--hop windows (no post-processing) merged where a label reaches --threshold")  # fmt: skip
    p.add_argument("--out", default=None, help="a folder: one CSV/JSONL shard per process (torchrun), resumable")
    p.add_argument("--no-open-set", action="store_true",
                   help="always answer the nearest class: ignore the checkpoint's \"none of these\" decision "
                   "(calibrate --open-set, or a none label); with it, results say known true/false and "
                   "answer unknown")  # fmt: skip
    p.add_argument("--scores-dir", default=None,
                   help="--timeline: also write each file's frame scores (median-filtered as --median says) to "
                   "DIR/<file stem>.tsv (onset, offset, a column per class), the tables evaluate-events --scores "
                   "reads for PSDS")  # fmt: skip
    add_post_processing(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("embed", help="pooled embeddings of audio files into an .npz",
                       description="Writes paths, durations and embeddings [N, dim] (float32); a long file's "
                       "embedding is the mean over its model windows (--per-window: one row per window).")  # fmt: skip
    common(p)
    p.add_argument("--out", required=True, help="the .npz file to write; a folder (or under torchrun): .npy shards")
    p.add_argument("--tokens", action="store_true", help="also the token grids [N, f_dim, t_dim, dim]")
    p.add_argument("--per-window", action="store_true", help="one row per model window (adds starts, ends)")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("export", help="the model as ONNX or TorchScript, or one ONNX file from waveform to "
                       "scores (--input waveform), checked against PyTorch",
                       description="Exports the model alone (normalised fbank in, logits out; features stay "
                       "outside the graph) and checks the exported logits against PyTorch within 1e-4. With "
                       "--format onnx --input waveform: one graph from raw mono audio at the checkpoint's rate "
                       "to probabilities (Kaldi fbank, normalisation, model, sigmoid/softmax inside; labels and "
                       "thresholds in its metadata), which the torch-free `python -m ast_audio_onnx` runs; its "
                       "probabilities are checked against PyTorch within 1e-4 (--int8: agreement reported).")  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="file, Hugging Face folder or published name")
    p.add_argument("--format", choices=["onnx", "torchscript", "web"], default=None,
                   help="default: onnx for a .onnx file or --input waveform, else torchscript; web: a static "
                   "folder (the page and the model from waveform) that tags audio in the browser")  # fmt: skip
    p.add_argument("--out", required=True, help="the file to write (web: the folder)")
    p.add_argument("--dynamic-time", action="store_true",
                   help="ONNX: accept 16..input_tdim frames (positions cut by AST's rule); default fixed")  # fmt: skip
    p.add_argument("--input-tdim", type=number_arg(low=1, high=100_000, integer=True), default=None,
                   help="re-grid the model to this many frames first (see load_model)")  # fmt: skip
    p.add_argument("--input", choices=["fbank", "waveform"], default="fbank",
                   help="ONNX: fbank (normalised filterbanks in, logits out; default) or waveform (audio in, "
                   "probabilities out, features in the graph)")  # fmt: skip
    p.add_argument("--int8", action="store_true",
                   help="--input waveform: the linear layers quantised to int8 (onnxruntime dynamic quantisation)")
    p.add_argument("--legacy-exporter", action="store_true", help="ONNX: torch's TorchScript-based exporter")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check")
    p.set_defaults(func=_cmd_export)
