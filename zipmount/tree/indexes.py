"""The loaded archive indexes of an engine, least recently used first, under one memory cap.

A prefix mount over a cohort opens archive after archive (a metadata sweep reads one small file
of each); without a cap every index stayed loaded for the daemon's life. When the loaded indexes
add up to more than the cap, the least recently used one is dropped; its archive reloads it from
the persisted index in the disk cache (no request) on the next access. The most recently used
index is never dropped, so a single archive bigger than the cap still works.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Protocol

# Estimated bytes of one loaded index entry (its row in the compact entry table, its name, its
# place in the children lists): a loaded index with 33-40-character names measured 146-149 bytes
# per entry (tracemalloc, docs/BENCHMARKS.md); rounded up for longer names.
ENTRY_BYTES = 160


class Holder(Protocol):
    def drop_index(self) -> None:
        """Forget the loaded index (it is reloaded on the next access)."""


class IndexLRU:
    """Which holders have an index loaded, and what that costs; drops the oldest over ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._loaded: OrderedDict[int, tuple[Holder, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._loaded)

    def loaded(self, holder: Holder, entries: int) -> None:
        """``holder`` just loaded an index of ``entries`` entries."""
        cost = max(1, entries) * ENTRY_BYTES
        with self._lock:
            old = self._loaded.pop(id(holder), None)
            if old is not None:
                self.used -= old[1]
            self._loaded[id(holder)] = (holder, cost)
            self.used += cost
            evicted = []
            while self.used > self.capacity and len(self._loaded) > 1:
                _, (victim, victim_cost) = self._loaded.popitem(last=False)
                self.used -= victim_cost
                evicted.append(victim)
        for victim in evicted:  # outside the lock: a holder takes its own lock to drop
            victim.drop_index()

    def used_by(self, holder: Holder) -> None:
        """``holder``'s index was just used (it becomes the most recent)."""
        key = id(holder)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)

    def forget(self, holder: Holder) -> None:
        """``holder`` dropped its index by itself (e.g. the archive changed)."""
        with self._lock:
            old = self._loaded.pop(id(holder), None)
            if old is not None:
                self.used -= old[1]
