"""The tree interface both front-ends (FUSE, fsspec) are thin adapters over."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

DEFAULT_SUFFIXES = (".zip", ".rkns")
# Directories the archive does not describe (archives and prefixes shown as directories): what a
# directory made with the usual umask 022 has, so that copies out of the mount stay usable.
DIR_MODE = 0o755


@dataclass(frozen=True)
class Node:
    """What ``stat`` needs to know of one path."""

    kind: str  # "dir", "file" or "link"
    size: int
    mtime_ns: int
    mode: int  # permission bits: the entry's as stored (see zipmount/archive/index/__init__.py)
    method: int | None = None  # zip compression method of a member
    nlink: int = 1  # directories: 2 + subdirectories
    version: str = ""  # files: which archive version and member the attributes describe


class DirEntry:
    """One child of a directory as a listing gives it: its name, its kind and, on demand, its
    node (asked once: a listing kept for one archive version keeps its entries' nodes too)."""

    __slots__ = ("name", "kind", "_stat", "_node")

    def __init__(self, name: str, kind: str, stat: Callable[[str], Node]) -> None:
        self.name = name
        self.kind = kind
        self._stat = stat  # the node of a child by name (shared by the listing's entries)
        self._node: Node | None = None

    def node(self) -> Node:
        """What ``stat`` answers for this child (raises as it does)."""
        node = self._node
        if node is None:
            node = self._node = self._stat(self.name)
        return node


class FileReader(Protocol):
    """Reads of one open file (a member, or a plain object) at one version."""

    @property
    def version(self) -> str:
        """Which version of the file this handle reads (for the kernel-cache policy)."""
        ...

    @property
    def node(self) -> Node:
        """The attributes of the version this handle reads (its size, mode and times), whatever
        the path shows now: an open file keeps the version it opened."""
        ...

    def read(self, offset: int, size: int) -> bytes: ...

    def close(self) -> None: ...


class Tree(Protocol):
    """A read-only directory tree; paths are ``/``-separated, relative or with a leading ``/``.

    Errors are :mod:`zipmount.errors` exceptions, each carrying its errno.
    """

    def stat(self, path: str) -> Node:
        """The node at ``path``."""

    def listdir(self, path: str) -> list[tuple[str, str]]:
        """(name, kind) of each child of the directory ``path``, sorted by name."""

    def scandir(self, path: str) -> Sequence[DirEntry]:
        """The children of the directory ``path`` as in ``listdir``, each with its node on
        demand (what ``stat`` of it answers); treat the sequence as read-only."""

    def open(self, path: str) -> FileReader:
        """A reader of the file at ``path``; close it when done."""

    def readlink(self, path: str) -> str:
        """The target of the symlink at ``path``."""

    def open_archives(self) -> int:
        """How many archives have their index loaded now."""
