"""Namespace layer: the mounted tree, for one archive or for a prefix of many archives.

A prefix mount lists the prefix once (one paginated listing) and shows every object whose name ends
with a configured suffix as a directory; each archive's index is read on first access only, so a
prefix of thousands of archives mounts instantly. Listings and archive identities are revalidated
after ``ttl`` seconds; while the store is unreachable the last good view keeps being served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import threading
import time
from dataclasses import asdict, dataclass

from .archive import Archive, CachedObject, Entry, MemberReader
from .cache import BlockCache, DiskTier
from .errors import (
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
from .source import ObjectInfo, Source
from .stats import Stats

log = logging.getLogger(__name__)

DEFAULT_SUFFIXES = (".zip", ".rkns")


@dataclass(frozen=True)
class Node:
    """What ``getattr`` needs to know of one path."""

    kind: str  # "dir", "file" or "link"
    size: int
    mtime_ns: int
    mode: int
    method: int | None = None  # zip compression method of a member
    nlink: int = 1  # directories: 2 + subdirectories
    version: str = ""  # files: which archive version and member the attributes describe


def _view_file(location: str, path: str) -> str:
    return hashlib.sha256(f"{location}\0{path}".encode()).hexdigest()[:40] + ".view.json"


def remember_view(disk: DiskTier | None, location: str, path: str, objects: list[ObjectInfo],
                  single: bool) -> None:
    """Note in the cache dir what ``path`` is just now: one archive (``single``) or the listing
    of a prefix. The next mount within the TTL starts from it."""
    if disk is None:
        return
    doc = {"single": single, "objects": [asdict(o) for o in objects], "checked": time.time()}
    data = json.dumps(doc, separators=(",", ":")).encode()
    try:
        disk.write(_view_file(location, path), [data], len(data))
    except OSError as exc:
        log.debug("cannot remember what %s is: %s", path, exc)


def remembered_view(disk: DiskTier | None, location: str, path: str,
                    ttl: float) -> tuple[list[ObjectInfo], bool, float] | None:
    """What an earlier mount saw at ``path`` less than ``ttl`` seconds ago: its objects, whether
    it is one archive, and the age of that view."""
    name = _view_file(location, path)
    if disk is None or ttl <= 0 or not disk.touch(name):
        return None
    try:
        doc = json.loads(disk.path(name).read_bytes())
        age = time.time() - float(doc["checked"])
        objects = [ObjectInfo(**o) for o in doc["objects"]]
        single = bool(doc["single"]) and len(objects) == 1
    except (OSError, ValueError, TypeError, KeyError):
        disk.remove(name)
        return None
    return (objects, single, age) if 0 <= age < ttl else None


class ArchiveSlot:
    """One archive in the tree: opened on first use, revalidated after the TTL.

    An archive that cannot be read shows as an empty directory (and one log line); it never
    affects its siblings.
    """

    def __init__(self, ns: Namespace, obj: ObjectInfo, age: float = 0.0) -> None:
        self.ns = ns
        self.obj = obj
        self._archive: Archive | None = None
        self._broken: ZipmountError | None = None
        self._checked = time.monotonic() - age  # when the identity was last confirmed
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._archive is not None

    @property
    def deleted(self) -> bool:
        """The last revalidation found the object gone."""
        return isinstance(self._broken, ObjectNotFound)

    def node(self) -> Node:
        archive = self._archive
        subdirs = archive.subdirs.get(self.ns.root, 0) if archive is not None else 0
        return Node("dir", 0, int(self.obj.mtime * 1e9), 0o555, nlink=2 + subdirs)

    def replace(self, obj: ObjectInfo) -> None:
        """Switch to a new identity seen in a listing (drops the old index)."""
        with self._lock:
            if obj.etag != self.obj.etag or obj.size != self.obj.size:
                log.info("archive %s changed on the server (ETag %s -> %s)", obj.path,
                         self.obj.etag, obj.etag)
                self.obj, self._archive, self._broken = obj, None, None
            elif self.deleted:  # deleted, now back
                self._broken = None
            self._checked = time.monotonic()

    def expire(self) -> None:
        """The server no longer has the version served: revalidate on the next access."""
        if self.ns.single:
            self._checked = float("-inf")
        else:
            self.ns.expire_listing()

    def archive(self, strict: bool = False) -> Archive | None:
        """The open archive, or None if it is broken (``strict``: raise instead)."""
        with self._lock:
            if self.ns.single and time.monotonic() - self._checked > self.ns.ttl:
                # Revalidate in the background: readers keep the current view meanwhile, so a
                # slow or dead endpoint never stalls lookups of what is already known.
                self._checked = time.monotonic()
                threading.Thread(target=self._revalidate, daemon=True,
                                 name="zipmount-revalidate").start()
            if self._archive is None and (self._broken is None or strict):
                try:
                    cached = CachedObject(self.ns.source, self.obj, self.ns.cache, self.expire)
                    self._archive = Archive.open(cached, self.ns.cache.disk)
                    self._broken = None
                    self.ns.stats.add("archives_opened")
                    log.info("opened archive %s (%d entries, ETag %s)", self.obj.path,
                             len(self._archive.entries), self.obj.etag)
                except ZipmountError as exc:
                    if strict:
                        raise
                    if isinstance(exc, SourceError) and not isinstance(exc, ObjectNotFound):
                        # The store failed, not the archive: fail this call, retry on the next.
                        log.warning("cannot open archive %s now: %s", self.obj.path, exc)
                        raise
                    self._broken = exc
                    log.error("cannot open archive %s: %s", self.obj.path, exc)
            return self._archive

    def _revalidate(self) -> None:
        try:
            obj = self.ns.source.stat(self.obj.path)
        except ObjectNotFound:
            log.warning("archive %s was deleted on the server", self.obj.path)
            with self._lock:
                self._archive, self._broken = None, ObjectNotFound(f"{self.obj.path}: deleted")
            return
        except SourceError as exc:
            log.warning("cannot revalidate %s, serving the last good version: %s",
                        self.obj.path, exc)
            return
        if obj is not None:
            self.replace(obj)
            remember_view(self.ns.cache.disk, self.ns.source.location, self.ns.path, [obj], True)


class Namespace:
    """The tree under one mountpoint: one archive (``single``) or a prefix of archives."""

    def __init__(self, source: Source, path: str, cache: BlockCache, stats: Stats, *,
                 suffixes: tuple[str, ...] = DEFAULT_SUFFIXES, root: str | None = None,
                 ttl: float = 60.0) -> None:
        self.source = source
        self.path = path
        self.cache = cache
        self.stats = stats
        self.suffixes = tuple(s.lower() for s in suffixes)
        self.root = (root or "").strip("/")
        self.ttl = ttl
        self.single = False
        self._slots: dict[str, ArchiveSlot] = {}  # mount-relative path -> archive
        self._dirs: dict[str, set[str]] = {"": set()}
        self._listed = 0.0
        self._relisting = False
        self._lock = threading.Lock()
        self.mtime_ns = time.time_ns()

    # -- set-up ---------------------------------------------------------------------------------

    def check(self) -> None:
        """Connect and validate the source: raises a one-line error if it cannot be served.

        If an earlier mount saw this archive (or listed this prefix) less than ``ttl`` ago, that
        view is served without any request: archives from their persisted indexes, revalidated
        once the TTL is up.
        """
        seen = remembered_view(self.cache.disk, self.source.location, self.path, self.ttl)
        if seen is not None:
            objects, single, age = seen
            try:
                if single:
                    self._open_single(objects[0], age)
                else:
                    self._apply_listing(objects, age)
                return
            except ObjectChanged:  # replaced since, and its index is no longer cached
                log.info("%s changed since it was last checked", self.path)
        if not self.path.endswith("/"):
            obj = self.source.stat(self.path)
            if obj is not None:
                remember_view(self.cache.disk, self.source.location, self.path, [obj], True)
                self._open_single(obj, 0.0)
                return
        self._relist(strict=True)

    def _open_single(self, obj: ObjectInfo, age: float) -> None:
        self.single = True
        slot = self._slots[""] = ArchiveSlot(self, obj, age)
        try:
            archive = slot.archive(strict=True)
        except ZipmountError:
            self.single, self._slots = False, {}
            raise
        if archive is not None and self.root and self.root not in archive.children:
            raise ArchiveError(f"--root {self.root!r} is not a directory in {obj.path}")

    def _relist(self, strict: bool = False) -> None:
        try:
            objects = self.source.list_objects(self.path)
            if strict and not objects and not self.source.fs.exists(self.path):
                raise ObjectNotFound(f"not found: {self.path}")
        except SourceError as exc:
            if strict:
                raise
            log.warning("cannot relist %s, serving the last listing: %s", self.path, exc)
            self._listed = time.monotonic()
            return
        remember_view(self.cache.disk, self.source.location, self.path, objects, False)
        self._apply_listing(objects, 0.0)

    def _apply_listing(self, objects: list[ObjectInfo], age: float) -> None:
        """Show the archives among ``objects`` (a listing ``age`` seconds old)."""
        prefix = self.path.rstrip("/") + "/"
        slots: dict[str, ArchiveSlot] = {}
        dirs: dict[str, set[str]] = {"": set()}
        for obj in objects:
            if not obj.path.startswith(prefix) or not obj.path.lower().endswith(self.suffixes):
                continue
            rel = obj.path[len(prefix):]
            old = self._slots.get(rel)
            if old is not None:
                old.replace(obj)
                slots[rel] = old
            else:
                slots[rel] = ArchiveSlot(self, obj)
            parent, _, base = rel.rpartition("/")
            dirs.setdefault(parent, set()).add(base)
            while parent:
                grand, _, base = parent.rpartition("/")
                dirs.setdefault(grand, set()).add(base)
                parent = grand
        with self._lock:
            self._slots, self._dirs = slots, dirs
            self._listed = time.monotonic() - age
        log.info("listed %s: %d archives", self.path, len(slots))

    def expire_listing(self) -> None:
        """Relist on the next access, whatever the TTL says."""
        self._listed = float("-inf")

    def _fresh(self) -> None:
        """Relist in the background once the listing is older than the TTL."""
        with self._lock:
            if self.single or self._relisting or time.monotonic() - self._listed <= self.ttl:
                return
            self._relisting = True
        threading.Thread(target=self._relist_in_background, daemon=True,
                         name="zipmount-relist").start()

    def _relist_in_background(self) -> None:
        try:
            self._relist()
        finally:
            self._relisting = False

    # -- lookups ----------------------------------------------------------------------------------

    def _split(self, path: str) -> tuple[ArchiveSlot | None, str]:
        """The archive holding ``path`` and the path inside it (``None``: a virtual directory)."""
        rel = path.strip("/")
        if self.single:
            return self._slots[""], rel
        self._fresh()
        parts = rel.split("/") if rel else []
        for i in range(1, len(parts) + 1):
            slot = self._slots.get("/".join(parts[:i]))
            if slot is not None:
                return slot, "/".join(parts[i:])
        return None, rel

    def _inner(self, archive: Archive, inner: str) -> Entry | None:
        name = posixpath.join(self.root, inner).strip("/") if self.root else inner
        if not name:
            return None
        entry = archive.entries.get(name)
        if entry is None:
            raise NotFound(name)
        return entry

    def _archive(self, slot: ArchiveSlot) -> Archive | None:
        archive = slot.archive()
        if self.single and slot.deleted and archive is None:
            raise NotFound(slot.obj.path)
        return archive

    def getattr(self, path: str) -> Node:
        slot, inner = self._split(path)
        if slot is None:
            names = self._dirs.get(inner)
            if names is None:
                raise NotFound(path)
            prefix = f"{inner}/" if inner else ""
            subdirs = sum(1 for n in names if f"{prefix}{n}" in self._dirs or
                          f"{prefix}{n}" in self._slots)
            return Node("dir", 0, self.mtime_ns, 0o555, nlink=2 + subdirs)
        try:
            archive = self._archive(slot)
        except SourceError:
            if inner:
                raise
            archive = None  # the store is unreachable now; the archive is still a directory
        if archive is None:
            if inner:
                raise NotFound(path)
            return slot.node()
        entry = self._inner(archive, inner)
        if entry is None:
            return slot.node()
        if entry.kind == "dir":
            return Node("dir", 0, entry.mtime_ns, entry.mode, nlink=2 + archive.subdirs[entry.name])
        # The CRC in the sub-second part of mtime lets the kernel (auto_cache) drop cached pages
        # of a member whose content changed even when its size and DOS timestamp did not.
        return Node(entry.kind, entry.size, entry.mtime_ns + entry.crc % 10**9, entry.mode,
                    entry.method, version=archive.member_version(entry))

    def listdir(self, path: str) -> list[tuple[str, str]]:
        """(name, kind) of each child: the kind lets readdir fill in d_type, so that walkers
        like ``find`` need no lookup per file."""
        slot, inner = self._split(path)
        if slot is None:
            names = self._dirs.get(inner)
            if names is None:
                raise NotFound(path)
            return [(n, "dir") for n in sorted(names)]
        archive = self._archive(slot)
        if archive is None:
            if inner:
                raise NotFound(path)
            return []
        name = posixpath.join(self.root, inner).strip("/") if self.root else inner
        names = archive.children.get(name)
        if names is None:
            raise NotADirectory(path) if name in archive.entries else NotFound(path)
        prefix = f"{name}/" if name else ""
        return [(n, archive.entries[prefix + n].kind) for n in names]

    def _entry(self, path: str) -> tuple[Archive, Entry]:
        slot, inner = self._split(path)
        if slot is None:
            raise IsADirectory(path) if inner in self._dirs else NotFound(path)
        archive = self._archive(slot)
        if archive is None:
            raise NotFound(path) if inner else IsADirectory(path)
        entry = self._inner(archive, inner)
        if entry is None or entry.kind == "dir":
            raise IsADirectory(path)
        return archive, entry

    def open(self, path: str) -> MemberReader:
        archive, entry = self._entry(path)
        return archive.reader(entry)

    def readlink(self, path: str) -> str:
        archive, entry = self._entry(path)
        if entry.kind != "link":
            raise NotASymlink(f"{path}: not a symlink")
        return archive.readlink(entry)

    def open_archives(self) -> int:
        return sum(1 for slot in list(self._slots.values()) if slot.is_open)
