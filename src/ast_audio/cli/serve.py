"""``ast-audio serve``: a thin command over :mod:`ast_audio.serve`."""

from __future__ import annotations

import argparse

from ..base.checks import number_arg
from ..base.runtime import PRECISIONS
from ..errors import ConfigError


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from ..serve import listen, run
        from ..serve.app import ServeSettings, create_app
    except ImportError as err:
        raise ConfigError(f"ast-audio serve needs the serve extra ({err.name} is missing): "
                          "pip install 'ast-audio[serve]'") from None  # fmt: skip
    from ..infer.engine import AudioTagger

    if args.onnx is not None and not args.client_side:
        raise ConfigError("--onnx is the model of the client-side page: it needs --client-side")
    client_model = _client_model(args) if args.client_side else None
    tagger = AudioTagger(args.checkpoint, device=args.device, batch_size=args.batch_size, precision=args.precision,
                         compile=args.compile)  # fmt: skip
    if client_model is not None:
        _same_labels(client_model, tagger.labels)
    sock = listen(args.host, args.port)  # an address in use is one line, before the banner says it serves
    try:
        settings = ServeSettings(max_batch=args.max_batch, max_wait=args.max_wait_ms / 1000,
                                 max_upload_mb=args.max_upload_mb, max_duration=args.max_duration,
                                 timeout=args.timeout, max_streams=args.max_streams)  # fmt: skip
        print(f"ast-audio serve: http://{args.host}:{args.port}/ (API: /docs), {len(tagger.labels)} labels, "
              f"{tagger.device}, {tagger.precision} ({tagger.precision_reason}); Ctrl-C stops", flush=True)  # fmt: skip
        if client_model is not None:
            print(f"client-side: the page runs {client_model} in the browser (onnxruntime-web)", flush=True)
        app = create_app(tagger, settings, client_model=client_model)
        run(app, args.host, args.port, graceful_timeout=args.timeout, sock=sock)
    finally:
        sock.close()
    return 0


def _client_model(args: argparse.Namespace):
    """The waveform-in ONNX file the client-side page runs: ``--onnx``, or the checkpoint exported
    once into the cache. The vendored runtime is checked first, before any model is loaded."""
    from pathlib import Path

    from ..serve.web import cached_model, check_runtime, read_metadata

    check_runtime()
    if len(args.checkpoint) > 1:
        raise ConfigError(f"--client-side runs one checkpoint in the browser; got {len(args.checkpoint)}")
    if args.onnx is not None:
        read_metadata(args.onnx)
        return Path(args.onnx)
    return cached_model(args.checkpoint[0])


def _same_labels(path, labels) -> None:
    """The page's model and the API's checkpoint answer with the same labels, in the same order."""
    from ..serve.web import read_metadata

    if list(read_metadata(path)["labels"]) != list(labels):
        raise ConfigError("its labels are not the checkpoint's (the page and the API would disagree); export it "
                          "from this checkpoint, or leave --onnx out", path)  # fmt: skip


def add_commands(sub) -> None:
    """Register ``serve`` on the subparsers of ``ast_audio.cli.main``."""
    p = sub.add_parser("serve", help="a tagging service (HTTP API, live WebSocket) and a web page",
                       description="Serves POST /api/predict, /api/embed, /api/attention, WS /api/stream, GET /api/info, "
                       "/healthz, /metrics, the OpenAPI docs at /docs and the page at /.")  # fmt: skip
    p.add_argument("--checkpoint", action="extend", nargs="+", required=True,
                   help="file, Hugging Face folder or published name; several = ensemble")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    p.add_argument("--port", type=number_arg(low=1, high=65535, integer=True), default=8000, help="port (8000)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if available)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="as in predict (auto)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow start)")
    p.add_argument("-b", "--batch-size", type=number_arg(low=1, high=65536, integer=True), default=16,
                   help="model windows per forward pass (16)")  # fmt: skip
    p.add_argument("--max-batch", type=number_arg(low=1, high=4096, integer=True), default=16,
                   help="requests gathered into one engine call (16)")  # fmt: skip
    p.add_argument("--max-wait-ms", type=number_arg(above=0, high=60_000), default=10.0,
                   help="how long the queue waits for more requests after the first (10 ms)")  # fmt: skip
    p.add_argument("--max-upload-mb", type=number_arg(above=0, high=1_000_000), default=50.0,
                   help="larger bodies get 413 (50)")  # fmt: skip
    p.add_argument("--max-duration", type=number_arg(above=0, high=86_400, unit="seconds"), default=600.0,
                   help="seconds of audio per request; longer gets 422 (600)")  # fmt: skip
    p.add_argument("--timeout", type=number_arg(above=0, high=86_400, unit="seconds"), default=60.0,
                   help="seconds until a request is answered with 503 (a request body not whole by then: 408); "
                   "also the graceful-shutdown limit (60)")  # fmt: skip
    p.add_argument("--max-streams", type=number_arg(low=1, high=10_000, integer=True), default=16,
                   help="live WebSocket streams at once (16)")  # fmt: skip
    p.add_argument("--client-side", action="store_true",
                   help="the page runs the model in the visitor's browser (onnxruntime-web, WebAssembly): audio "
                   "dropped or recorded there never leaves it; the model is exported once into the cache "
                   "(or --onnx); needs `make vendor`")  # fmt: skip
    p.add_argument("--onnx", default=None, metavar="FILE",
                   help="--client-side: this waveform-in ONNX file (export --format onnx --input waveform) instead")
    p.set_defaults(func=_cmd_serve)
