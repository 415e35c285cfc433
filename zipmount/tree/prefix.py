"""A prefix as a tree: every object whose name ends with an archive suffix is a directory, every
other object a plain read-only file (unless ``archives_only``), and ``.raw/`` holds each object's
own bytes.

The prefix is listed once (one paginated listing); each archive's index is read on first access
only, so a prefix of thousands of archives mounts at once. The listing is revalidated after
``ttl`` seconds in the background; while the store is unreachable the last good one is served.

``.raw/`` (the raw view): ``.raw/<path>`` is the object at ``<path>`` as a plain file, archives
included (to copy, checksum or hand an archive to a zip tool). Like ZFS's ``.zfs`` with
``snapdir=hidden``, it is reachable by name but not listed in the prefix's root, so ``find``,
``du`` or ``cp -r`` of the mount never read every archive twice. Objects whose key starts with
``.raw/`` are not shown (one log line each).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field

from ..archive import clean_name
from ..errors import IsADirectory, NotADirectory, NotASymlink, NotFound, ObjectNotFound, SourceError
from ..store import ObjectInfo
from .archive_tree import ArchiveSlot, ArchiveTree, Reach
from .base import DIR_MODE, DirEntry, FileReader, Node
from .objects import ObjectReader, object_node
from .views import remember_view

log = logging.getLogger(__name__)

RAW_DIR = ".raw"


@dataclass
class _Listing:
    """What one listing shows, by tree-relative path (swapped as a whole on relist)."""

    archives: dict[str, ArchiveTree] = field(default_factory=dict)
    files: dict[str, ObjectInfo] = field(default_factory=dict)
    dirs: dict[str, set[str]] = field(default_factory=lambda: {"": set()})

    def taken(self, name: str) -> bool:
        """Whether ``name``, or a parent of it, is already something else in the tree."""
        if name in self.archives or name in self.files or name in self.dirs:
            return True
        parts = name.split("/")
        return any("/".join(parts[:i]) in self.archives or "/".join(parts[:i]) in self.files
                   for i in range(1, len(parts)))

    def add(self, rel: str) -> None:
        """Enter ``rel`` in its parent directory, creating the directories above it."""
        parent, _, base = rel.rpartition("/")
        self.dirs.setdefault(parent, set()).add(base)
        while parent:
            grand, _, base = parent.rpartition("/")
            self.dirs.setdefault(grand, set()).add(base)
            parent = grand

    def raw_object(self, rel: str) -> ObjectInfo | None:
        """The object shown at ``rel`` (an archive or a plain file), if any."""
        tree = self.archives.get(rel)
        return tree.slot.obj if tree is not None else self.files.get(rel)


class PrefixTree:
    """The objects below ``path`` (a prefix ending in ``/``): archives as directories, the
    others as plain files (``archives_only``: hidden), every object's bytes under ``.raw/``."""

    def __init__(self, reach: Reach, path: str, *, suffixes: tuple[str, ...], root: str = "",
                 ttl: float = 60.0, archives_only: bool = False) -> None:
        self.reach = reach
        self.path = path
        self.suffixes = tuple(s.lower() for s in suffixes)
        self.root = root
        self.ttl = ttl
        self.archives_only = archives_only
        self._listing = _Listing()
        self._listed = 0.0
        self._relisting = False
        self._lock = threading.Lock()
        self.mtime_ns = time.time_ns()

    # -- the listing ------------------------------------------------------------------------------

    def relist(self, strict: bool = False) -> None:
        """List the prefix now (``strict``: errors, and a prefix that does not exist, raise)."""
        source = self.reach.source
        try:
            objects = source.list_objects(self.path)
            if strict and not objects and not source.exists(self.path):
                raise ObjectNotFound(f"not found: {self.path}")
        except SourceError as exc:
            if strict:
                raise
            log.warning("cannot relist %s, serving the last listing: %s", self.path, exc)
            self._listed = time.monotonic()
            return
        remember_view(self.reach.cache.disk, source.location, self.path, objects, False)
        self.apply_listing(objects, 0.0)

    def apply_listing(self, objects: list[ObjectInfo], age: float) -> None:
        """Show ``objects`` (a listing ``age`` seconds old): archives first, then the others
        (a plain object never hides an archive, nor a directory)."""
        prefix = self.path.rstrip("/") + "/"
        new = _Listing()
        below = sorted((o for o in objects if o.path.startswith(prefix)), key=lambda o: o.path)
        archives, others = [], []
        for obj in below:
            if obj.path.lower().endswith(self.suffixes):
                archives.append(obj)
            elif not self.archives_only:
                others.append(obj)
        old = self._listing.archives
        for obj in archives:
            rel = self._tree_name(obj.path[len(prefix):], new)
            if rel is None:
                continue
            tree = old.get(rel)
            if tree is not None:
                tree.slot.replace(obj)
            else:
                tree = ArchiveTree(ArchiveSlot(self.reach, obj), self.root)
            new.archives[rel] = tree
            new.add(rel)
        # Deepest first: an object named like a directory of others ("a" beside "a/b", or a
        # "directory marker" "a/") is skipped, the directory shows.
        for obj in sorted(others, key=lambda o: -o.path.count("/")):
            rel = self._tree_name(obj.path[len(prefix):], new)
            if rel is not None:
                new.files[rel] = obj
                new.add(rel)
        with self._lock:
            self._listing = new
            self._listed = time.monotonic() - age
        log.info("listed %s: %d archives, %d other objects", self.path, len(new.archives),
                 len(new.files))

    @staticmethod
    def _tree_name(key: str, listing: _Listing) -> str | None:
        """Where the object ``key`` (relative to the prefix) shows in the tree: keys with ``//``,
        ``.``, ``..``, control characters or over-long components show under a cleaned name;
        None (and a log line) if that name is taken, is the raw view's, or the key cleans to
        nothing."""
        name = clean_name(key, backslash_separates=False)  # an S3 key: a backslash is a character
        if name is None:
            log.warning("prefix: object %r has no usable name: skipped", key)
            return None
        if name.split("/")[0] == RAW_DIR:
            log.warning("prefix: object %r would show inside the raw view %s/: skipped", key,
                        RAW_DIR)
            return None
        if listing.taken(name):
            if name in listing.dirs:  # e.g. a "directory marker": the directory shows
                log.info("prefix: object %r is a directory here: skipped", key)
            else:
                log.warning("prefix: object %r would show as %r, where another object is: "
                            "skipped", key, name)
            return None
        if name != key:
            log.info("prefix: object %r shows as %r", key, name)
        return name

    def expire_listing(self) -> None:
        """Relist on the next access, whatever the TTL says."""
        self._listed = float("-inf")

    def _fresh(self) -> _Listing:
        """The listing to serve; relists in the background once it is older than the TTL."""
        with self._lock:
            listing = self._listing
            if self._relisting or time.monotonic() - self._listed <= self.ttl:
                return listing
            self._relisting = True
        threading.Thread(target=self._relist_in_background, daemon=True,
                         name="zipmount-relist").start()
        return listing

    def _relist_in_background(self) -> None:
        try:
            self.relist()
        finally:
            self._relisting = False

    # -- lookups ----------------------------------------------------------------------------------

    def _split(self, listing: _Listing, rel: str) -> tuple[ArchiveTree | None, str]:
        """The archive holding ``rel`` and the path inside it (``None``: not in an archive)."""
        parts = rel.split("/") if rel else []
        for i in range(1, len(parts) + 1):
            tree = listing.archives.get("/".join(parts[:i]))
            if tree is not None:
                if tree.slot.stale:  # a read found it replaced or deleted: relist now
                    tree.slot.stale = False
                    self.expire_listing()
                    self._fresh()
                return tree, "/".join(parts[i:])
        return None, rel

    @staticmethod
    def _raw_path(rel: str) -> str | None:
        """The path inside the raw view if ``rel`` is in it, else None."""
        if rel == RAW_DIR:
            return ""
        return rel[len(RAW_DIR) + 1:] if rel.startswith(RAW_DIR + "/") else None

    @staticmethod
    def _dir_node(listing: _Listing, rel: str, mtime_ns: int, raw: bool) -> Node:
        prefix = f"{rel}/" if rel else ""
        subdirs = sum(1 for n in listing.dirs[rel] if f"{prefix}{n}" in listing.dirs or
                      (not raw and f"{prefix}{n}" in listing.archives))
        return Node("dir", 0, mtime_ns, DIR_MODE, nlink=2 + subdirs)

    def stat(self, path: str) -> Node:
        listing = self._fresh()
        rel = path.strip("/")
        raw = self._raw_path(rel)
        if raw is not None:
            obj = listing.raw_object(raw)
            if obj is not None:
                return object_node(obj)
            if raw not in listing.dirs:
                raise NotFound(path)
            return self._dir_node(listing, raw, self.mtime_ns, raw=True)
        tree, inner = self._split(listing, rel)
        if tree is not None:
            return tree.stat(inner)
        obj = listing.files.get(inner)
        if obj is not None:
            return object_node(obj)
        if inner not in listing.dirs:
            raise NotFound(path)
        return self._dir_node(listing, inner, self.mtime_ns, raw=False)

    def listdir(self, path: str) -> list[tuple[str, str]]:
        listing = self._fresh()
        rel = path.strip("/")
        raw = self._raw_path(rel)
        if raw is not None:
            if listing.raw_object(raw) is not None:
                raise NotADirectory(path)
            names = listing.dirs.get(raw)
            if names is None:
                raise NotFound(path)
            prefix = f"{raw}/" if raw else ""
            return [(n, "dir" if f"{prefix}{n}" in listing.dirs else "file") for n in sorted(names)]
        tree, inner = self._split(listing, rel)
        if tree is not None:
            return tree.listdir(inner)
        if inner in listing.files:
            raise NotADirectory(path)
        names = listing.dirs.get(inner)
        if names is None:
            raise NotFound(path)
        prefix = f"{inner}/" if inner else ""
        return [(n, "file" if f"{prefix}{n}" in listing.files else "dir") for n in sorted(names)]

    def scandir(self, path: str) -> list[DirEntry]:
        tree, inner = self._split(self._fresh(), path.strip("/"))
        if tree is not None:
            return tree.scandir(inner)
        # Outside an archive each node is asked afresh: an archive's changes when it is opened.
        parent = path.rstrip("/")
        stat = functools.partial(self._child_stat, parent)
        return [DirEntry(name, kind, stat) for name, kind in self.listdir(path)]

    def _child_stat(self, parent: str, name: str) -> Node:
        return self.stat(f"{parent}/{name}")

    def open(self, path: str) -> FileReader:
        listing = self._fresh()
        rel = path.strip("/")
        raw = self._raw_path(rel)
        if raw is not None:
            obj = listing.raw_object(raw)
            if obj is None:
                raise IsADirectory(path) if raw in listing.dirs else NotFound(path)
            return ObjectReader(self.reach, obj, self.expire_listing)
        tree, inner = self._split(listing, rel)
        if tree is not None:
            return tree.open(inner)
        obj = listing.files.get(inner)
        if obj is not None:
            return ObjectReader(self.reach, obj, self.expire_listing)
        raise IsADirectory(path) if inner in listing.dirs else NotFound(path)

    def readlink(self, path: str) -> str:
        listing = self._fresh()
        rel = path.strip("/")
        raw = self._raw_path(rel)
        if raw is None:
            tree, inner = self._split(listing, rel)
            if tree is not None:
                return tree.readlink(inner)
            raw = inner
        if raw in listing.dirs or listing.raw_object(raw) is not None:
            raise NotASymlink(f"{path}: not a symlink")
        raise NotFound(path)

    def open_archives(self) -> int:
        return sum(tree.open_archives() for tree in list(self._listing.archives.values()))
