"""``ast-audio serve``: the tagger as an HTTP service with a web page, on top of :mod:`ast_audio.infer`.

- ``app``: :func:`create_app` (FastAPI on Starlette): ``POST /api/predict``,
  ``POST /api/embed``, ``POST /api/attention``, ``WS /api/stream``, ``GET /api/info``, ``/healthz``, ``/metrics``,
  the OpenAPI description (``/docs``, ``/openapi.json``) and the page (``GET /``);
- ``batching``: the request queue that gathers concurrent requests into shared engine calls;
- ``stream``: live scores and events, :meth:`AudioTagger.stream`'s updates as messages;
- ``uploads``: the body size limit, reading uploads, decoding them through a private
  temporary file that is always removed; ``metrics``: the Prometheus text;
- ``static/``: the page (HTML, JS, CSS; package data, no build step, nothing from a CDN).

:func:`run` starts it on uvicorn. It needs the ``serve`` extra (``pip install
'ast-audio[serve]'``: fastapi, uvicorn, python-multipart); the rest of the package does not.
"""

from __future__ import annotations

from .app import STATIC, ServeSettings, create_app

__all__ = ["STATIC", "ServeSettings", "create_app", "run"]


def run(app, host: str = "127.0.0.1", port: int = 8000, *, graceful_timeout: float | None = None) -> None:
    """Serve ``app`` (from :func:`create_app`) with uvicorn until SIGINT/SIGTERM; then requests in
    flight are finished (for at most ``graceful_timeout`` seconds) and the queue is drained."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=graceful_timeout,
                ws_max_size=2**21)  # fmt: skip
