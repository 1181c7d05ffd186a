"""The ASGI app: routes over one :class:`~ast_audio.infer.AudioTagger` and its batching queue.

:func:`create_app` builds it (FastAPI on Starlette; the guard of :mod:`.uploads` wraps it
all). Status codes: 413 (body over ``max_upload_mb``, answered before it is read whole),
415 (not audio), 422 (corrupt or truncated audio, too long, empty, bad parameters), 503
(not answered within ``timeout`` seconds). The answer is always JSON ``{"detail": reason}``.

With ``client_model`` (``serve --client-side``) the page at ``/`` runs that waveform-in ONNX
file, served at ``/model.onnx``, in the browser (:mod:`.web`); the API stays as it is. The
page, its files and the model then come cross-origin isolated (COOP and COEP headers), which
lets onnxruntime-web run on several threads; ``/docs``, whose script comes from a CDN, does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import queue
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Literal

import numpy as np
import torch
from fastapi import FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..audio.io import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from ..base.plots import plot_attention
from ..errors import AstAudioError
from ..infer.engine import AudioTagger
from ..infer.events import PostProcessing
from ..infer.frames import DEFAULT_HOP, DEFAULT_WINDOW, check_frames
from ..infer.results import labels_json
from .batching import Batcher, Job, overall_labels
from .metrics import Metrics
from .stream import live_updates
from .uploads import Guard, Rejected, decode, read_upload
from .web import ISOLATION_HEADERS, MODEL_FILE, STATIC, page

__all__ = ["STATIC", "ServeSettings", "create_app"]

MAX_MESSAGE = 2**20  # bytes of one WebSocket audio message
MAX_TIMELINE_WINDOWS = 10_000
_POST = PostProcessing()  # the post-processing defaults, the CLI's and the library's


@dataclass
class ServeSettings:
    """How the service treats requests (the model settings are the tagger's)."""

    max_batch: int = 16  # requests gathered into one engine call
    max_wait: float = 0.01  # seconds the queue waits for more after the first request
    max_upload_mb: float = 50.0
    max_duration: float = 600.0  # seconds of audio per request
    timeout: float = 60.0  # seconds until a request is answered with 503
    max_streams: int = 16  # live WebSocket streams open at once (each scores on a thread of its own)


_AUDIO_BODY = {  # what the OpenAPI description says of the body we read ourselves
    "requestBody": {
        "required": True,
        "description": "the audio file (wav, flac, ogg, mp3...) as the body, or as the multipart field `file`",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "audio/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                           "required": ["file"]},  # fmt: skip
            },
        },
    }
}


