"""The engine: the one place that wires source → cache → archive → tree, from a config.

Both front-ends — the FUSE daemon and the fsspec filesystem — get their trees here and never
build layers themselves. Importing the engine needs neither libfuse nor (until the first
request) fsspec/s3fs.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .archive import Decoding
from .archive.decompress import DECODER_MEMORY, DecoderBudget
from .cache import BlockCache, DiskTier
from .config import CacheConfig
from .errors import ZipmountError
from .source import Source, StorageOptions
from .stats import Stats
from .store import Store
from .tree import DEFAULT_SUFFIXES, Reach, Tree, View, open_tree
from .tree.indexes import IndexLRU

if TYPE_CHECKING:
    import fsspec

log = logging.getLogger(__name__)


class Engine:
    """One block cache (memory + disk) and the trees served over it."""

    _shared: dict[str | None, Engine] = {}  # by cache dir, of this process (Engine.pid)
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, cache: CacheConfig) -> Engine:
        """The process-wide engine of ``cache.dir``: every in-process filesystem using that
        cache directory (or none) shares one memory cap and one disk tier. A forked child gets
        its own (the parent's threads do not exist in it).

        The first caller's sizes win; a later caller asking for others is told so in the log.
        """
        key = _shared_key(cache.dir)
        with cls._shared_lock:
            engine = cls._shared.get(key)
            if engine is None or engine.pid != os.getpid():
                if not cls._shared:
                    # A script that reads and exits must not lose the disk copies still queued.
                    atexit.register(cls.close_shared)
                engine = cls._shared[key] = cls(StorageOptions(), cache)
            elif (engine.settings.memory, engine.settings.size) != (cache.memory, cache.size):
                log.info("cache %s is already open in this process with memory=%d, size=%d: "
                         "using those", key or "(memory only)", engine.settings.memory,
                         engine.settings.size)
            return engine

    @classmethod
    def close_shared(cls, *cache_dirs: str | None) -> None:
        """Close the shared engines of ``cache_dirs`` (None: the memory-only one; no argument:
        all), letting queued disk writes finish. Filesystems still using one fail from then
        on: this is for process exit, and for benchmarks standing for a new process."""
        with cls._shared_lock:
            keys = [_shared_key(d) for d in cache_dirs] if cache_dirs else list(cls._shared)
            engines = [e for e in (cls._shared.pop(k, None) for k in keys)
                       if e is not None and e.pid == os.getpid()]
        for engine in engines:
            engine.close()

    def __init__(self, storage: StorageOptions, cache: CacheConfig,
                 stats: Stats | None = None) -> None:
        self.pid = os.getpid()  # its threads exist in this process only
        self.storage = storage
        self.settings = cache
        self.stats = stats or Stats()
        self.cache = BlockCache(cache.memory, self._open_disk(cache), self.stats,
                                timeout=storage.timeout)
        self.indexes = IndexLRU(cache.index_memory)
        # Checkpoints, parked streams and decoder memory, shared by every archive served.
        self.decoding = Decoding(budget=DecoderBudget(DECODER_MEMORY, storage.timeout))
        self.trees: weakref.WeakSet[Tree] = weakref.WeakSet()  # for the gauges; owners hold them
        self.stats.providers.append(self.gauges)

    @staticmethod
    def _open_disk(cfg: CacheConfig) -> DiskTier | None:
        if not cfg.dir:
            return None
        try:
            Path(cfg.dir).mkdir(parents=True, exist_ok=True)
            return DiskTier(Path(cfg.dir), cfg.size)
        except OSError as exc:
            raise ZipmountError(f"cannot use cache dir {cfg.dir}: {exc.strerror}") from None

    def source(self, url: str) -> tuple[Source, str]:
        """The source for ``url`` and the path inside it."""
        return Source.for_url(url, self.storage, self.stats)

    def open_tree(self, url: str, *, suffixes: tuple[str, ...] = DEFAULT_SUFFIXES,
                  root: str | None = None, archives_only: bool = False) -> Tree:
        """The tree of ``url`` (one archive, or a prefix), checked now."""
        source, path = self.source(url)
        return self.tree_for(source, path, suffixes=suffixes, root=root,
                             archives_only=archives_only)

    def tree_for(self, source: Store, path: str, *, suffixes: tuple[str, ...] = DEFAULT_SUFFIXES,
                 root: str | None = None, ttl: float | None = None,
                 archives_only: bool = False, view: View | None = None) -> Tree:
        """The tree of ``path`` in ``source`` (any :class:`Store`: the s3fs source, or a test's
        in-memory one), checked now (``ttl``: default the config's; ``view``: the versions to
        serve, pinned by another process, see :func:`open_tree`)."""
        reach = Reach(source, self.cache, self.stats, self.indexes, self.decoding)
        tree = open_tree(reach, path, suffixes=suffixes, root=root,
                         ttl=self.settings.ttl if ttl is None else ttl, archives_only=archives_only,
                         view=view)
        self.trees.add(tree)
        return tree

    def filesystem_tree(self, fs: fsspec.AbstractFileSystem, path: str, *, timeout: float,
                        known: dict[str, Any] | None = None,
                        suffixes: tuple[str, ...] = DEFAULT_SUFFIXES, root: str | None = None,
                        ttl: float | None = None, archives_only: bool = False,
                        view: View | None = None) -> Tree:
        """The tree of ``path`` in an fsspec filesystem built by the caller (the fsspec
        front-end); ``known``: that object's fsspec details, if the caller has them; ``view``:
        the versions another process pinned. Its reads keep ``timeout``, whatever the shared
        cache's own."""
        source = Source.for_filesystem(fs, StorageOptions(timeout=timeout), self.stats, known)
        return self.tree_for(source, path, suffixes=suffixes, root=root, ttl=ttl,
                             archives_only=archives_only, view=view)

    def gauges(self) -> dict[str, float]:
        disk = self.cache.disk
        return {
            "memory_cache_bytes": self.cache.memory.used,
            "memory_cache_capacity": self.cache.memory.capacity,
            "disk_cache_bytes": disk.used if disk else 0,
            "disk_cache_capacity": disk.capacity if disk else 0,
            "open_archives": sum(t.open_archives() for t in list(self.trees)),
            "index_memory_bytes": self.indexes.used,
            "decoder_memory_bytes": self.decoding.budget.used,
        }

    def close(self) -> None:
        self.cache.close()
        self.decoding.close()


def _shared_key(cache_dir: str | None) -> str | None:
    return os.path.realpath(cache_dir) if cache_dir else None
