"""The service on a real socket (uvicorn on 127.0.0.1) under clients that misbehave: half-sent
uploads held open, clients that vanish mid-body, and the command's own port handling.

Each test is bounded in count (ten clients) and in time (a one-second ``--timeout``), so a
service that holds a connection forever fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import socket
import threading
import time

import numpy as np
import pytest
import soundfile
import uvicorn
from conftest import run_main
from factories import SR, noise

from ast_audio.infer import AudioTagger
from ast_audio.serve import ServeSettings, create_app, listen

pytestmark = pytest.mark.usefixtures("one_thread")

CLIENTS = 10
TIMEOUT = 1.0  # seconds: the service's --timeout, so also how long a body may take to arrive


@pytest.fixture(scope="module")
def tagger(checkpoints):
    return AudioTagger(checkpoints["single"], device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def wav() -> bytes:
    out = io.BytesIO()
    soundfile.write(out, noise(1.0), SR, format="WAV", subtype="PCM_16")
    return out.getvalue()


@contextlib.contextmanager
def serving(tagger, **settings):
    """The app served by uvicorn on a free port of 127.0.0.1, in a thread; yields the port."""
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(tagger, ServeSettings(**settings)), log_level="warning",
                            timeout_graceful_shutdown=TIMEOUT)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive()


def request(port: int, head: bytes, body: bytes = b"", timeout: float = 10) -> bytes:
    """One raw HTTP/1.1 request; the answer's bytes (until the server closes or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(head + body)
        return read_answer(conn)


def read_answer(conn: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := conn.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, rest = data.partition(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
                if length and len(rest) >= int(length.group(1)):
                    break
    return data


def upload_head(length: int) -> bytes:
    return (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()  # fmt: skip


def metrics(port: int) -> str:
    return request(port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").decode()


def test_half_sent_uploads_are_answered_408_after_the_timeout_and_the_service_goes_on(tagger, wav):
    with serving(tagger, timeout=TIMEOUT) as port:
        conns = []
        started = time.monotonic()
        for _ in range(CLIENTS):  # each announces the whole file and sends a tenth of it, then waits
            conn = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT + 10)
            conn.sendall(upload_head(len(wav)) + wav[: len(wav) // 10])
            conns.append(conn)
        answers = [read_answer(conn) for conn in conns]
        took = time.monotonic() - started
        for conn in conns:
            conn.close()
        fine = request(port, upload_head(len(wav)), wav)
        text = metrics(port)
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[0][:300]
    assert all(b"request body not received within 1 s (--timeout)" in a for a in answers)
    assert took < TIMEOUT + 8  # dropped at the timeout, not held open
    assert fine.startswith(b"HTTP/1.1 200"), fine[:300]
    assert f'route="/api/predict",status="408"}} {CLIENTS}' in text
    assert 'status="500"' not in text


def test_clients_that_vanish_mid_body_are_one_log_line_each_and_not_a_500(tagger, wav, caplog):
    with caplog.at_level(logging.INFO), serving(tagger, timeout=30.0) as port:
        for _ in range(CLIENTS):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(upload_head(len(wav)) + wav[: len(wav) // 3])
        deadline = time.monotonic() + 20
        while (text := metrics(port)).count('status="499"') == 0 or f'status="499"}} {CLIENTS}' not in text:
            assert time.monotonic() < deadline, text
            time.sleep(0.05)
        fine = request(port, upload_head(len(wav)), wav)
    assert fine.startswith(b"HTTP/1.1 200"), fine[:300]
    assert 'status="500"' not in text
    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(gone) == CLIENTS and all("\n" not in r.getMessage() and r.exc_info is None for r in gone)
    assert not [r for r in caplog.records if r.exc_info or "Exception in ASGI" in r.getMessage()]


def test_serve_refuses_a_port_out_of_range_and_a_busy_port_before_its_banner(checkpoints):
    out = run_main("serve", "--checkpoint", checkpoints["single"], "--port", "99999")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "argument --port: must be in [1, 65535], got 99999" in out.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = run_main("serve", "--checkpoint", checkpoints["single"], "--port", port)
    assert out.returncode == 2 and out.stdout == "", out.stdout  # no "Ctrl-C stops" banner
    assert out.stderr.strip().splitlines() == [f"ast-audio: error: 127.0.0.1:{port}: cannot listen there "
                                               "(Address already in use)"]  # fmt: skip


def test_listen_gives_a_socket_that_serves_and_names_a_bad_host():
    sock = listen("127.0.0.1", 0)
    try:
        assert sock.getsockname()[0] == "127.0.0.1" and sock.getsockname()[1] > 0
    finally:
        sock.close()
    from ast_audio.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^no-such-host\.invalid:8000: cannot listen there"):
        listen("no-such-host.invalid", 8000)


def test_the_upload_that_arrives_whole_in_time_is_answered_as_before(tagger):
    slow = io.BytesIO()
    soundfile.write(slow, np.zeros(SR, dtype=np.float32), SR, format="WAV", subtype="PCM_16")
    body = slow.getvalue()
    with serving(tagger, timeout=5.0) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(upload_head(len(body)))
        for i in range(0, len(body), len(body) // 4):  # in four parts, a tenth of a second apart
            time.sleep(0.1)
            conn.sendall(body[i : i + len(body) // 4])
        answer = read_answer(conn)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
