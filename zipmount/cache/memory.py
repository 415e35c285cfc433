"""The memory tier: runs of blocks of remote objects under one global byte cap."""

from __future__ import annotations

import threading
from collections import OrderedDict

Buffer = bytes | bytearray | memoryview


class _Run:
    """Consecutive blocks ``first...`` of one object, held in one buffer (as fetched or read)."""

    __slots__ = ("key", "first", "count", "data")

    def __init__(self, key: str, first: int, count: int, data: memoryview) -> None:
        self.key, self.first, self.count, self.data = key, first, count, data


class MemoryTier:
    """LRU of runs of blocks under one global byte cap.

    A response (or a run file read back) is kept as the one buffer it arrived in and its blocks
    are views of it, so splitting it costs no copy; the LRU evicts whole runs, so the bytes it
    counts are the bytes it holds. A run over 1/8 of the cap is split into blocks (copied).
    The cap also covers the buffers of requests in flight and of pieces waiting to be written
    to the disk tier (``reserve``), and holds back 1/16 of
    itself (at most 16 MiB) for short-lived copies (FUSE replies, joined blocks), so that the
    process stays within the cap plus the interpreter's own memory however hard it is read.
    """

    def __init__(self, capacity: int, block_size: int) -> None:
        self.capacity = capacity
        self.block_size = block_size
        self.used = 0
        self.reserved = min(capacity // 16, 16 * 1024 * 1024)  # the headroom
        self._runs: OrderedDict[_Run, None] = OrderedDict()
        self._blocks: dict[tuple[str, int], _Run] = {}
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> None:
        """Hold (positive) or release (negative) room for buffers not in the LRU."""
        with self._lock:
            self.reserved += nbytes
            self._evict()

    def _evict(self) -> None:
        while self._runs and self.used + self.reserved > self.capacity:
            run, _ = self._runs.popitem(last=False)
            self.used -= len(run.data)
            for i in range(run.first, run.first + run.count):
                if self._blocks.get((run.key, i)) is run:
                    del self._blocks[(run.key, i)]

    def get(self, key: str, index: int) -> memoryview | None:
        """Block ``index`` of ``key`` (a view into its run), or None."""
        with self._lock:
            run = self._blocks.get((key, index))
            if run is None:
                return None
            self._runs.move_to_end(run)
        start = (index - run.first) * self.block_size
        return run.data[start: start + self.block_size]

    def put_run(self, key: str, first: int, data: Buffer) -> None:
        """Keep ``data``: the consecutive blocks ``first, first+1, ...`` of ``key``."""
        view, bs = memoryview(data).cast("B"), self.block_size
        if len(view) > self.capacity // 8 and len(view) > bs:
            # Large next to the cap: kept block by block (copies), so that eviction stays fine
            # grained in a small cache instead of dropping a run as soon as it comes in.
            runs = [_Run(key, first + n, 1, memoryview(bytes(view[n * bs: (n + 1) * bs])))
                    for n in range(-(-len(view) // bs))]
        else:
            runs = [_Run(key, first, -(-len(view) // bs), view)]
        with self._lock:
            for run in runs:
                self._runs[run] = None
                self.used += len(run.data)
                for i in range(run.first, run.first + run.count):
                    self._blocks[(key, i)] = run
            self._evict()
