"""The tree interface both front-ends (FUSE, fsspec) are thin adapters over."""

from __future__ import annotations

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

    def open(self, path: str) -> FileReader:
        """A reader of the file at ``path``; close it when done."""

    def readlink(self, path: str) -> str:
        """The target of the symlink at ``path``."""

    def open_archives(self) -> int:
        """How many archives have their index loaded now."""
