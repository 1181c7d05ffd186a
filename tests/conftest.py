"""Shared fixtures and helpers of the test suite.

- The ``ast-audio`` command in this process: :func:`run_main` (``cli.main.main(argv)``, the
  environment and result of :func:`run_cli`, without the ~2 s a fresh interpreter spends
  importing torch), and :func:`cli_in_process` for quick parser-level checks.
- The ``ast-audio`` command as a real subprocess, on the sources these tests import, where the
  process boundary is what is tested (the entry point, kill -9 and resume, stdin, output of C
  libraries or at interpreter exit, a fresh process's threads, allocator or imports):
  :func:`run_cli` (and :func:`ok` to require exit 0), :func:`run_torchrun`, :func:`start_cli`
  in the background with :func:`wait_for_file`, :func:`run_bench` for a benchmark script, and
  :func:`cli_env` for any other subprocess.
- :class:`Server`: files over HTTP on 127.0.0.1 (downloads, truncated transfers).
- Fixtures: ``one_thread``, ``ast_home``, ``toy_model`` (a trained tiny model, per session),
  and, per module, ``files`` (real audio of each
  format), ``checkpoints`` (the tiny checkpoints) and ``folder`` (a folder to tag, with
  bad files).

What the tests build (audio signals and writers, tiny models and checkpoints) is in
``factories.py``; datasets in the layouts their authors distribute are in ``layouts.py``.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

import pytest

# Under pytest-xdist (make test) the workers share the cores: each worker, and the commands it
# starts, gets its share of threads instead of every worker's torch taking them all (torch reads
# OMP_NUM_THREADS when it is imported, just below). A thread count set from outside is kept.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _workers))

import torch  # noqa: E402
from factories import SR, chirp, noise, write_audio, write_empty, write_text_as_audio, write_tiny_checkpoints

import ast_audio


def pytest_collection_modifyitems(config, items):
    """Files that hold a test marked ``slow`` run first (each file's tests keep their order and
    stay together): ``make test`` spreads files over two workers (pytest-xdist, ``--dist
    loadfile``), and a long file started last would leave the other worker idle at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


# --------------------------------------------------------------------------- the CLI as a subprocess

SRC = Path(ast_audio.__file__).resolve().parents[1]  # the sources these tests import
CLI = [sys.executable, "-m", "ast_audio"]  # the `ast-audio` command (cli.main), in this interpreter


