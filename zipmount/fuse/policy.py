"""The kernel-cache policy of the mount, pure: no libfuse, no tree.

The kernel keeps attributes, directory entries and pages of the files it saw. For each path the
policy remembers which member version the kernel's attributes describe and whose pages its page
cache may hold, and which versions have handles open now; from that it decides, per open, whether
pages may be kept, must be dropped (after invalidating stale attributes), or must be bypassed
(direct I/O), so no reader ever sees pages of two versions.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Seen:
    """What the kernel may hold for one file: attributes of ``attr`` (answered at ``at``), pages
    of ``pages``."""

    attr: str | None
    pages: str | None
    at: float


@dataclass(frozen=True)
class OpenPlan:
    """How one open may use the page cache: keep the pages, read past them (direct I/O), or
    first invalidate the kernel's attributes and pages of the path."""

    keep_cache: bool = False
    direct_io: bool = False
    invalidate: bool = False


class KernelCachePolicy:
    """Bounded bookkeeping of what the kernel caches, and the decisions that follow from it."""

    def __init__(self, ttl: float, *, max_tracked_paths: int = 65536,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_tracked_paths = max_tracked_paths
        self._clock = clock
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._unsure_until = 0.0  # until then, a path without bookkeeping may have been evicted
        self._open_versions: dict[str, Counter[str]] = {}
        self._listings: OrderedDict[str, int] = OrderedDict()
        self._stat_dirs: OrderedDict[str, None] = OrderedDict()  # directories with entries looked up
        self._lock = threading.Lock()

    # -- attributes and listings ------------------------------------------------------------------

    def attributes_sent(self, path: str, version: str, *, for_handle: bool = False) -> bool:
        """The kernel now holds attributes of ``version`` for ``path``; prune old bookkeeping.

        Returns whether the kernel must drop them at once: it keeps one size per path, and takes
        the size of an open file from it, so attributes of ``version`` must not stay while a
        handle on another version is open there (its reads would stop at this size). Dropped,
        they are asked again, with the handle, before its next read: answered ``for_handle``
        (from the handle's own version), they stay.

        An entry older than the attr timeout can go when no handle is open on its path: the
        kernel asks again (and the answer re-creates it) before it uses those attributes, and
        an open without an entry drops the old pages. Past ``max_tracked_paths`` the oldest
        entries go even within the timeout; until that timeout has passed, an open without an
        entry treats the kernel's attributes as stale (they may be of a version we forgot).
        """
        now = self._clock()
        with self._lock:
            pinned_elsewhere = not for_handle and any(
                v != version for v in self._open_versions.get(path, ()))
            seen = self._seen.get(path)
            if seen is None:
                self._seen[path] = _Seen(version, None, now)
            else:
                seen.attr, seen.at = version, now
                self._seen.move_to_end(path)
            self._prune(now)
        return pinned_elsewhere

    def _prune(self, now: float) -> None:
        for _ in range(len(self._seen)):
            path, oldest = next(iter(self._seen.items()))
            expired = now - oldest.at > self.ttl
            if not expired and len(self._seen) <= self.max_tracked_paths:
                return
            if path in self._open_versions:  # kept while a handle is open
                self._seen.move_to_end(path)
                continue
            del self._seen[path]
            if not expired:
                self._unsure_until = max(self._unsure_until, oldest.at + self.ttl)

    def looked_up_in(self, directory: str) -> None:
        """An entry of ``directory`` was looked up: its next listing should carry attributes."""
        with self._lock:
            self._stat_dirs[directory] = None
            self._stat_dirs.move_to_end(directory)
            if len(self._stat_dirs) > self.max_tracked_paths:
                self._stat_dirs.popitem(last=False)

    def wants_plus(self, path: str) -> bool:
        """Whether a listing of ``path`` should carry its entries' attributes (READDIRPLUS).

        Only where the kernel has looked up entries of it before: then a listing saves those
        round trips. A listing nothing stats afterwards (``find``) would pay a stat per entry
        for nothing (several times the time of names only: docs/BENCHMARKS.md).
        """
        with self._lock:
            return path in self._stat_dirs

    def keep_listing(self, path: str, listing: int) -> bool:
        """Whether the kernel may keep its cached entries of directory ``path``, whose listing
        hashes to ``listing`` now (the same as at its last open)."""
        with self._lock:
            keep = self._listings.get(path) == listing
            self._listings[path] = listing
            self._listings.move_to_end(path)
            while len(self._listings) > self.max_tracked_paths:
                self._listings.popitem(last=False)  # forgotten: its next open drops the cache
        return keep

    # -- opens ----------------------------------------------------------------------------------

    def plan_open(self, path: str, version: str) -> OpenPlan:
        """Register a handle on ``path`` at ``version`` and say how it may use the page cache.

        The page cache is kept across opens while the member version stays the same. When the
        archive was replaced, the first open of the new version drops the old pages; if the
        kernel may still hold the old attributes (its size would clip reads), they are
        invalidated first (``invalidate``; then :meth:`invalidated`), so its next read asks for
        the new ones. Only while a handle on the old version is still open (its reads would
        refill old pages) does the handle read with direct I/O, past the page cache.
        """
        with self._lock:
            others = self._open_versions.setdefault(path, Counter())
            seen = self._seen.get(path)
            if seen is None:  # never stat'ed, or its bookkeeping was pruned
                now = self._clock()
                attr = None if now < self._unsure_until else version
                seen = self._seen[path] = _Seen(attr, None, now)
            old_handles = any(v != version for v in others)
            stale_attr = seen.attr != version
            others[version] += 1
            if seen.pages == version:
                return OpenPlan(keep_cache=True)
            if old_handles:
                return OpenPlan(direct_io=True)
            if not stale_attr:
                seen.pages = version  # keep_cache off: the kernel drops old pages
                return OpenPlan()
            return OpenPlan(invalidate=True)

    def invalidated(self, path: str, version: str) -> None:
        """The kernel dropped its attributes and pages of ``path``: the pages it fills now are of
        ``version``, and it will ask for attributes again."""
        with self._lock:
            seen = self._seen.get(path)
            if seen is not None:
                seen.pages, seen.attr = version, None

    def released(self, path: str, version: str) -> None:
        """A handle on ``path`` at ``version`` was closed."""
        with self._lock:
            versions = self._open_versions.get(path)
            if versions is None:
                return
            versions[version] -= 1
            if versions[version] <= 0:
                del versions[version]
            if not versions:
                del self._open_versions[path]

    # -- observability --------------------------------------------------------------------------

    def tracked(self) -> dict[str, int]:
        """How many paths each part of the bookkeeping holds now (each bounded)."""
        with self._lock:
            return {"attributes": len(self._seen), "listings": len(self._listings),
                    "looked_up_dirs": len(self._stat_dirs), "open_paths": len(self._open_versions)}

    def tracked_paths(self) -> int:
        """How many paths the bookkeeping holds now, all parts together (bounded)."""
        counts = self.tracked()
        return counts["attributes"] + counts["listings"] + counts["looked_up_dirs"]

    def remembers(self, path: str) -> bool:
        """Whether the attribute bookkeeping still holds ``path``."""
        with self._lock:
            return path in self._seen
