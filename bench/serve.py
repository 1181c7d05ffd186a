"""The service under load: ``ast-audio serve`` on loopback against the offline batched rate.

One command (``.venv/bin/python bench/serve.py``, also run by ``make bench``). A model of
the given size (default: tiny224 with 12 layers and 1024 frames; random weights, 527
classes) is saved, ``--clips`` 16 kHz wav files of one model input each are
written, and on the same machine in the same run:

1. **offline**: ``AudioTagger.predict`` on the file paths (decode, features, model, batches
   of ``--batch-size`` windows), after a warm-up call: clips/s;
2. **service**: ``ast-audio serve`` (the same batch size; the queue gathers up to
   ``--batch-size`` requests, waiting at most 10 ms) started as a subprocess on 127.0.0.1,
   warmed up, then ``--concurrency`` clients post the files (raw bodies) until
   ``--requests`` requests are answered; the wall time gives clips/s, each request's time
   its latency (p50, p99), ``/metrics`` the requests each engine call served.

Writes its table between the ``bench:serve`` markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import torch
from common import BENCHMARKS, ROOT, machine, publish, timed

from ast_audio import ASTConfig, ASTModel, AudioTagger, ModelInfo, save_checkpoint
from ast_audio.audio.synth import SAMPLE_RATE, make_clip

START, END = "<!-- bench:serve:start -->", "<!-- bench:serve:end -->"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, batch_size: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "ast_audio", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
           "--batch-size", str(batch_size), "--max-batch", str(batch_size), "--timeout", "600"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ast-audio serve ended: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("ast-audio serve did not start within 300 s")


async def load(url: str, bodies: list[bytes], requests: int, concurrency: int) -> tuple[float, list[float], int]:
    """Wall seconds, each request's latency, and how many were answered 200."""
    latencies: list[float] = []
    ok = 0
    counter = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal ok
        for i in counter:
            begin = time.perf_counter()
            r = await http.post(url + "/api/predict?top_k=1", content=bodies[i % len(bodies)])
            latencies.append(time.perf_counter() - begin)
            ok += r.status_code == 200

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as http:
        begin = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return time.perf_counter() - begin, latencies, ok


def batch_stats(url: str) -> tuple[float, float]:
    """Engine calls and requests served, from /metrics."""
    text = httpx.get(url + "/metrics").text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("ast_audio_batch_requests_"))
    return float(values["ast_audio_batch_requests_count"]), float(values["ast_audio_batch_requests_sum"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-size", default="tiny224")
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--input-tdim", type=int, default=1024, help="model input frames (1024: 10.255 s)")
    parser.add_argument("--clips", type=int, default=16, help="distinct wav files (16)")
    parser.add_argument("--requests", type=int, default=64, help="requests of the load phase (64)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (32)")
    parser.add_argument("--batch-size", type=int, default=8, help="model windows per forward pass (8)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads, offline and in the server (default: torch's)")  # fmt: skip
    parser.add_argument("--note", default="", help="a sentence added under the table (e.g. what else ran)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = ASTConfig(label_dim=527, input_tdim=args.input_tdim, model_size=args.model_size, depth=args.depth)
    info = ModelInfo(labels=[f"class {i}" for i in range(527)], multilabel=True, dataset_mean=-4.27, dataset_std=4.57)
    model = ASTModel.from_config(cfg, info)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = save_checkpoint(model, folder / "model.safetensors")
        seconds = model.input_contract.samples / SAMPLE_RATE
        rng = np.random.default_rng(0)
        paths = []
        for i in range(args.clips):
            paths.append(folder / f"clip{i}.wav")
            sf.write(paths[-1], make_clip(i % 10, rng, seconds), SAMPLE_RATE, subtype="PCM_16")
        bodies = [p.read_bytes() for p in paths]
        offline_paths = [paths[i % len(paths)] for i in range(args.requests)]

        tagger = AudioTagger(checkpoint, device="cpu", batch_size=args.batch_size)
        tagger.predict(paths[: args.batch_size], top_k=1)  # warm-up
        offline = args.requests / timed(lambda: tagger.predict(offline_paths, top_k=1), 2, warm=False)

        proc, url = start_server(checkpoint, args.batch_size, args.threads)
        try:
            asyncio.run(load(url, bodies, args.batch_size, args.batch_size))  # warm-up
            calls0, served0 = batch_stats(url)
            wall, latencies, ok = asyncio.run(load(url, bodies, args.requests, args.concurrency))
            calls, served = batch_stats(url)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    load_after = os.getloadavg()[0]
    rate = args.requests / wall
    p50, p99 = np.percentile(latencies, [50, 99])
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        START,
        "## Service under load (`bench/serve.py`)",
        "",
        f"{args.model_size}, depth {args.depth}, {args.input_tdim} frames ({seconds:.2f} s wav files, one model "
        f"window each), fp32, batches of {args.batch_size} windows, {args.threads} torch thread(s) offline and in the "
        f"server. Run {when} on {machine()}. The offline row is `AudioTagger.predict` on {args.requests} file "
        f"paths (best of 2); the service rows are `ast-audio serve` on "
        f"127.0.0.1 (a subprocess on the same cores), {args.concurrency} concurrent clients posting the same "
        f"files as raw bodies, {args.requests} requests after a warm-up.",
        "",
        "| path | clips/s | vs offline | p50 latency | p99 latency | requests per engine call |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| offline, `AudioTagger.predict` (batched) | {offline:.2f} | 1.00x | | | |",
        f"| `ast-audio serve`, {args.concurrency} clients | {rate:.2f} | {rate / offline:.2f}x | {p50:.2f} s | "
        f"{p99:.2f} s | {(served - served0) / max(1, calls - calls0):.1f} |",
        "",
        f"{ok} of {args.requests} requests answered 200. Under load the service reaches {rate / offline:.0%} of "
        "the offline batched rate (goal: at least 80%). The load clients, the HTTP server and the model share the "
        "machine's cores, and this machine's CPU is shared with other jobs (1-minute load average "
        f"{load_before:.1f} at the start, {load_after:.1f} at the end, on {os.cpu_count()} cores), so both figures "
        "move from run to run; the ratio, measured in the same run, moves less.",
    ]
    if rate > offline:
        lines += ["", "Above 1x is possible: the service decodes uploads on other threads while the model computes, "
                  "which the offline call does one after the other, and on a busy machine more runnable threads get a "
                  "larger share of the CPU. Latency under this load is mostly waiting in the queue: about "
                  "concurrency / throughput."]  # fmt: skip
    if args.note:
        lines += ["", args.note]
    lines.append(END)
    return publish(lines, args, START, END)


if __name__ == "__main__":
    sys.exit(main())