def cli_env(**extra: object) -> dict[str, str]:
    """The environment of a subprocess: this one, with :data:`SRC` first on ``PYTHONPATH`` (so
    it runs this tree's sources, not another install), downloads off (``AST_AUDIO_OFFLINE=1``:
    no test reaches the network), then ``extra``."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "AST_AUDIO_OFFLINE": "1", **{k: str(v) for k, v in extra.items()}}


def run_cli(*args: object, timeout: float = 300, **env: object) -> subprocess.CompletedProcess:
    """``ast-audio ARGS...`` as a real subprocess (text output captured); ``env``: extra
    environment variables (``AST_AUDIO_HOME=path``)."""
    cmd = [*CLI, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(**env), timeout=timeout)


# The warning filters of a fresh interpreter (no -W, no PYTHONWARNINGS): what a subprocess shows.
FRESH_WARNING_FILTERS = [
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, ""),
    ("ignore", PendingDeprecationWarning, ""),
    ("ignore", ImportWarning, ""),
    ("ignore", ResourceWarning, ""),
]
FRESH_TORCH_SEED = 67280421310721  # torch.initial_seed() of a fresh process


def _show_warning(message, category, filename, lineno, file=None, line=None):
    (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))


def run_main(*args: object, timeout: float | None = None, **env: object) -> subprocess.CompletedProcess:
    """``ast-audio ARGS...`` in this process, through :func:`ast_audio.cli.main.main`: what
    :func:`run_cli` returns (``returncode``, ``stdout``, ``stderr`` as text), in the environment
    it gives (:func:`cli_env`: ``AST_AUDIO_OFFLINE=1``, then ``env``), without a new interpreter.

    The process-wide state a subprocess would start fresh is set up for the run and put back
    after it: the environment variables, torch's thread count (``OMP_NUM_THREADS`` in ``env``)
    and its global random generator (a fresh process's seed), the root logger (so ``main``'s
    ``logging.basicConfig`` writes to the captured stderr at the level ``-v`` asks for), and the
    warning filters (a fresh interpreter's, shown on the captured stderr, not recorded by
    pytest). ``SystemExit`` (argparse: 2 for a usage error, 0 for ``--help``) becomes the exit
    status; an uncaught exception is printed as a traceback with status 1, as Python does.
    ``timeout`` is accepted for :func:`run_cli`'s signature and not enforced."""
    from ast_audio.cli.main import main

    env = {"AST_AUDIO_OFFLINE": "1", **{k: str(v) for k, v in env.items()}}
    saved_env = {k: os.environ.get(k) for k in env}
    threads = torch.get_num_threads()
    rng = torch.random.get_rng_state()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out, err = (io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="\n") for _ in range(2))
    try:
        os.environ.update(env)
        if "OMP_NUM_THREADS" in env:
            torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
        torch.manual_seed(FRESH_TORCH_SEED)
        root.handlers.clear()
        root.setLevel(logging.WARNING)
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.resetwarnings()
            for action, category, module in reversed(FRESH_WARNING_FILTERS):
                warnings.filterwarnings(action, category=category, module=module)
            warnings.showwarning = _show_warning
            try:
                code = main([str(a) for a in args])
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
                if stop.code is not None and not isinstance(stop.code, int):
                    print(stop.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.flush()
        root.handlers[:] = handlers
        root.setLevel(level)
        torch.random.set_rng_state(rng)
        torch.set_num_threads(threads)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    texts = []
    for stream in (out, err):
        stream.flush()
        texts.append(stream.buffer.getvalue().decode("utf-8"))
    return subprocess.CompletedProcess(["ast-audio", *map(str, args)], code or 0, texts[0], texts[1])


def run_bench(script: str, *args: object, output: Path, timeout: float = 600) -> str:
    """``bench/SCRIPT ARGS... --output OUTPUT`` as a real subprocess (from ``bench/``, as ``make
    bench`` runs it), into an OUTPUT that already holds a line ``kept``; the text it wrote
    (the run must exit 0)."""
    output.write_text("# Benchmarks\n\nkept\n")
    bench = Path(__file__).resolve().parents[1] / "bench"
    run = subprocess.run(
        [sys.executable, str(bench / script), *map(str, args), "--output", str(output)],
        capture_output=True, text=True, timeout=timeout, cwd=bench, env=cli_env(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return output.read_text()


def run_torchrun(*args: object, nproc: int = 2, timeout: float = 300, **env: object) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node NPROC -m ast_audio ARGS...`` (CPU processes, one
    thread each), on the same sources and environment as :func:`run_cli`."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--standalone", "--nproc_per_node", str(nproc), "-m", "ast_audio", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(OMP_NUM_THREADS=1, **env), timeout=timeout)


def start_cli(*args: object, **env: object) -> subprocess.Popen:
    """``ast-audio ARGS...`` started in the background (stdout dropped, stderr piped)."""
    cmd = [*CLI, *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env(**env))


def ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """``out``, after checking that the command exited with 0 (else its output is the message)."""
    assert out.returncode == 0, f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr[-3000:]}"
    return out


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float, poll: float = 0.02) -> None:
    """Poll every ``poll`` seconds until ``path`` exists (files we write appear whole: they are
    renamed into place). Fails the test if ``proc`` ends first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            stderr = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"the command ended (exit {proc.returncode}) before {path} appeared:\n{stderr[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(poll)


def cli_in_process(*args: object) -> int:
    """The ``ast-audio`` parser and subcommand in this process: quick, output in ``capsys``, and
    library errors raised (not turned into exit status 2 as :func:`ast_audio.cli.main.main` does)."""
    from ast_audio.cli.main import build_parser

    parsed = build_parser().parse_args([str(a) for a in args])
    return parsed.func(parsed)


# --------------------------------------------------------------------------- a local HTTP server


class LocalServer:
    """An HTTP server on 127.0.0.1 (a free port) in a thread, for a ``with`` block; ``url`` is its root."""

    def _serve(self, handler) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class Server(LocalServer):
    """Serves ``files`` on 127.0.0.1; ``/cut/NAME`` announces the full length but stops halfway."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.hits: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.hits.append(self.path)
                name = self.path.rsplit("/", 1)[-1].split("?")[0]
                body = outer.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path.startswith("/cut/"):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._serve(Handler)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run as fast on one thread, and a busy machine cannot stall them: in this
    process and in the subprocesses the module starts (``OMP_NUM_THREADS=1``)."""
    before, env_before = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if env_before is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = env_before


@pytest.fixture
def ast_home(tmp_path, monkeypatch):
    """An empty checkpoint cache for this test (``$AST_AUDIO_HOME``)."""
    home = tmp_path / "ast-home"
    home.mkdir()
    monkeypatch.setenv("AST_AUDIO_HOME", str(home))
    monkeypatch.delenv("AST_AUDIO_OFFLINE", raising=False)
    return home


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Real audio, one of each kind the tagger meets: wav, flac at 44.1 kHz, mp3, a clip
    shorter than the model input and a 10 s float wav longer than it."""
    root = tmp_path_factory.mktemp("audio")
    return {
        "wav": write_audio(root / "tone_noise.wav", noise(2.0) + chirp(2.0) * 0.5, SR, subtype="PCM_16"),
        "flac": write_audio(root / "chirp.flac", chirp(1.0, 44100), 44100),
        "mp3": write_audio(root / "noise.mp3", noise(1.5, seed=3), SR, format="MP3"),
        "short": write_audio(root / "short.wav", noise(0.5, seed=4), SR, subtype="PCM_16"),
        "long": write_audio(root / "long.wav", noise(10.0, seed=5) + chirp(10.0) * 0.3, SR, subtype="FLOAT"),
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """The tiny checkpoints (``factories.write_tiny_checkpoints``): ``single`` and ``multi``."""
    return write_tiny_checkpoints(tmp_path_factory.mktemp("ck"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, list[Path], list[Path]]:
    """``(root, good, bad)``: good files (wav, flac, mp3, in a sub-folder too), a text file
    named .wav, a 0-byte .mp3, and files that are not audio by extension (ignored)."""
    root = tmp_path_factory.mktemp("clips")
    (root / "sub").mkdir()
    write_audio(root / "a.wav", noise(1.0), SR, subtype="PCM_16")
    write_audio(root / "sub" / "b.flac", chirp(5.0), SR)
    write_audio(root / "sub" / "c.mp3", noise(0.7, seed=2), SR, format="MP3")
    write_text_as_audio(root / "broken.wav", "this is not audio\n")
    write_empty(root / "sub" / "empty.mp3")
    (root / "notes.txt").write_text("ignored")
    (root / ".hidden.wav").write_text("ignored: hidden")
    good = [root / "a.wav", root / "sub" / "b.flac", root / "sub" / "c.mp3"]
    bad = [root / "broken.wav", root / "sub" / "empty.mp3"]
    return root, good, bad


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory) -> Path:
    """A tiny AST trained on the toy dataset (``factories.train_toy_model``: low tone, high tone,
    noise), for tests that need a predictable top label; trained once per session."""
    from factories import train_toy_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_toy_model(tmp_path_factory.mktemp("toy-model"))
    finally:
        torch.set_num_threads(threads)
