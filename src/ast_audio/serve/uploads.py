"""Request bodies in, waveforms out, and the guard that bounds every body.

- :class:`Guard` wraps the whole ASGI app: a body over the limit is answered with 413
  before it is read whole (at once from ``Content-Length``, else as soon as the bytes
  received pass the limit, whatever the handler was doing); a body not whole within the
  timeout (a slow or half-sent upload) with 408; a client that goes away mid-body is one
  log line and counted as 499, not as the service's error; every answer is counted in the
  :class:`~ast_audio.serve.metrics.Metrics`.
- :func:`read_upload` takes the audio from the raw body or a multipart ``file`` field.
- :func:`decode` writes it to a private temporary file (``mkstemp``: mode 0600, a name of
  its own; only a known audio extension of the client's file name is kept, no other part
  of it), decodes it with :func:`~ast_audio.audio.io.load_audio` (every check of the library:
  undecodable, truncated, NaN, unsupported rate) and always removes the file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from pathlib import PurePath

import torch

from ..audio.io import AUDIO_EXTENSIONS, audio_info, load_audio
from ..errors import AudioError
from .metrics import Metrics

__all__ = ["GONE", "Guard", "Rejected", "decode", "read_upload"]

log = logging.getLogger(__name__)


class Rejected(Exception):
    """A request the service answers with ``status`` and ``reason`` (JSON ``{"detail": reason}``)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _TooLarge(Exception):
    pass


class _Slow(Exception):
    """The body did not arrive within the timeout."""


class _Gone(Exception):
    """The client went away before its body was whole."""


GONE = 499  # the status counted for a client that went away (no answer reached it): nginx's "client closed request"


class Guard:
    """ASGI wrapper: the body size limit (413) and the request metrics of ``routes``."""

    def __init__(self, app, *, limit_bytes: int, metrics: Metrics, routes: set[str], body_timeout: float = 60.0):
        self.app = app
        self.limit = limit_bytes
        self.metrics = metrics
        self.routes = routes
        self.body_timeout = body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        self.metrics.begin()
        route = scope["path"] if scope["path"] in self.routes else "other"
        status = 500
        state = {"over": False, "started": False}

        async def answer(code: int, text: str) -> None:
            nonlocal status
            status = code
            body = json.dumps({"detail": text}).encode()
            await send({"type": "http.response.start", "status": code,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"connection", b"close")]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})

        too_large = f"request body over the limit of {self.limit / 2**20:g} MB (--max-upload-mb)"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await answer(413, too_large)
            self._count(scope, route, status, started)
            return
        received, whole = 0, False

        async def limited_receive():
            nonlocal received, whole
            if whole:  # the body is in: what follows is the wait for a disconnect, unbounded
                return await receive()
            try:  # the whole body within body_timeout of the request's start: a half-sent upload is dropped
                message = await asyncio.wait_for(receive(), max(0.0, started + self.body_timeout - time.perf_counter()))
            except TimeoutError:
                state["over"] = "slow"
                raise _Slow from None
            if message["type"] == "http.disconnect":
                state["over"] = "gone"
                raise _Gone
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                whole = not message.get("more_body", False)
                if received > self.limit:
                    state["over"] = "large"
                    raise _TooLarge
            return message

        async def counted_send(message):
            nonlocal status
            if state["over"]:
                return  # the handler's own answer to the interrupted body: replaced by the answer below
            if message["type"] == "http.response.start":
                state["started"] = True
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, counted_send)
        except (_TooLarge, _Slow, _Gone):
            pass
        except Exception:
            self._count(scope, route, status, started)
            raise
        if state["over"] == "gone":  # nobody to answer: one log line, counted apart from the service's errors
            status = GONE
            log.warning("%s %s: the client went away before its request body was whole", scope["method"], scope["path"])
        elif state["over"] == "slow" and not state["started"]:
            await answer(408, f"request body not received within {self.body_timeout:g} s (--timeout)")
        elif state["over"] and not state["started"]:
            await answer(413, too_large)
        self._count(scope, route, status, started)

    def _count(self, scope, route: str, status: int, started: float) -> None:
        self.metrics.request(scope["method"], route, status, time.perf_counter() - started)


async def read_upload(request) -> tuple[bytes, str]:
    """The audio bytes of a request (raw body, or the multipart field ``file``) and a name for
    messages (the client's file name without folders, or ``"upload"``)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=16)
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise Rejected(422, "multipart body without a `file` field (a file upload)")
            data = await upload.read()
            name = PurePath(upload.filename or "upload").name or "upload"
        finally:
            await form.close()
    else:
        data, name = await request.body(), "upload"
    if not data:
        raise Rejected(422, f"{name}: empty body; send the audio as the request body or a multipart `file` field")
    return data, name


def decode(data: bytes, name: str, sample_rate: int, max_duration: float) -> torch.Tensor:
    """Mono float32 ``[samples]`` at ``sample_rate``; :class:`Rejected` with 415 (not audio)
    or 422 (corrupt, truncated, too long...) and the reason. Runs in a worker thread."""
    suffix = PurePath(name).suffix.lower()
    fd, tmp = tempfile.mkstemp(prefix="ast-audio-upload-", suffix=suffix if suffix in AUDIO_EXTENSIONS else "")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        info = audio_info(tmp)
        if info.duration > max_duration:
            raise Rejected(422, f"{name}: {info.duration:.1f} s of audio; this service takes at most "
                                f"{max_duration:g} s (--max-duration)")  # fmt: skip
        return load_audio(tmp, sample_rate=sample_rate, strict=True)
    except AudioError as err:
        status = 415 if err.reason.startswith("not a decodable audio file") else 422
        raise Rejected(status, f"{name}: {err.reason}") from None
    finally:
        os.unlink(tmp)
