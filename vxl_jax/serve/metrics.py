"""``GET /metrics``: the server's state and latencies in Prometheus' text format (prometheus_client).

Gauges read from ``Scheduler.snapshot()`` at each scrape (queue depth, active and maximum rows, cache entries /
bytes / hits / misses, tokens generated), and what the app measures per request: requests by status code,
time to first token and per-token latency histograms (seconds), all under the ``vxl_`` prefix. One registry per
app (several apps in one process do not share counters).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# snapshot key -> (metric name, help, counter?)
SNAPSHOT = {
    "queue_depth": ("vxl_queue_depth", "requests waiting for a decode row", False),
    "active_rows": ("vxl_active_rows", "decode rows in use", False),
    "max_rows": ("vxl_max_rows", "decode rows held at once", False),
    "cache_entries": ("vxl_cache_entries", "encoded videos in the cache", False),
    "cache_bytes": ("vxl_cache_bytes", "bytes of encoded video memory in the cache", False),
    "cache_hits": ("vxl_cache_hits", "requests whose video memory came from the cache", True),
    "cache_misses": ("vxl_cache_misses", "requests whose video was encoded", True),
    "cache_disk_hits": ("vxl_cache_disk_hits", "requests whose video memory was read back from the spill folder",
                        True),
    "tokens_generated": ("vxl_tokens_generated", "tokens generated since start", True),
    "encoding": ("vxl_videos_encoding", "videos being encoded now", False),
    "encodes": ("vxl_videos_encoded", "videos encoded since start", True),
    "errors": ("vxl_request_errors", "requests that failed in the scheduler (e.g. an unreadable video)", True),
    "cancelled": ("vxl_requests_cancelled", "requests cancelled (client gone)", True),
    "timeouts": ("vxl_request_timeouts", "requests that ran past their time limit", True),
}
disable_created_metrics()  # no *_created samples: scrapes show the values only
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class _SnapshotCollector:
    """The scheduler's snapshot as gauges and counters, read at scrape time."""

    def __init__(self, snapshot: Callable[[], dict]):
        self.snapshot = snapshot

    def describe(self):
        return []  # no fixed description: the snapshot decides at scrape time

    def collect(self):
        snap = _flat(self.snapshot())
        for key, (name, text, counter) in SNAPSHOT.items():
            if key in snap:
                family = CounterMetricFamily if counter else GaugeMetricFamily
                yield family(name, text, value=float(snap[key]))


def _flat(snap: dict) -> dict:
    """``{"cache": {"entries": 2}}`` -> ``{"cache_entries": 2}``, flat keys kept."""
    out = {}
    for key, value in snap.items():
        if isinstance(value, dict):
            out.update({f"{key}_{k}": v for k, v in value.items() if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)):
            out[key] = value
    return out


class Metrics:
    """The app's registry: ``observe_request(status)``, ``observe_tokens(ttft_s, per_token_s)``, ``render()``."""

    def __init__(self, snapshot: Callable[[], dict]):
        self.registry = CollectorRegistry()
        self.registry.register(_SnapshotCollector(snapshot))
        self.requests = Counter("vxl_requests", "chat completion requests by HTTP status", ["status"],
                                registry=self.registry)
        self.ttft = Histogram("vxl_time_to_first_token_seconds", "request arrival to its first token",
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.per_token = Histogram("vxl_time_per_output_token_seconds", "time between a request's tokens",
                                   buckets=TOKEN_BUCKETS, registry=self.registry)

    def observe_request(self, status: int) -> None:
        self.requests.labels(status=str(status)).inc()

    def observe_tokens(self, ttft_s: float | None, per_token_s: list[float]) -> None:
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        for s in per_token_s:
            self.per_token.observe(s)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of a scrape."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
