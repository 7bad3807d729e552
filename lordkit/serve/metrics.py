"""Prometheus metrics of the server, written in the text exposition format (version 0.0.4).

Counters and histograms are kept per label set behind one lock: the event loop records requests,
the inference thread records batches. Gauges are read from callables when /metrics is scraped, so
they are never stale. Each worker process has its own figures (see docs/serve.md).
"""

from __future__ import annotations

import math
import threading
from typing import Callable, Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: Labels = ()) -> str:
    pairs = [*labels, *extra]
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}" if pairs else ""


def _number(x: float) -> str:
    x = float(x)
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


class _Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for k, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[k] += 1
                break
        else:
            self.counts[-1] += 1
        self.sum += value


class Metrics:
    """Every figure the server exports; `render()` is the body of GET /metrics."""

    def __init__(self, info: dict[str, str] | None = None):
        self._lock = threading.Lock()
        self._requests: dict[Labels, int] = {}
        self._latency: dict[Labels, _Histogram] = {}
        self._batch_rows: dict[Labels, _Histogram] = {}
        self._batch_seconds: dict[Labels, _Histogram] = {}
        self._gauges: list[tuple[str, str, Callable[[], Iterable[tuple[Labels, float]]]]] = []
        self._info = info or {}

    # -- recording ------------------------------------------------------------------------------

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One finished HTTP request (route is the route's path template, or "other")."""
        key = (("route", route), ("method", method), ("status", str(status)))
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            self._latency.setdefault(key[:2], _Histogram(LATENCY_BUCKETS_S)).observe(seconds)

    def batch(self, network: str, rows: int, seconds: float) -> None:
        """One onnxruntime call of `network` on `rows` rows."""
        key = (("network", network),)
        with self._lock:
            self._batch_rows.setdefault(key, _Histogram(BATCH_BUCKETS)).observe(rows)
            self._batch_seconds.setdefault(key, _Histogram(LATENCY_BUCKETS_S)).observe(seconds)

    def gauge(self, name: str, help_text: str, read: Callable[[], Iterable[tuple[Labels, float]]]) -> None:
        """A gauge whose samples `read()` returns when /metrics is scraped."""
        self._gauges.append((name, help_text, read))

    # -- reading --------------------------------------------------------------------------------

    def requests_total(self, route: str | None = None, status: int | None = None) -> int:
        with self._lock:
            return sum(n for k, n in self._requests.items()
                       if (route is None or k[0][1] == route) and (status is None or k[2][1] == str(status)))

    def render(self) -> str:
        out: list[str] = []

        def header(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        def histogram(name: str, table: dict[Labels, _Histogram]) -> None:
            for labels, h in sorted(table.items()):
                cumulative = 0
                for bound, n in zip([*h.buckets, math.inf], h.counts):
                    cumulative += n
                    out.append(f"{name}_bucket{_labels(labels, (('le', _number(bound)),))} {cumulative}")
                out.append(f"{name}_sum{_labels(labels)} {_number(h.sum)}")
                out.append(f"{name}_count{_labels(labels)} {cumulative}")

        with self._lock:
            if self._info:
                header("lordkit_serve_info", "gauge", "The model served and where it runs (value always 1).")
                out.append(f"lordkit_serve_info{_labels(tuple(sorted(self._info.items())))} 1")
            header("lordkit_http_requests_total", "counter", "HTTP requests by route, method and status.")
            for labels, n in sorted(self._requests.items()):
                out.append(f"lordkit_http_requests_total{_labels(labels)} {n}")
            header("lordkit_http_request_duration_seconds", "histogram",
                   "Time from the request's arrival to its response, by route and method.")
            histogram("lordkit_http_request_duration_seconds", self._latency)
            header("lordkit_batch_size", "histogram", "Rows per onnxruntime call, by network.")
            histogram("lordkit_batch_size", self._batch_rows)
            header("lordkit_batch_duration_seconds", "histogram", "Duration of each onnxruntime call, by network.")
            histogram("lordkit_batch_duration_seconds", self._batch_seconds)
        for name, help_text, read in self._gauges:
            header(name, "gauge", help_text)
            for labels, value in read():
                out.append(f"{name}{_labels(labels)} {_number(value)}")
        return "\n".join(out) + "\n"


__all__ = ["Metrics", "CONTENT_TYPE", "LATENCY_BUCKETS_S", "BATCH_BUCKETS"]
