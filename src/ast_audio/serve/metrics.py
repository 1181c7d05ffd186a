"""What ``GET /metrics`` reports, in the Prometheus text format (version 0.0.4).

Counters of requests and errors by route and status, a latency histogram by route, and a
histogram of how many requests each forward pass of the batching queue served. Routes are
the app's own paths (anything else counts as ``other``), so the series stay few.
"""

from __future__ import annotations

import threading
from collections import defaultdict

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # requests per engine call


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {n}' for bound, n in zip(self.buckets, self.counts, strict=True)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.sum:.6f}", f"{name}_count{suffix} {self.total}"]
        return out


class Metrics:
    """Thread-safe counters and histograms of one app; :meth:`render` gives the exposition text."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)  # (method, route, status)
        self.errors: dict[tuple[str, int], int] = defaultdict(int)  # (route, status) of 4xx/5xx
        self.latency: dict[str, _Histogram] = {}
        self.batches = _Histogram(BATCH_BUCKETS)
        self.windows = 0  # windows scored by the engine
        self.streams = 0  # WebSocket streams opened
        self.in_flight = 0  # HTTP requests being handled (this one included)

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """A request answered (and no longer in flight)."""
        with self._lock:
            self.in_flight -= 1
            self.requests[(method, route, status)] += 1
            if status >= 400:
                self.errors[(route, status)] += 1
            self.latency.setdefault(route, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, requests: int, windows: int) -> None:
        with self._lock:
            self.batches.observe(requests)
            self.windows += windows

    def stream(self) -> None:
        with self._lock:
            self.streams += 1

    def render(self) -> str:
        with self._lock:
            out = ["# HELP ast_audio_requests_total HTTP requests answered, by method, route and status.",
                   "# TYPE ast_audio_requests_total counter"]  # fmt: skip
            for (method, route, status), n in sorted(self.requests.items()):
                out.append(f'ast_audio_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}')
            out += ["# HELP ast_audio_requests_in_flight HTTP requests being handled, this one included.",
                    "# TYPE ast_audio_requests_in_flight gauge", f"ast_audio_requests_in_flight {self.in_flight}"]
            out += ["# HELP ast_audio_errors_total Requests answered with a 4xx or 5xx status.",
                    "# TYPE ast_audio_errors_total counter"]  # fmt: skip
            for (route, status), n in sorted(self.errors.items()):
                out.append(f'ast_audio_errors_total{{route="{route}",status="{status}"}} {n}')
            out += ["# HELP ast_audio_request_seconds Time from request to response, by route.",
                    "# TYPE ast_audio_request_seconds histogram"]  # fmt: skip
            for route, hist in sorted(self.latency.items()):
                out += hist.lines("ast_audio_request_seconds", f'route="{route}"')
            out += ["# HELP ast_audio_batch_requests Requests served by one call of the engine (shared forward passes).",
                    "# TYPE ast_audio_batch_requests histogram"]  # fmt: skip
            out += self.batches.lines("ast_audio_batch_requests", "")
            out += ["# HELP ast_audio_model_windows_total Windows scored (model windows; a timeline's own windows).",
                    "# TYPE ast_audio_model_windows_total counter", f"ast_audio_model_windows_total {self.windows}",
                    "# HELP ast_audio_streams_total Live streams opened.",
                    "# TYPE ast_audio_streams_total counter", f"ast_audio_streams_total {self.streams}"]  # fmt: skip
        return "\n".join(out) + "\n"
