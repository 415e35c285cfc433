"""Spill files: a big bzip2/LZMA member decompressed once into the disk cache, for random access
(their decoders cannot be copied, so they have no checkpoints; see :mod:`.decompress.streams`)."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from typing import TYPE_CHECKING

from .decompress import crc32, member_chunks

if TYPE_CHECKING:
    from ..cache import DiskTier
    from .decompress import DecoderBudget
    from .index.table import Entry
    from .view import MemberView

log = logging.getLogger(__name__)


class SpillFiles:
    """The spill files of one archive version, in the disk cache (shared by processes)."""

    def __init__(self, disk: DiskTier, budget: DecoderBudget) -> None:
        self.disk = disk
        self.budget = budget
        self._locks: dict[str, threading.Lock] = {}
        self._checked: set[str] = set()  # spill files known good in this process
        self._failed: set[str] = set()  # could not be written: stream instead
        self._lock = threading.Lock()

    def remembered(self) -> int:
        """How many spill files this archive keeps state for (locks, checked, failed)."""
        with self._lock:
            return len(self._locks) + len(self._checked) + len(self._failed)

    @staticmethod
    def _name(view: MemberView) -> str:
        entry = view.entry
        digest = hashlib.sha256(f"{entry.name}\0{entry.header_offset}".encode()).hexdigest()[:16]
        return f"{view.cached.key}.{digest}.spill"

    def path(self, view: MemberView) -> str | None:
        """A local file holding the decompressed member, made once; None if it cannot be.

        A spill file found from an earlier run is checked (size and CRC-32) before its first
        use; one that fails is made again. Write failures (no space, read-only, permissions)
        are logged and the member is streamed from then on: they never reach a read.
        """
        entry = view.entry
        if entry.size > self.disk.capacity // 4:
            return None
        name = self._name(view)
        with self._lock:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            if name in self._failed:
                return None
            path = self.disk.path(name)
            if self.disk.touch(name) and name not in self._checked:
                if _intact(entry, str(path)):
                    self._checked.add(name)
                else:
                    self.disk.remove(name)
            if not self.disk.touch(name):
                log.info("decompressing %s (%d bytes) into the disk cache for random access",
                         entry.name, entry.size)
                try:
                    self.disk.write(name, member_chunks(view, self.budget), entry.size, overwrite=False)
                except OSError as exc:
                    log.warning("cannot write the spill file of %s (%s): decompressing on "
                                "each read instead", entry.name, exc)
                    self._failed.add(name)
                    return None
                self._checked.add(name)
            return str(path)

    def forget(self, view: MemberView) -> None:
        """Drop a spill file found missing or damaged, so that the next use makes it again."""
        name = self._name(view)
        self._checked.discard(name)
        self.disk.remove(name)


def _intact(entry: Entry, path: str) -> bool:
    try:
        with open(path, "rb", buffering=0) as f:
            if os.fstat(f.fileno()).st_size != entry.size:
                log.warning("spill file of %s has the wrong size: making it again", entry.name)
                return False
            crc = 0
            while chunk := f.read(1 << 20):
                crc = crc32(chunk, crc)
    except OSError:
        return False
    if crc != entry.crc:
        log.warning("spill file of %s is corrupt (CRC-32): making it again", entry.name)
        return False
    return True
