"""Tree layer: what a mount (or the fsspec filesystem) shows — one archive, or a prefix of them."""

from __future__ import annotations

import logging
import time

from ..errors import ObjectChanged
from ..store import ObjectInfo
from .archive_tree import ArchiveSlot, ArchiveTree, Reach
from .base import DEFAULT_SUFFIXES, DirEntry, FileReader, Node, Tree
from .prefix import PrefixTree
from .views import remember_view, remembered_view

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_SUFFIXES", "ArchiveTree", "DirEntry", "FileReader", "Node", "PrefixTree",
           "Reach", "Tree", "View", "open_tree", "view_of"]

View = tuple[list[ObjectInfo], bool, float]  # objects, one archive?, seconds since checked


def open_tree(reach: Reach, path: str, *, suffixes: tuple[str, ...] = DEFAULT_SUFFIXES,
              root: str | None = None, ttl: float = 60.0,
              archives_only: bool = False, view: View | None = None) -> ArchiveTree | PrefixTree:
    """The tree for ``path``: one archive if it names an object, else the prefix (its archives
    as directories, its other objects as files unless ``archives_only``).

    Raises a one-line error if it cannot be served. If an earlier mount saw this path less than
    ``ttl`` ago (remembered in the cache dir), that view is served without any request, archives
    from their persisted indexes, and revalidated once the TTL is up. ``view`` (another
    process's :func:`view_of`, e.g. a pickled filesystem's) is served the same way, but never
    swapped for a newer version before its TTL is up: if it cannot be read, ESTALE.
    """
    root = (root or "").strip("/")
    disk, location = reach.cache.disk, reach.source.location
    seen = view if view is not None else remembered_view(disk, location, path, ttl)
    if seen is not None:
        objects, single, age = seen
        try:
            if single:
                return _archive_tree(reach, path, objects[0], age, root, ttl)
            tree = PrefixTree(reach, path, suffixes=suffixes, root=root, ttl=ttl,
                              archives_only=archives_only)
            tree.apply_listing(objects, age)
            return tree
        except ObjectChanged:  # replaced since, and its index is no longer cached
            if view is not None:
                raise
            log.info("%s changed since it was last checked", path)
    if not path.endswith("/"):
        obj = reach.source.stat(path)
        if obj is not None:
            remember_view(disk, location, path, [obj], True)
            return _archive_tree(reach, path, obj, 0.0, root, ttl)
    tree = PrefixTree(reach, path, suffixes=suffixes, root=root, ttl=ttl,
                              archives_only=archives_only)
    tree.relist(strict=True)
    return tree


def _archive_tree(reach: Reach, path: str, obj: ObjectInfo, age: float, root: str,
                  ttl: float) -> ArchiveTree:
    slot = ArchiveSlot(reach, obj, age=age, revalidate_after=ttl, remember_as=path)
    tree = ArchiveTree(slot, root, gone_is_missing=True)
    tree.check_root()
    return tree


def view_of(tree: Tree) -> View:
    """What ``tree`` serves now, for :func:`open_tree` in another process: the versions it
    pinned and how long ago they were checked."""
    if isinstance(tree, ArchiveTree):
        return [tree.slot.obj], True, time.monotonic() - tree.slot._checked
    if not isinstance(tree, PrefixTree):
        raise TypeError(f"no view of {type(tree).__name__}")
    listing = tree._listing
    objects = [a.slot.obj for a in listing.archives.values()] + list(listing.files.values())
    return objects, False, time.monotonic() - tree._listed