def create_app(tagger: AudioTagger, settings: ServeSettings | None = None, *, client_model: Path | None = None):
    """The service as an ASGI app (run it with uvicorn, or test it with a client). ``client_model``:
    a waveform-in ONNX file that the page runs in the visitor's browser instead of calling the API."""
    settings = settings or ServeSettings()
    metrics = Metrics()
    batcher = Batcher(tagger, max_batch=settings.max_batch, max_wait=settings.max_wait, metrics=metrics)
    member = tagger.members[0]  # its input contract and model-input length, shown by /api/info
    open_streams: set[WebSocket] = set()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()  # after uvicorn stopped taking requests: what is queued is still answered

    app = FastAPI(title="ast-audio", version=__version__, lifespan=lifespan,
                  description="Audio Spectrogram Transformer tagging service: tags, timelines, embeddings, "
                  "live streams. Errors are JSON `{\"detail\": reason}`.")  # fmt: skip

    @app.exception_handler(Rejected)
    async def rejected(request: Request, err: Rejected):
        return JSONResponse({"detail": err.reason}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):  # one line, the service's format
        return JSONResponse({"detail": validation_reason(err)}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception):  # answered as JSON; uvicorn logs the traceback
        return JSONResponse({"detail": f"internal error ({type(err).__name__}: {err})"}, status_code=500)

    async def waveform(request: Request) -> tuple[torch.Tensor, str]:
        data, name = await read_upload(request)
        return await run_in_threadpool(decode, data, name, tagger.rate, settings.max_duration), name

    async def run(job: Job):
        try:
            return await asyncio.wait_for(batcher.submit(job), settings.timeout)
        except TimeoutError:
            raise Rejected(503, f"not answered within {settings.timeout:g} s (--timeout)") from None
        except AstAudioError as err:
            raise Rejected(422, str(err)) from None

    @app.post("/api/predict", openapi_extra=_AUDIO_BODY)
    async def predict(
        request: Request,
        top_k: int = Query(5, ge=1, le=10000, description="labels per answer (and per timeline frame)"),
        timeline: bool = Query(False, description="detection frames and the events found in them"),
        window: float | None = Query(None, gt=0, description=f"timeline: seconds each frame's window sees "
                                     f"(default {DEFAULT_WINDOW:g}, at most the model input)"),
        hop: float | None = Query(None, gt=0, description=f"timeline: seconds between frames (default {DEFAULT_HOP:g})"),
        threshold: float | None = Query(None, ge=0, le=1, description="timeline: on threshold of every class "
                                        "(default: the checkpoint's calibrated ones, else 0.5)"),
        off_ratio: float = Query(_POST.off_ratio, description="timeline: off at off_ratio x the on threshold"),
        median: float = Query(_POST.median, description="timeline: median filter, seconds"),
        min_duration: float = Query(_POST.min_duration, description="timeline: shorter events are dropped, seconds"),
        min_gap: float = Query(_POST.min_gap, description="timeline: closer events of a class merge, seconds"),
        aggregate: Literal["max", "mean"] = Query("max", description="how model windows combine"),
    ) -> dict:
        """Top labels of the audio; with ``timeline=true`` the timeline object of ``predict --timeline
        --format json`` (the same defaults and post-processing; frames and events) plus ``labels``:
        each label's maximum over the frames."""
        if timeline:  # the options are checked before the upload is read, by the library's own rules
            try:
                post = PostProcessing(threshold, off_ratio, median, min_duration, min_gap)
                grid = tagger.frame_grid(window, hop)
            except AstAudioError as err:
                raise Rejected(422, str(err)) from None
        wave, name = await waveform(request)
        if timeline:
            try:  # the library's bound, at the service's own limit
                check_frames(grid.count(len(wave)), name, MAX_TIMELINE_WINDOWS)
            except AstAudioError as err:
                raise Rejected(422, str(err)) from None
            result = await run(Job("timeline", wave, (window, hop, aggregate), top_k, post))
            result.path = name
            return {**result.to_json(), "labels": labels_json(overall_labels(result, tagger.labels, top_k))}
        result = await run(Job("predict", wave, (aggregate,), top_k))
        result.path = name
        return result.to_json()

    @app.post("/api/embed", openapi_extra=_AUDIO_BODY)
    async def embed(
        request: Request,
        format: Literal["json", "npy"] = Query("json", description="json, or npy: the float32 vector as a .npy file"),
    ):
        """The pooled embedding (mean over the model windows of a long recording)."""
        wave, name = await waveform(request)
        result = await run(Job("embed", wave))
        vector = result.embedding.astype(np.float32)
        if format == "npy":
            out = io.BytesIO()
            np.save(out, vector)
            stem = PurePath(name).stem or "upload"
            return Response(out.getvalue(), media_type="application/x-npy",
                            headers={"content-disposition": f'attachment; filename="{stem}.npy"'})  # fmt: skip
        return {"path": name, "duration": round(result.duration, 3), "windows": len(result.spans),
                "dim": int(vector.shape[0]), "embedding": [round(float(v), 6) for v in vector]}  # fmt: skip

    @app.post("/api/attention", openapi_extra=_AUDIO_BODY, response_class=Response,
              responses={200: {"content": {"image/png": {}}}})  # fmt: skip
    async def attention(
        request: Request,
        start: float = Query(0.0, ge=0, description="seconds into the audio where the model window starts"),
        method: Literal["rollout", "last"] = Query("rollout", description="attention rollout, or the last layer's"),
        top_k: int = Query(5, ge=1, le=50, description="labels drawn"),
    ) -> Response:
        """Spectrogram, attention map and top labels of one model window, as a PNG (``tagger.plot``)."""
        wave, name = await waveform(request)

        def explain():
            return tagger.attention(wave, sample_rate=tagger.rate, start=start, method=method, top_k=top_k)

        try:
            att = await asyncio.wait_for(batcher.on_model_thread(explain), settings.timeout)
        except TimeoutError:
            raise Rejected(503, f"not answered within {settings.timeout:g} s (--timeout)") from None
        except AstAudioError as err:
            raise Rejected(422, str(err)) from None
        att.path = name
        return Response(await run_in_threadpool(_png, att), media_type="image/png")

    @app.get("/api/info")
    async def info() -> dict:
        """The labels and the input contract of the checkpoint, the default detection frames (of timelines
        and the live stream) and post-processing, and the service's limits."""
        grid = tagger.frame_grid()
        return {
            "version": __version__,
            "checkpoints": [PurePath(m.name).name for m in tagger.members],
            "labels": list(tagger.labels),
            "multilabel": tagger.multilabel,
            "sample_rate": tagger.rate,
            "window_seconds": round(member.window / member.rate, 3),
            "input_contract": member.features.to_dict(),
            "device": str(tagger.device),
            "precision": tagger.precision,
            "precision_reason": tagger.precision_reason,  # "asked for", or why auto chose it
            "stream": {"hop": grid.hop, "window": round(grid.window, 3),  # WS /api/stream's detection frames
                       "calibrated_thresholds": tagger.thresholds is not None},  # else 0.5 (without ?threshold=)
            "timeline": {"hop": grid.hop, "window": round(grid.window, 3), "off_ratio": _POST.off_ratio,
                         "median": _POST.median, "min_duration": _POST.min_duration, "min_gap": _POST.min_gap},
            "limits": {"max_upload_mb": settings.max_upload_mb, "max_duration": settings.max_duration,
                       "timeout": settings.timeout, "max_batch": settings.max_batch,
                       "max_wait": settings.max_wait, "max_streams": settings.max_streams},  # fmt: skip
        }

    @app.get("/healthz")
    async def healthz() -> dict:
        """Alive, and the precision the model computes in and why (``auto``'s choice or its pin)."""
        return {"status": "ok", "precision": tagger.precision, "precision_reason": tagger.precision_reason}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.websocket("/api/stream")
    async def stream(ws: WebSocket):
        """Live audio: binary messages of 16-bit little-endian mono PCM in; JSON messages out."""
        await ws.accept()
        metrics.stream()
        try:
            options = _stream_options(ws.query_params, tagger.frame_grid().hop)
            if len(open_streams) >= settings.max_streams:
                raise Rejected(1013, f"{settings.max_streams} live streams are open, the most this service takes "
                                     "(--max-streams); try again later")  # fmt: skip
        except Rejected as err:
            await ws.send_json({"type": "error", "message": err.reason})
            await ws.close(code=err.status)
            return
        open_streams.add(ws)
        try:
            await _stream(ws, tagger, batcher, **options)
        finally:
            open_streams.discard(ws)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index():
        if client_model is None:
            return FileResponse(STATIC / "index.html")
        return HTMLResponse(page(client_side=True))

    if client_model is not None:
        isolated = ("/", f"/{MODEL_FILE}", "/static/")

        @app.middleware("http")
        async def cross_origin_isolation(request: Request, call_next):
            response = await call_next(request)
            path = request.url.path
            if path in isolated or path.startswith(isolated[-1]):
                response.headers.update(ISOLATION_HEADERS)
            return response

        @app.get(f"/{MODEL_FILE}", include_in_schema=False)
        async def model_file():
            # revalidated on every load (a 304 when unchanged): a restart with another checkpoint is never
            # met by the browser's cached copy of the last one
            return FileResponse(client_model, media_type="application/octet-stream",
                                headers={"cache-control": "no-cache"})  # fmt: skip

    routes = {"/", f"/{MODEL_FILE}", "/api/predict", "/api/embed", "/api/attention", "/api/info", "/healthz", "/metrics", "/docs", "/openapi.json"}
    guarded = Guard(app, limit_bytes=int(settings.max_upload_mb * 2**20), metrics=metrics, routes=routes,
                    body_timeout=settings.timeout)  # fmt: skip
    guarded.fastapi = app  # for callers that want the FastAPI object (routes, OpenAPI)
    guarded.batcher = batcher
    return guarded


