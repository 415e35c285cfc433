"""One archive as a tree: the slot that opens (and revalidates) it, and lookups inside it."""

from __future__ import annotations

import functools
import logging
import posixpath
import threading
import time
from dataclasses import dataclass, field

from ..archive import Archive, CachedObject, Decoding, Entry, MemberReader
from ..cache import BlockCache
from ..errors import (
    ArchiveError,
    IsADirectory,
    NotADirectory,
    NotASymlink,
    NotFound,
    ObjectChanged,
    ObjectNotFound,
    SourceError,
    ZipmountError,
)
from ..stats import Stats
from ..store import ObjectInfo, Store
from .base import DIR_MODE, DirEntry, FileReader, Node
from .indexes import IndexLRU
from .listings import Listings
from .views import remember_view

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reach:
    """What an archive is read through: the source, the shared block cache, the counters, the
    engine's cap on loaded indexes and what its compressed-member readers share."""

    source: Store
    cache: BlockCache
    stats: Stats
    indexes: IndexLRU
    decoding: Decoding = field(default_factory=Decoding)


def member_node(entry: Entry, version: str) -> Node:
    """The attributes of a member (a file or a symlink) of one archive version.

    The mtime is exactly the entry's: a changed member is told apart by ``version``, which the
    front-ends use to drop the kernel's cached pages.
    """
    return Node(entry.kind, entry.size, entry.mtime_ns, entry.mode, entry.method,
                nlink=entry.nlink, version=version)


class WatchedReader(MemberReader):
    """A member reader whose reads tell the slot when they find its version gone."""

    def __init__(self, reader: MemberReader, slot: ArchiveSlot) -> None:
        super().__init__(reader.view)
        self.reader = reader
        self.slot = slot

    @property
    def node(self) -> Node:
        return member_node(self.entry, self.version)

    def read(self, offset: int, size: int) -> bytes:
        try:
            return self.reader.read(offset, size)
        except ObjectChanged:
            self.slot.expire()
            raise

    def close(self) -> None:
        self.reader.close()


