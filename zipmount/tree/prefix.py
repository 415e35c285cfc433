"""A prefix of archives as a tree: every object whose name ends with a suffix is a directory.

The prefix is listed once (one paginated listing); each archive's index is read on first access
only, so a prefix of thousands of archives mounts at once. The listing is revalidated after
``ttl`` seconds in the background; while the store is unreachable the last good one is served.
"""

from __future__ import annotations

import logging
import threading
import time

from ..archive import MemberReader, clean_name
from ..errors import IsADirectory, NotASymlink, NotFound, ObjectNotFound, SourceError
from ..store import ObjectInfo
from .archive_tree import ArchiveSlot, ArchiveTree, Reach
from .base import DIR_MODE, Node
from .views import remember_view

log = logging.getLogger(__name__)


class PrefixTree:
    """The archives below ``path`` (a prefix ending in ``/``), each shown as a directory."""

    def __init__(self, reach: Reach, path: str, *, suffixes: tuple[str, ...], root: str = "",
                 ttl: float = 60.0) -> None:
        self.reach = reach
        self.path = path
        self.suffixes = tuple(s.lower() for s in suffixes)
        self.root = root
        self.ttl = ttl
        self._archives: dict[str, ArchiveTree] = {}  # tree-relative path -> archive
        self._dirs: dict[str, set[str]] = {"": set()}
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
        """Show the archives among ``objects`` (a listing ``age`` seconds old)."""
        prefix = self.path.rstrip("/") + "/"
        archives: dict[str, ArchiveTree] = {}
        dirs: dict[str, set[str]] = {"": set()}
        for obj in objects:
            if not obj.path.startswith(prefix) or not obj.path.lower().endswith(self.suffixes):
                continue
            rel = self._tree_name(obj.path[len(prefix):], archives, dirs)
            if rel is None:
                continue
            old = self._archives.get(rel)
            if old is not None:
                old.slot.replace(obj)
                archives[rel] = old
            else:
                slot = ArchiveSlot(self.reach, obj)
                archives[rel] = ArchiveTree(slot, self.root)
            parent, _, base = rel.rpartition("/")
            dirs.setdefault(parent, set()).add(base)
            while parent:
                grand, _, base = parent.rpartition("/")
                dirs.setdefault(grand, set()).add(base)
                parent = grand
        with self._lock:
            self._archives, self._dirs = archives, dirs
            self._listed = time.monotonic() - age
        log.info("listed %s: %d archives", self.path, len(archives))

    @staticmethod
    def _tree_name(key: str, archives: dict[str, ArchiveTree],
                   dirs: dict[str, set[str]]) -> str | None:
        """Where the object ``key`` (relative to the prefix) shows in the tree: keys with ``//``,
        ``.``, ``..``, control characters or over-long components show under a cleaned name;
        None (and a log line) if that name is taken or the key cleans to nothing."""
        name = clean_name(key)
        if name is None:
            log.warning("prefix: object %r has no usable name: skipped", key)
            return None
        parts = name.split("/")
        if name in archives or name in dirs or any(
                "/".join(parts[:i]) in archives for i in range(1, len(parts))):
            log.warning("prefix: object %r would show as %r, where another object is: skipped",
                        key, name)
            return None
        if name != key:
            log.info("prefix: object %r shows as %r", key, name)
        return name

    def expire_listing(self) -> None:
        """Relist on the next access, whatever the TTL says."""
        self._listed = float("-inf")

    def _fresh(self) -> None:
        """Relist in the background once the listing is older than the TTL."""
        with self._lock:
            if self._relisting or time.monotonic() - self._listed <= self.ttl:
                return
            self._relisting = True
        threading.Thread(target=self._relist_in_background, daemon=True,
                         name="zipmount-relist").start()

    def _relist_in_background(self) -> None:
        try:
            self.relist()
        finally:
            self._relisting = False

    # -- lookups ----------------------------------------------------------------------------------

    def _split(self, path: str) -> tuple[ArchiveTree | None, str]:
        """The archive holding ``path`` and the path inside it (``None``: a virtual directory)."""
        self._fresh()
        rel = path.strip("/")
        parts = rel.split("/") if rel else []
        archives = self._archives
        for i in range(1, len(parts) + 1):
            tree = archives.get("/".join(parts[:i]))
            if tree is not None:
                if tree.slot.stale:  # a read found it replaced or deleted: relist now
                    tree.slot.stale = False
                    self.expire_listing()
                    self._fresh()
                return tree, "/".join(parts[i:])
        return None, rel

    def stat(self, path: str) -> Node:
        tree, inner = self._split(path)
        if tree is not None:
            return tree.stat(inner)
        names = self._dirs.get(inner)
        if names is None:
            raise NotFound(path)
        prefix = f"{inner}/" if inner else ""
        subdirs = sum(1 for n in names if f"{prefix}{n}" in self._dirs or
                      f"{prefix}{n}" in self._archives)
        return Node("dir", 0, self.mtime_ns, DIR_MODE, nlink=2 + subdirs)

    def listdir(self, path: str) -> list[tuple[str, str]]:
        tree, inner = self._split(path)
        if tree is not None:
            return tree.listdir(inner)
        names = self._dirs.get(inner)
        if names is None:
            raise NotFound(path)
        return [(n, "dir") for n in sorted(names)]

    def open(self, path: str) -> MemberReader:
        tree, inner = self._split(path)
        if tree is None:
            raise IsADirectory(path) if inner in self._dirs else NotFound(path)
        return tree.open(inner)

    def readlink(self, path: str) -> str:
        tree, inner = self._split(path)
        if tree is None:
            raise NotASymlink(f"{path}: not a symlink") if inner in self._dirs else NotFound(path)
        return tree.readlink(inner)

    def open_archives(self) -> int:
        return sum(tree.open_archives() for tree in list(self._archives.values()))