def validation_reason(err: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one ``"<parameter>: <reason>"`` line (several joined by ``; ``)."""
    parts = []
    for e in err.errors():
        where = ".".join(str(part) for part in e.get("loc", ())[1:]) or "request"
        given = e.get("input")
        parts.append(f"{where}: {e.get('msg', 'invalid')}" + (f", got {given!r}" if isinstance(given, str) else ""))
    return "; ".join(parts)


def _png(att) -> bytes:
    """The attention figure as PNG bytes (drawn into a private temporary file, always removed)."""
    fd, tmp = tempfile.mkstemp(prefix="ast-audio-attention-", suffix=".png")
    os.close(fd)
    try:
        return plot_attention(att, tmp).read_bytes()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _stream_options(params, default_hop: float) -> dict:
    def number(name: str, kind, default, low, high):
        if name not in params and default is None:
            return None
        try:
            value = kind(params.get(name, default))
        except ValueError:
            raise Rejected(1008, f"{name} must be a number, got {params.get(name)!r}") from None
        if not low <= value <= high:
            raise Rejected(1008, f"{name} must be in [{low}, {high}], got {value}")
        return value

    return {
        "sample_rate": number("sample_rate", int, 16000, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE),
        "hop": number("hop", float, default_hop, 0.05, 60.0),
        "threshold": number("threshold", float, None, 0.0, 1.0),  # none: calibrated, else 0.5
        "top_k": number("top_k", int, 3, 1, 10000),
    }


async def _stream(ws: WebSocket, tagger: AudioTagger, batcher: Batcher, *, sample_rate: int, hop: float,
                  threshold: float | None, top_k: int) -> None:  # fmt: skip
    """Receive audio, run :func:`live_updates` on a thread of its own (its model calls on the
    batching queue's worker thread), send what it yields."""
    loop = asyncio.get_running_loop()
    chunks: queue.SimpleQueue = queue.SimpleQueue()
    out: asyncio.Queue = asyncio.Queue()

    def on_model(fn):  # a model call of the stream, on the queue's worker thread (waited for from ours)
        return asyncio.run_coroutine_threadsafe(batcher.on_model_thread(fn), loop).result()

    def arriving():  # chunks as they come; a backlog is joined, so a slow model scores the latest audio
        while (chunk := chunks.get()) is not None:
            parts = [chunk]
            while not chunks.empty():
                nxt = chunks.get()
                if nxt is None:
                    yield np.concatenate(parts)
                    return
                parts.append(nxt)
            yield np.concatenate(parts)

    def work():
        try:
            for update in live_updates(tagger, arriving(), sample_rate, hop=hop, threshold=threshold, top_k=top_k,
                                       on_model=on_model):  # fmt: skip
                loop.call_soon_threadsafe(out.put_nowait, update)
        except Exception as err:  # noqa: BLE001 (reported to the client; the service goes on)
            loop.call_soon_threadsafe(out.put_nowait, {"type": "error", "message": str(err)})
        finally:
            loop.call_soon_threadsafe(out.put_nowait, None)

    async def sender():
        while (update := await out.get()) is not None:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await ws.send_json(update)

    thread = threading.Thread(target=work, name="ast-audio-stream", daemon=True)
    thread.start()
    sending = asyncio.create_task(sender())
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is None:  # a text message ends the stream ("end"): the open events are closed
                break
            if len(data) > MAX_MESSAGE or len(data) % 2:
                await ws.send_json({"type": "error", "message": f"audio messages are 16-bit PCM of at most "
                                    f"{MAX_MESSAGE} bytes; got {len(data)} bytes"})  # fmt: skip
                break
            chunks.put(np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0)
    except WebSocketDisconnect:
        pass
    finally:
        chunks.put(None)
        await sending
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.send_json({"type": "end"})
        await ws.close()
