"""``ast-audio serve``: the tagger as an HTTP service with a web page, on top of :mod:`ast_audio.infer`.

- ``app``: :func:`create_app` (FastAPI on Starlette): ``POST /api/predict``,
  ``POST /api/embed``, ``POST /api/attention``, ``WS /api/stream``, ``GET /api/info``, ``/healthz``, ``/metrics``,
  the OpenAPI description (``/docs``, ``/openapi.json``) and the page (``GET /``);
- ``batching``: the request queue that gathers concurrent requests into shared engine calls;
- ``stream``: live scores and events, :meth:`AudioTagger.stream`'s updates as messages;
- ``uploads``: the body size limit, reading uploads, decoding them through a private
  temporary file that is always removed; ``metrics``: the Prometheus text;
- ``web``: the page's client-side mode (the model runs in the browser with the vendored
  onnxruntime-web): the model file, its metadata, and a static folder for any file server;
- ``static/``: the page (HTML, JS, CSS; package data, no build step, nothing from a CDN).

:func:`listen` binds the address (an address in use is one line before anything starts) and
:func:`run` serves on it with uvicorn. It needs the ``serve`` extra (``pip install
'ast-audio[serve]'``: fastapi, uvicorn, python-multipart); the rest of the package does not,
:mod:`.web` included: the app's names are imported from :mod:`.app` when first asked for.
"""

from __future__ import annotations

__all__ = ["STATIC", "ServeSettings", "create_app", "listen", "run"]


def __getattr__(name: str):
    if name in ("STATIC", "ServeSettings", "create_app"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def listen(host: str, port: int):
    """A socket bound to ``host:port`` and listening, before any model is loaded or banner
    printed; :class:`~ast_audio.errors.ConfigError` naming the address and the reason (in use,
    not an address of this machine, no permission) otherwise."""
    import socket

    from ..errors import ConfigError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, OverflowError) as err:
        raise ConfigError(f"{host}:{port}: cannot listen there ({getattr(err, 'strerror', None) or err})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise ConfigError(f"{host}:{port}: cannot listen there ({err.strerror or err})") from None
    return sock


def run(app, host: str = "127.0.0.1", port: int = 8000, *, graceful_timeout: float | None = None, sock=None) -> None:
    """Serve ``app`` (from :func:`create_app`) with uvicorn until SIGINT/SIGTERM; then requests in
    flight are finished (for at most ``graceful_timeout`` seconds) and the queue is drained.
    ``sock``: a socket from :func:`listen` to serve on (else uvicorn binds ``host:port`` itself)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=graceful_timeout,
                            ws_max_size=2**21)  # fmt: skip
    uvicorn.Server(config).run(sockets=None if sock is None else [sock])
