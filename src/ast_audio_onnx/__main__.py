"""``python -m ast_audio_onnx MODEL.onnx FILE...``: the top labels of each file, without torch."""

from __future__ import annotations

import argparse
import sys

from . import RunnerError, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ast_audio_onnx",
        description="Tag audio files with a waveform-in ast-audio ONNX file (onnxruntime, no torch).",
    )
    parser.add_argument("model", help="the .onnx file (ast-audio export --format onnx --input waveform)")
    parser.add_argument("files", nargs="+", help="audio files (any rate and channels soundfile reads)")
    parser.add_argument("-k", "--top-k", type=int, default=5, help="labels shown per file (5)")
    parser.add_argument("--aggregate", choices=["max", "mean"], default="max", help="over a long file's windows")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    try:
        model = load(args.model, threads=args.threads)
    except RunnerError as err:
        print(f"ast_audio_onnx: error: {err}", file=sys.stderr)
        return 2
    status = 0
    for path in args.files:
        try:
            scores = model.predict(path, aggregate=args.aggregate)
        except RunnerError as err:
            print(f"ast_audio_onnx: error: {err}", file=sys.stderr)
            status = 1
            continue
        present = model.present(scores)
        print(path)
        for label, p in model.top(scores, args.top_k):
            mark = "  *" if present is not None and label in present else ""
            print(f"  {p:.4f}  {label}{mark}")
    return status


if __name__ == "__main__":
    sys.exit(main())
