"""Remote objects read as plain files: the objects of a prefix that are not archives, and the
``.raw`` view of every object (an archive's own bytes).

A plain object is one version of a remote object, as an archive is: its reads are byte ranges
through the shared block cache, each request pinned to the ETag and size the listing gave (bytes
of two versions are never mixed; a replaced object fails the read as a changed archive does).
"""

from __future__ import annotations

from collections.abc import Callable

from ..archive import CachedObject, Prefetcher
from ..archive.readahead import readahead_max
from ..errors import ObjectChanged
from ..store import ObjectInfo
from .archive_tree import Reach
from .base import Node

# A plain file's permission bits: what a member without stored modes has (read-only is the
# mount's: every write answers EROFS).
OBJECT_MODE = 0o644


def object_version(obj: ObjectInfo) -> str:
    """What identifies the bytes of ``obj`` for the kernel-cache bookkeeping."""
    return f"object:{obj.etag}:{obj.size}"


def object_node(obj: ObjectInfo) -> Node:
    """A plain file of the object's size and mtime (from the listing: no request)."""
    return Node("file", obj.size, int(obj.mtime * 1e9), OBJECT_MODE, version=object_version(obj))


class ObjectReader:
    """Reads of one remote object (one version) for one open file handle.

    Any thread, any offset: each read is the exact range through the block cache; a handle
    that walks the object (``cp``, ``sha256sum``) is fetched ahead by a :class:`Prefetcher`.
    """

    def __init__(self, reach: Reach, obj: ObjectInfo,
                 on_changed: Callable[[], None] | None = None) -> None:
        self.obj = obj
        self.size = obj.size
        self.cached = CachedObject(reach.source, obj, reach.cache)
        self.prefetcher = Prefetcher(self.cached, readahead_max(reach.cache.memory.capacity))
        self.on_changed = on_changed

    @property
    def version(self) -> str:
        return object_version(self.obj)

    @property
    def node(self) -> Node:
        return object_node(self.obj)

    def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        self.prefetcher.observe(offset, end, self.size)
        try:
            return self.cached.read(offset, end)
        except ObjectChanged:  # the listing is out of date: the owner relists
            if self.on_changed is not None:
                self.on_changed()
            raise

    def close(self) -> None:
        """Nothing to release: reads go through the shared block cache."""
