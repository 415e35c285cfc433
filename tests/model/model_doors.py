"""The three doors of one tree, behind one small interface the model drives: the ``Tree`` itself,
the FUSE operations called directly (no mount, no libfuse), and the fsspec filesystem.

Every door answers ``stat`` (kind, size), ``listdir`` (names), ``open``/``read``/``close``,
and fails with an ``OSError`` carrying the errno a user of that door would get.
"""

from __future__ import annotations

import os
import stat as stat_module
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fsspec.spec import AbstractFileSystem
from support.fuseinfo import file_info

from zipmount.errors import ZipmountError
from zipmount.fsspec_fs import ZipmountFileSystem
from zipmount.fuse.operations import ZipOperations
from zipmount.stats import Stats
from zipmount.tree import Tree


@contextmanager
def _errnos() -> Iterator[None]:
    try:
        yield
    except ZipmountError as exc:
        raise OSError(exc.errno, str(exc)) from None


class TreeDoor:
    """The tree layer as both front-ends see it."""

    name = "tree"

    def __init__(self, tree: Tree, stats: Stats, ttl: float) -> None:
        self.tree = tree

    def stat(self, path: str) -> tuple[str, int]:
        with _errnos():
            node = self.tree.stat(path)
        return node.kind, node.size

    def listdir(self, path: str) -> list[str]:
        with _errnos():
            return [name for name, _ in self.tree.listdir(path)]

    def open(self, path: str) -> Any:
        with _errnos():
            return self.tree.open(path)

    def read(self, handle: Any, offset: int, size: int) -> bytes:
        with _errnos():
            return handle.read(offset, size)

    def close(self, handle: Any) -> None:
        handle.close()


class OperationsDoor:
    """The FUSE operations, called as libfuse would call them (paths with a leading ``/``)."""

    name = "operations"

    def __init__(self, tree: Tree, stats: Stats, ttl: float) -> None:
        self.ops = ZipOperations(tree, stats, ttl=ttl)

    def stat(self, path: str) -> tuple[str, int]:
        attrs = self.ops.getattr("/" + path)
        kind = "dir" if stat_module.S_ISDIR(attrs["st_mode"]) else "file"
        return kind, attrs["st_size"]

    def listdir(self, path: str) -> list[str]:
        return [name for name, _, _ in self.ops.readdir("/" + path, 0) if name not in (".", "..")]

    def open(self, path: str) -> Any:
        fi = file_info()  # flags 0: O_RDONLY
        self.ops.open("/" + path, fi)
        return "/" + path, fi

    def read(self, handle: Any, offset: int, size: int) -> bytes:
        path, fi = handle
        return self.ops.read(path, size, offset, fi)

    def close(self, handle: Any) -> None:
        path, fi = handle
        self.ops.release(path, fi)


class _TreeFileSystem(ZipmountFileSystem):
    """``ZipmountFileSystem`` over a tree built by the test (its constructor builds its own
    from a URL); every method is the front-end's own."""

    def __init__(self, tree: Tree, **kwargs: Any) -> None:
        AbstractFileSystem.__init__(self, **kwargs)
        self._tree = tree
        self._pid = os.getpid()
        self._options = {"fo": "memory://model"}  # what its errors name


class FsspecDoor:
    """The fsspec filesystem, as Dask or zarr call it."""

    name = "fsspec"

    def __init__(self, tree: Tree, stats: Stats, ttl: float) -> None:
        self.fs = _TreeFileSystem(tree, skip_instance_cache=True)

    def stat(self, path: str) -> tuple[str, int]:
        info = self.fs.info(path)
        return ("dir" if info["type"] == "directory" else "file"), info["size"]

    def listdir(self, path: str) -> list[str]:
        names = self.fs.ls(path, detail=False)
        # fsspec lists a file as itself; the other doors answer ENOTDIR
        if names == [path.strip("/")] and path.strip("/") and \
                self.fs.info(path)["type"] != "directory":
            raise NotADirectoryError(20, f"{path}: not a directory")
        return [name.rstrip("/").rpartition("/")[2] for name in names]

    def open(self, path: str) -> Any:
        return self.fs.open(path, "rb")

    def read(self, handle: Any, offset: int, size: int) -> bytes:
        handle.seek(offset)
        return handle.read(size)

    def close(self, handle: Any) -> None:
        handle.close()


DOORS = {door.name: door for door in (TreeDoor, OperationsDoor, FsspecDoor)}
