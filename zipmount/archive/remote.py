"""The bytes of one version of a remote object, read through the shared block cache."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from ..cache import BlockCache
from ..errors import ObjectChanged
from ..source import ObjectInfo, Source
from .readahead import READAHEAD_MAX, READAHEAD_MIN


class CachedObject:
    """One version of a remote object read through the shared block cache."""

    def __init__(self, source: Source, obj: ObjectInfo, cache: BlockCache,
                 on_changed: Callable[[], None] | None = None) -> None:
        self.source = source
        self.obj = obj
        self.cache = cache
        self.key = obj.cache_key(source.location)
        self.on_changed = on_changed  # told when the server no longer has this version

    def _fetch(self, start: int, end: int) -> bytes:
        try:
            return self.source.read(self.obj, start, end)
        except ObjectChanged:
            if self.on_changed is not None:
                self.on_changed()
            raise

    def read(self, start: int, end: int) -> bytes:
        # The deadline is this source's (its filesystem's or mount's), not the shared cache's.
        return self.cache.read(self.key, self.obj.size, start, end, self._fetch,
                               timeout=self.source.options.timeout)

    @property
    def readahead_max(self) -> int:
        """How far ahead a reader may be fetched: READAHEAD_MAX, or an eighth of the memory
        cache if that is less (what is fetched ahead must not evict itself before it is read)."""
        return max(READAHEAD_MIN, min(READAHEAD_MAX, self.cache.memory.capacity // 8))

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

