"""The store seam: what every layer above the source needs of an object store, and nothing more.

:class:`Store` is the contract (mountpoint-s3's ``ObjectClient``): ``stat`` and ``list`` give
:class:`ObjectInfo` identities, and ``read`` returns bytes of exactly the version an identity
names, or raises :class:`~zipmount.errors.ObjectChanged` (never another version's bytes). The
s3fs-backed :class:`zipmount.source.Source` implements it for the daemon and the fsspec
front-end; tests plug in an in-memory store and a fault-injecting wrapper
(``tests/support/stores.py``). Errors are :mod:`zipmount.errors` exceptions carrying their errno.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    """One version of one remote object: what the cache and index are keyed by."""

    path: str  # fsspec path without protocol, e.g. "bucket/dir/rec.rkns"
    size: int
    etag: str  # ETag, version id, or an mtime token where the store has neither
    mtime: float

    def cache_key(self, location: str) -> str:
        """A stable hex key for this exact version of the object at ``location``."""
        ident = f"{location}\0{self.path}\0{self.etag}\0{self.size}"
        return hashlib.sha256(ident.encode()).hexdigest()[:40]


class Store(Protocol):
    """An object store as the cache, archive and tree layers use it.

    Every call ends within the store's own deadline: with an answer or a
    :class:`~zipmount.errors.SourceError` (``ObjectNotFound``: ENOENT, ``ObjectChanged``:
    ESTALE, anything else: EIO).
    """

    location: str  # where the store is (e.g. "s3|https://minio:9000"); part of every cache key
    @property
    def timeout(self) -> float:
        """The deadline of every call, in seconds (also a read's bound on waiting)."""
        ...

    def stat(self, path: str) -> ObjectInfo | None:
        """Identity of the current version of the object at ``path``; ``None`` if ``path`` is a
        directory (prefix); ``ObjectNotFound`` if neither."""
        ...

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object below ``prefix`` (recursively), current versions."""
        ...

    def exists(self, path: str) -> bool:
        """Whether ``path`` names an object, a prefix or a bucket (an empty prefix exists if
        its bucket does)."""
        ...

    def read(self, obj: ObjectInfo, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` (clipped to the size) of exactly version ``obj``; raises
        ``ObjectChanged`` if the store no longer has that version, replaced or deleted (a
        reader pinned to it gets ESTALE, never ENOENT from a read)."""
        ...
