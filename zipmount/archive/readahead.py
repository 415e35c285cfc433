"""Read-ahead policy: fetch ahead of a reader that walks a region, never of random reads."""

from __future__ import annotations

import threading
from typing import Protocol

READAHEAD_MIN = 1024 * 1024
# What is in flight must cover the reader's consumption during one round trip: with 8 MiB a
# cold whole-array read at +60 ms per request waited on every batch (docs/BENCHMARKS.md).
READAHEAD_MAX = 32 * 1024 * 1024


def readahead_max(memory_capacity: int) -> int:
    """How far ahead a reader may be fetched: READAHEAD_MAX, or an eighth of the memory cache if
    that is less (what is fetched ahead must not evict itself before it is read)."""
    return max(READAHEAD_MIN, min(READAHEAD_MAX, memory_capacity // 8))


class Target(Protocol):
    """What read-ahead fetches into (a :class:`~.remote.CachedObject`)."""

    def prefetch(self, start: int, end: int) -> None: ...


class Prefetcher:
    """Read-ahead driven by the locality of recent reads.

    When the last few reads all fall in a small region and cover a fair part of it, the reader
    is walking that region: the region and a window beyond it are fetched, in parallel requests,
    the window doubling (up to ``window_max``) each time the reader catches up with it. That
    covers a zarr client reading chunk after chunk of a stored archive — in archive order, or in
    the lexicographic order of a zip made from a directory (0.0, 0.1, 0.10, ...) — and ``cat``
    of a big member. A walker that jumps elsewhere is followed at once (zarr's next channel sits
    elsewhere in a zip of sorted names); a second jump before it walks on closes the window.
    Random chunk reads are spread out, so they cost no extra bytes.

    One instance watches the member opens of an archive; each open big member has its own for
    the reads inside it.
    """

    RECENT = 4  # reads considered
    SPAN = 8 * 1024 * 1024  # largest region they may spread over
    DENSITY = 8  # and they must cover at least 1/DENSITY of it

    def __init__(self, target: Target, window_max: int) -> None:
        self.target = target
        self.window_max = window_max
        self._recent: list[tuple[int, int]] = []
        self._window = 0
        self._fetched = (0, 0)  # the region already asked for
        self._jumped = False  # followed a jump; not yet seen walking on
        self._lock = threading.Lock()

    def observe(self, start: int, end: int, limit: int) -> None:
        """Note a read of ``[start, end)``; prefetch if reads are local, never past ``limit``."""
        with self._lock:
            ahead = self._plan(start, end, limit)
        if ahead is not None:
            self.target.prefetch(*ahead)

    def _plan(self, start: int, end: int, limit: int) -> tuple[int, int] | None:
        """The range to fetch ahead after this read, if any (called under the lock)."""
        done_low, done_high = self._fetched
        if self._window and not done_low <= start <= done_high + self.SPAN:
            if not self._jumped:
                # A reader that was walking a region jumped: most likely it walks on from
                # there (the next channel of a zarr array, whose chunks a zip of sorted names
                # keeps elsewhere). Follow at once instead of after RECENT more cold reads.
                self._jumped = True
                self._recent = [(start, end)]
                self._fetched = (start, min(limit, max(end, start + self._window)))
                return self._fetched
            self._window = 0  # jumped again before walking on: the reads are random now
        self._recent = [*self._recent[1 - self.RECENT:], (start, end)]
        if len(self._recent) < self.RECENT:
            return None
        low = min(s for s, _ in self._recent)
        high = max(e for _, e in self._recent)
        covered = sum(e - s for s, e in self._recent)
        if high - low > self.SPAN or covered * self.DENSITY < high - low:
            self._window = 0
            return None
        self._jumped = False
        self._window = self._window or READAHEAD_MIN
        if done_low <= low and done_high - high >= self._window // 2:
            return None
        # The reader caught up with what was fetched: look twice as far ahead as last time
        # (the window grows with what is consumed, up to its maximum).
        self._window = min(self.window_max, self._window * 2)
        ahead_from = done_high if done_low <= low <= done_high else low
        ahead_to = min(limit, high + self._window)
        if ahead_from >= ahead_to:
            return None
        self._fetched = (min(low, done_low) if done_low <= low <= done_high else low, ahead_to)
        return ahead_from, ahead_to

