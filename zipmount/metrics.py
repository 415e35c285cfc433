"""Optional Prometheus endpoint exposing the daemon's :class:`Stats`."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .errors import UsageError
from .stats import COUNTERS, Stats


class StatsCollector(Collector):
    """Reads a :class:`Stats` snapshot at every scrape."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        snap = self.stats.snapshot()
        for name in COUNTERS:
            yield CounterMetricFamily(f"zipmount_{name}", name.replace("_", " "),
                                      value=snap[name])
        for name, value in snap.items():
            if name not in COUNTERS and isinstance(value, int | float) and name != "uptime_s":
                yield GaugeMetricFamily(f"zipmount_{name}", name.replace("_", " "), value=value)
        for which in ("read_latency_ms", "request_latency_ms"):
            gauge = GaugeMetricFamily(f"zipmount_{which}", f"{which} percentiles",
                                      labels=["quantile"])
            for q, value in snap[which].items():
                gauge.add_metric([q], value)
            yield gauge


def serve_metrics(listen: str, stats: Stats) -> None:
    """Serve ``/metrics`` on ``HOST:PORT`` from a background thread."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise UsageError(f"metrics.listen {listen!r} must be HOST:PORT")
    REGISTRY.register(StatsCollector(stats))
    start_http_server(int(port), addr=host or "127.0.0.1")
