"""The bytes of one version of a remote object, read through the shared block cache."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from ..cache import BlockCache
from ..store import ObjectInfo, Store


class CachedObject:
    """One version of a remote object read through the shared block cache.

    A read that finds the server no longer has this version raises
    :class:`~zipmount.errors.ObjectChanged` (ESTALE) to its caller, who decides what that means.
    """

    def __init__(self, source: Store, obj: ObjectInfo, cache: BlockCache) -> None:
        self.source = source
        self.obj = obj
        self.cache = cache
        self.key = obj.cache_key(source.location)

    def _fetch(self, start: int, end: int) -> bytes:
        return self.source.read(self.obj, start, end)

    def read(self, start: int, end: int) -> bytes:
        # The deadline is this source's (its filesystem's or mount's), not the shared cache's.
        return self.cache.read(self.key, self.obj.size, start, end, self._fetch,
                               timeout=self.source.timeout)

    def prefetch(self, start: int, end: int) -> None:
        self.cache.prefetch(self.key, self.obj.size, start, end, self._fetch)


class RemoteFile(io.RawIOBase):
    """A seekable, read-only file view of a :class:`CachedObject` (for zipfile)."""

    def __init__(self, cached: CachedObject,
                 observe: Callable[[int, int], None] | None = None) -> None:
        self.cached = cached
        self.pos = 0
        self.observe = observe

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.cached.obj.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, size: int = -1) -> bytes:
        end = self.cached.obj.size if size is None or size < 0 else self.pos + size
        if self.observe is not None:
            self.observe(self.pos, end)
        data = self.cached.read(self.pos, end)
        self.pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

