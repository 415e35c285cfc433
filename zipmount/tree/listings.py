"""The directory listings of one archive version, each computed once.

A listing depends only on the archive version: its names and kinds, and its entries' nodes once
asked. Without keeping it, every call computed it again from the index (an entry lookup per
child), and a READDIRPLUS asks for a directory again for each reply (a few dozen entries each):
listing a directory of n entries cost n²/30 lookups, and Python's import lists every package
directory in every process. Kept per archive version (a new archive object starts empty), least
recently used first, under a cap on the entries held; what they hold is charged with the index
(:meth:`~.archive_tree.ArchiveSlot.index_bytes`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .base import DirEntry

# Entries kept per archive version, all its listings together (a bigger directory is computed
# per call): about 30 MiB at most, and far more than a package's directories hold.
MAX_ENTRIES = 65536
# Estimated bytes of one kept entry: the DirEntry, its name and its node once asked (tracemalloc,
# tests/unit/test_tree_listings.py).
ENTRY_BYTES = 480


class Listings:
    """The kept listings of one archive version's directories, by name inside the archive."""

    def __init__(self, archive: object, max_entries: int | None = None) -> None:
        self.archive = archive  # the version they describe: a reloaded index starts a new set
        self.max_entries = MAX_ENTRIES if max_entries is None else max_entries
        self.entries = 0
        self._dirs: OrderedDict[str, list[DirEntry]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> list[DirEntry] | None:
        """The kept listing of directory ``name``, if any (it becomes the most recent)."""
        with self._lock:
            listing = self._dirs.get(name)
            if listing is not None:
                self._dirs.move_to_end(name)
            return listing

    def put(self, name: str, listing: list[DirEntry]) -> None:
        """Keep ``listing`` of directory ``name``, dropping the least recent ones over the cap."""
        if len(listing) > self.max_entries:
            return
        with self._lock:
            old = self._dirs.pop(name, None)
            if old is not None:
                self.entries -= len(old)
            self._dirs[name] = listing
            self.entries += len(listing)
            while self.entries > self.max_entries:
                _, dropped = self._dirs.popitem(last=False)
                self.entries -= len(dropped)

    def memory_bytes(self) -> int:
        """What the kept listings hold, estimated."""
        return self.entries * ENTRY_BYTES