class ArchiveSlot:
    """One archive version: opened on first use; an archive that cannot be read is remembered
    as broken (one log line) and never affects its siblings.

    ``revalidate_after``: seconds after which the slot checks its own identity in the background
    (a single-archive mount); ``None`` when an owner's listing does it (a prefix mount), which
    looks at ``stale``: a read found that the server no longer has the version served.
    """

    def __init__(self, reach: Reach, obj: ObjectInfo, *, age: float = 0.0,
                 revalidate_after: float | None = None, remember_as: str | None = None) -> None:
        self.reach = reach
        self.obj = obj
        self.revalidate_after = revalidate_after
        self.remember_as = remember_as  # the mount path whose view a revalidation updates
        self.stale = False
        self._archive: Archive | None = None
        self._listings: Listings | None = None  # of _archive's directories
        self._kept_lock = threading.Lock()  # _archive dropped vs. what derives from it kept
        self._broken: ZipmountError | None = None
        self._checked = time.monotonic() - age  # when the identity was last confirmed
        self._revalidating = False
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._archive is not None

    @property
    def deleted(self) -> bool:
        """The last revalidation found the object gone."""
        return isinstance(self._broken, ObjectNotFound)

    def node(self) -> Node:
        return Node("dir", 0, int(self.obj.mtime * 1e9), DIR_MODE, nlink=2)

    def replace(self, obj: ObjectInfo) -> None:
        """Switch to a new identity seen in a listing or a check (drops the old index)."""
        with self._lock:
            if obj.etag != self.obj.etag or obj.size != self.obj.size:
                log.info("archive %s changed on the server (ETag %s -> %s)", obj.path,
                         self.obj.etag, obj.etag)
                self.obj, self._broken = obj, None
                self._forget_archive()
                self.stale = False
                self.reach.indexes.forget(self)
            elif self.deleted:  # deleted, now back
                self._broken = None
            self._checked = time.monotonic()

    def expire(self) -> None:
        """A read found the version served gone from the server: revalidate on the next access."""
        self.stale = True
        self._checked = float("-inf")

    def archive(self, strict: bool = False) -> Archive | None:
        """The open archive, or None if it is broken (``strict``: raise instead)."""
        opened = None
        with self._lock:
            if (self.revalidate_after is not None and not self._revalidating
                    and time.monotonic() - self._checked > self.revalidate_after):
                # Revalidate in the background, one check at a time: readers keep the current
                # view meanwhile, so a slow or dead endpoint never stalls lookups.
                self._revalidating = True
                threading.Thread(target=self._revalidate, daemon=True,
                                 name="zipmount-revalidate").start()
            archive = self._archive
            if archive is None and (self._broken is None or strict):
                archive = opened = self._open(strict)
        # Outside the slot's lock: the LRU may drop other slots' indexes.
        if opened is not None:
            self.reach.indexes.loaded(self)
        elif archive is not None:
            self.reach.indexes.used_by(self)
        return archive

    def drop_index(self) -> None:
        """Forget the loaded index (the LRU's call); open handles keep the one they have."""
        self._forget_archive()

    def _forget_archive(self) -> None:
        with self._kept_lock:
            self._archive = self._listings = None

    def index_bytes(self) -> int:
        """What the loaded archive and its kept listings hold in memory (the LRU's charge, asked
        at every use: a few sizes added up, never a walk over the index)."""
        archive = self._archive
        if archive is None:
            return 0
        listings = self._listings
        kept = listings.memory_bytes() if listings is not None and listings.archive is archive else 0
        return archive.memory_bytes() + kept

    def listings(self, archive: Archive) -> Listings:
        """The kept listings of ``archive``'s directories (none yet for a new version or a
        reloaded index)."""
        listings = self._listings
        if listings is None or listings.archive is not archive:
            listings = Listings(archive)
            with self._kept_lock:
                if self._archive is archive:  # not dropped meanwhile (it would stay in memory)
                    self._listings = listings
        return listings

    def _open(self, strict: bool) -> Archive | None:
        reach = self.reach
        try:
            cached = CachedObject(reach.source, self.obj, reach.cache)
            self._archive = Archive.open(cached, reach.cache.disk, reach.decoding)
            self._broken = None
            reach.stats.add("archives_opened")
            log.info("opened archive %s (%d entries, ETag %s)", self.obj.path,
                     len(self._archive.entries), self.obj.etag)
            return self._archive
        except ZipmountError as exc:
            if isinstance(exc, ObjectChanged):
                self.expire()
            if strict:
                raise
            if isinstance(exc, SourceError) and not isinstance(exc, ObjectNotFound):
                # The store failed, not the archive: fail this call, retry on the next.
                log.warning("cannot open archive %s now: %s", self.obj.path, exc)
                raise
            self._broken = exc
            log.error("cannot open archive %s: %s", self.obj.path, exc)
            return None

    def _revalidate(self) -> None:
        try:
            self._check_identity()
        finally:  # the next check may start only once this one is over, its outcome applied
            with self._lock:
                self._checked = time.monotonic()
                self._revalidating = False

    def _check_identity(self) -> None:
        try:
            obj = self.reach.source.stat(self.obj.path)
        except ObjectNotFound:
            log.warning("archive %s was deleted on the server", self.obj.path)
            with self._lock:
                self._broken = ObjectNotFound(f"{self.obj.path}: deleted")
                self._forget_archive()
            self.reach.indexes.forget(self)
            return
        except SourceError as exc:
            log.warning("cannot revalidate %s, serving the last good version: %s",
                        self.obj.path, exc)
            return
        if obj is not None:
            self.replace(obj)
            if self.remember_as is not None:
                remember_view(self.reach.cache.disk, self.reach.source.location,
                              self.remember_as, [obj], True)


