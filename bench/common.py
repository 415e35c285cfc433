"""Constants and the log line every benchmark module shares."""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MB = 1e6
MIB = 1 << 20


def slug(delay: float) -> str:
    """An endpoint's delay (a number or an :class:`Endpoint`) for file names."""
    return getattr(delay, "slug", None) or f"{delay:g}"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Endpoint(float):
    """The key of an endpoint: the delay it adds per request in ms (a float: records, tables and
    targets compare and format it as one), plus, for the S3-like endpoint, the rate cap of
    each connection. Two endpoints with one delay and different caps are different keys;
    formatted, the cap follows the delay: "+{delay:g} ms" reads "+20 (S3-like: 100 MB/s per
    connection) ms". Records written to JSON keep the delay only (and ``rate_mbps`` where set)."""

    rate_mbps: float

    def __new__(cls, delay_ms: float, rate_mbps: float = 0.0) -> Endpoint:
        self = super().__new__(cls, delay_ms)
        self.rate_mbps = rate_mbps
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, int | float):
            return NotImplemented
        return float(self) == float(other) and getattr(other, "rate_mbps", 0.0) == self.rate_mbps

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:  # equal to its delay's when uncapped (it equals that number)
        return hash((float(self), self.rate_mbps)) if self.rate_mbps else hash(float(self))

    def __format__(self, spec: str) -> str:
        text = format(float(self), spec)
        return f"{text} (S3-like: {self.rate_mbps:g} MB/s per connection)" if self.rate_mbps else text

    def __reduce__(self) -> tuple:
        return Endpoint, (float(self), self.rate_mbps)

    @property
    def slug(self) -> str:
        """For file names: "20", "20-100MBps"."""
        return f"{float(self):g}" + (f"-{self.rate_mbps:g}MBps" if self.rate_mbps else "")

    @property
    def label(self) -> str:
        """How the endpoint is named in prose: "+20 ms", "S3-like (+20 ms, 100 MB/s per connection)"."""
        if self.rate_mbps:
            return f"S3-like (+{float(self):g} ms, {self.rate_mbps:g} MB/s per connection)"
        return f"+{float(self):g} ms" if self else "0 ms (loopback)"
