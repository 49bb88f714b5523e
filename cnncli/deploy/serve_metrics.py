"""What `cnn serve` counts, and its `GET /metrics` page in the Prometheus text format (version 0.0.4).

Written here rather than with prometheus_client: four series do not justify one
more dependency, and a server of its own per process needs no registry.
"""

from __future__ import annotations

import bisect
import threading

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds: prometheus_client's
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # images per model call: powers of two up to the predict loop's


class Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one value in its bucket."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        """The histogram's Prometheus text lines under `name`."""
        sep = "," if labels else ""
        out, total = [], 0
        for bound, count in zip([*map(_number, self.buckets), "+Inf"], self.counts, strict=True):
            total += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {total}')
        suffix = f"{{{labels}}}" if labels else ""
        return out + [f"{name}_sum{suffix} {_number(self.sum)}", f"{name}_count{suffix} {total}"]


class Metrics:
    """Requests and errors by route, request latency by route, and images per model batch."""

    def __init__(self):
        self._lock = threading.Lock()  # the event loop and the model's worker thread both write
        self.requests: dict[tuple[str, str, int], int] = {}  # (route, method, status) -> count
        self.errors: dict[str, int] = {}  # route -> responses with a 4xx or 5xx status
        self.latency: dict[str, Histogram] = {}
        self.batches = Histogram(BATCH_BUCKETS)
        self.in_flight = 0

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        with self._lock:
            key = (route, method, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            if status >= 400:
                self.errors[route] = self.errors.get(route, 0) + 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, size: int) -> None:
        """Count the size of one batch run."""
        with self._lock:
            self.batches.observe(size)

    def text(self) -> str:
        """Every metric in Prometheus's text format."""
        with self._lock:
            lines = [
                "# HELP cnn_serve_requests_total HTTP requests answered, by route, method and status.",
                "# TYPE cnn_serve_requests_total counter",
            ]
            lines += [
                f'cnn_serve_requests_total{{route="{r}",method="{m}",status="{s}"}} {n}'
                for (r, m, s), n in sorted(self.requests.items())
            ]
            lines += [
                "# HELP cnn_serve_errors_total Requests answered with a 4xx or 5xx status, by route.",
                "# TYPE cnn_serve_errors_total counter",
            ]
            lines += [f'cnn_serve_errors_total{{route="{r}"}} {n}' for r, n in sorted(self.errors.items())]
            lines += [
                "# HELP cnn_serve_request_seconds Time from request to response, by route.",
                "# TYPE cnn_serve_request_seconds histogram",
            ]
            for route, histogram in sorted(self.latency.items()):
                lines += histogram.lines("cnn_serve_request_seconds", f'route="{route}"')
            lines += [
                "# HELP cnn_serve_batch_images Images per model call (micro-batches).",
                "# TYPE cnn_serve_batch_images histogram",
            ]
            lines += self.batches.lines("cnn_serve_batch_images")
            lines += [
                "# HELP cnn_serve_requests_in_flight Requests being answered now.",
                "# TYPE cnn_serve_requests_in_flight gauge",
                f"cnn_serve_requests_in_flight {self.in_flight}",
            ]
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return repr(float(value))  # Prometheus reads Python's float repr: 0.005, 1.0, 1e-06