class ArchiveTree:
    """The tree inside one archive (from its ``root`` subdirectory).

    ``gone_is_missing``: once the archive is deleted on the server its root is ENOENT (a
    single-archive mount); otherwise an unreadable archive is an empty directory.
    """

    def __init__(self, slot: ArchiveSlot, root: str = "", gone_is_missing: bool = False) -> None:
        self.slot = slot
        self.root = root.strip("/")
        self.gone_is_missing = gone_is_missing

    def _archive(self) -> Archive | None:
        archive = self.slot.archive()
        if self.gone_is_missing and self.slot.deleted and archive is None:
            raise NotFound(self.slot.obj.path)
        return archive

    def _name(self, path: str) -> str:
        inner = path.strip("/")
        return posixpath.join(self.root, inner).strip("/") if self.root else inner

    def _entry(self, archive: Archive, name: str) -> Entry | None:
        """The entry called ``name``; None for the tree's root."""
        if name == self.root:
            return None
        entry = archive.entries.get(name)
        if entry is None:
            raise NotFound(name)
        return entry

    def stat(self, path: str) -> Node:
        inner = path.strip("/")
        if not inner and not self.gone_is_missing and not self.slot.is_open:
            # An archive of a prefix is a directory before its index is loaded: listing the
            # prefix (readdirplus stats every entry) must not open every archive in it.
            return self.slot.node()
        try:
            archive = self._archive()
        except SourceError:
            if inner:
                raise
            archive = None  # the store is unreachable now; the archive is still a directory
        if archive is None:
            if inner:
                raise NotFound(path)
            return self.slot.node()
        return self._node(archive, self._entry(archive, self._name(inner)))

    def _node(self, archive: Archive, entry: Entry | None) -> Node:
        """The node of ``entry`` (None: the tree's root)."""
        if entry is None:
            node = self.slot.node()
            return Node("dir", 0, node.mtime_ns, DIR_MODE,
                        nlink=2 + archive.subdirs.get(self.root, 0))
        if entry.kind == "dir":
            return Node("dir", 0, entry.mtime_ns, entry.mode, nlink=2 + archive.subdirs[entry.name])
        return member_node(entry, archive.member_version(entry))

    def listdir(self, path: str) -> list[tuple[str, str]]:
        return [(entry.name, entry.kind) for entry in self.scandir(path)]

    def scandir(self, path: str) -> list[DirEntry]:
        archive = self._archive()
        if archive is None:
            if path.strip("/"):
                raise NotFound(path)
            return []
        name = self._name(path)
        listings = self.slot.listings(archive)
        listing = listings.get(name)
        if listing is None:
            names = archive.children.get(name)
            if names is None:
                raise NotADirectory(path) if name in archive.entries else NotFound(path)
            prefix = f"{name}/" if name else ""
            child = functools.partial(self._child_node, archive, prefix)
            listing = [DirEntry(n, archive.entries[prefix + n].kind, child) for n in names]
            listings.put(name, listing)
        return listing

    def _child_node(self, archive: Archive, prefix: str, name: str) -> Node:
        return self._node(archive, archive.entries[prefix + name])

    def _file(self, path: str) -> tuple[Archive, Entry]:
        archive = self._archive()
        if archive is None:
            raise NotFound(path) if path.strip("/") else IsADirectory(path)
        entry = self._entry(archive, self._name(path))
        if entry is None or entry.kind == "dir":
            raise IsADirectory(path)
        return archive, entry

    def open(self, path: str) -> FileReader:
        archive, entry = self._file(path)
        try:
            return WatchedReader(archive.reader(entry), self.slot)
        except ObjectChanged:  # the local header read
            self.slot.expire()
            raise

    def readlink(self, path: str) -> str:
        archive, entry = self._file(path)
        if entry.kind != "link":
            raise NotASymlink(f"{path}: not a symlink")
        try:
            return archive.readlink(entry)
        except ObjectChanged:
            self.slot.expire()
            raise

    def open_archives(self) -> int:
        return int(self.slot.is_open)

    def check_root(self) -> None:
        """Open the archive now (errors raised) and check that ``root`` is a directory in it."""
        archive = self.slot.archive(strict=True)
        if archive is not None and self.root and self.root not in archive.children:
            raise ArchiveError(f"--root {self.root!r} is not a directory in {self.slot.obj.path}")
