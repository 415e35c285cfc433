"""Live counters of one daemon, shared by every layer; read by ``zipmount stats`` and Prometheus."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

# The extended attribute of a mount's root that ``zipmount stats`` reads.
STATS_XATTR = "user.zipmount.stats"

COUNTERS = (
    "requests",  # range GETs sent to the store
    "bytes_fetched",
    "errors",  # remote operations that failed after retries
    "memory_hits",
    "memory_misses",
    "disk_hits",
    "disk_misses",
    "reads",  # FUSE read calls
    "bytes_read",  # bytes returned to FUSE readers
    "read_errors",  # FUSE reads answered with an errno
    "archives_opened",
    "cells_decoded",  # decoded cells of compressed members made (zipmount/archive/decoded.py)
    "cell_bytes_decoded",  # bytes decoded to make them (from the checkpoint before each)
)


class Stats:
    """Thread-safe counters, gauges and a window of recent read latencies."""

    def __init__(self, latency_window: int = 4096) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.gauges: dict[str, float] = {}
        self._read_latencies: deque[float] = deque(maxlen=latency_window)
        self._request_latencies: deque[float] = deque(maxlen=latency_window)
        self.started = time.time()
        # values computed at each snapshot (JSON-able; the numeric ones are exported as gauges)
        self.providers: list[Callable[[], Mapping[str, object]]] = []

    def add(self, name: str, value: int = 1) -> None:
        with self._lock:
            self.counters[name] += value

    def set_gauge(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = value

    def record_request(self, nbytes: int, seconds: float) -> None:
        with self._lock:
            self.counters["requests"] += 1
            self.counters["bytes_fetched"] += nbytes
            self._request_latencies.append(seconds)

    def record_error(self) -> None:
        self.add("errors")

    def record_read(self, nbytes: int, seconds: float, failed: bool = False) -> None:
        with self._lock:
            self.counters["reads"] += 1
            self.counters["bytes_read"] += nbytes
            if failed:
                self.counters["read_errors"] += 1
            self._read_latencies.append(seconds)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy of everything."""
        provided: dict[str, object] = {}
        for provider in self.providers:
            provided.update(provider())
        with self._lock:
            reads = sorted(self._read_latencies)
            requests = sorted(self._request_latencies)
            return {
                "uptime_s": round(time.time() - self.started, 1),
                **self.counters,
                **self.gauges,
                **provided,
                "read_latency_ms": _percentiles(reads),
                "request_latency_ms": _percentiles(requests),
            }


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    def pick(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 3)
    return {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "max": pick(1.0)}
