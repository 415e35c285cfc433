"""The loaded archive indexes of an engine, least recently used first, under one memory cap.

A prefix mount over a cohort opens archive after archive (a metadata sweep reads one small file
of each); without a cap every index stayed loaded for the daemon's life. Each holder is charged
what it says it holds (:meth:`Holder.index_bytes`: its index and all the per-member state that
grows while its members are read), asked again at every use, so that a sweep reading every
member of each archive stays under the cap too. When the charges add up to more than the cap,
the least recently used holder drops everything it was charged for; its archive reloads the
index from the disk cache (no request) on the next access. The most recently used holder is
never dropped, so a single archive bigger than the cap still works.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Protocol


class Holder(Protocol):
    def drop_index(self) -> None:
        """Forget the loaded index and what grew with it (reloaded on the next access)."""

    def index_bytes(self) -> int:
        """What the loaded index and its per-member state cost now, in bytes."""


class IndexLRU:
    """Which holders have an index loaded, and what that costs; drops the oldest over ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._loaded: OrderedDict[int, tuple[Holder, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._loaded)

    def loaded(self, holder: Holder) -> None:
        """``holder`` just loaded an index."""
        self._charge(holder, add=True)

    def used_by(self, holder: Holder) -> None:
        """``holder``'s index was just used: it becomes the most recent, charged what it holds
        now (its per-member state may have grown)."""
        self._charge(holder, add=False)

    def _charge(self, holder: Holder, add: bool) -> None:
        cost = max(1, holder.index_bytes())  # outside the lock: the holder may take its own
        key = id(holder)
        with self._lock:
            old = self._loaded.pop(key, None)
            if old is None and not add:
                return  # dropped meanwhile: charged again when it reloads
            if old is not None:
                self.used -= old[1]
            self._loaded[key] = (holder, cost)
            self.used += cost
            evicted = []
            while self.used > self.capacity and len(self._loaded) > 1:
                _, (victim, victim_cost) = self._loaded.popitem(last=False)
                self.used -= victim_cost
                evicted.append(victim)
        for victim in evicted:  # outside the lock: a holder takes its own lock to drop
            victim.drop_index()

    def forget(self, holder: Holder) -> None:
        """``holder`` dropped its index by itself (e.g. the archive changed)."""
        with self._lock:
            old = self._loaded.pop(id(holder), None)
            if old is not None:
                self.used -= old[1]
