"""fsspec front-end: the archives of a URL as a read-only fsspec filesystem, in process.

A thin adapter over a :class:`~zipmount.tree.Tree` from the engine, as the FUSE operations are:
the same block cache (memory + persistent disk tier), persisted index, ETag pinning and errors as
the daemon. Registered as protocol ``zipmount`` (``fsspec.specs`` entry point), so a chained URL
``zipmount::s3://bucket/key.rkns`` resolves it without importing zipmount first.

Why not ``fsspec.implementations.zip.ZipFileSystem`` over an s3fs file: every read goes through
the one file object's read-ahead cache (5-50 MB blocks per chunk, forgotten on the next run), and
reads are serial; here each member read is one right-sized range through the shared block cache,
and ``cat`` of many members (zarr's ``getitems``) runs them concurrently.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import fsspec
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem
from fsspec.utils import stringify_path

from .config import CacheConfig, default_cache_dir, parse_size
from .engine import Engine
from .errors import NotADirectory, ObjectChanged, UsageError, ZipmountError
from .source import with_s3_settings
from .store import ObjectInfo
from .tree import DEFAULT_SUFFIXES, FileReader, Node, Tree, View, view_of

_TYPES = {"dir": "directory", "file": "file", "link": "link"}
_MAX_WORKERS = 16  # concurrent member reads of one cat/cat_ranges call
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool)
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """One pool per process, made on first use; a forked child makes its own (the parent's
    idle threads do not exist there, but the parent's pool would count on them)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(_MAX_WORKERS, thread_name_prefix="zipmount-fsspec"))
        return _pool[1]


def _os_error(exc: ZipmountError, where: str = "") -> OSError:
    """The builtin exception for ``exc``: OSError picks FileNotFoundError, PermissionError,
    IsADirectoryError, ... from the errno. The message names the path, and ``where``: the
    archive or prefix the filesystem serves."""
    if isinstance(exc, UsageError):
        return ValueError(str(exc))  # type: ignore[return-value]
    return OSError(exc.errno, f"{exc} in {where}" if where else str(exc))


@contextmanager
def _boundary(where: str = "") -> Iterator[None]:
    """zipmount errors become builtin OSErrors here, at the boundary only."""
    try:
        yield
    except ZipmountError as exc:
        raise _os_error(exc, where) from None


def _read_only(*_: Any, **__: Any) -> None:
    raise OSError(errno.EROFS, "zipmount is read-only")


class ZipmountFileSystem(AbstractFileSystem):
    """The archive (or the prefix of archives) at ``fo`` as a read-only filesystem.

    ``fo``: a URL (``s3://bucket/key.rkns``, ``s3://bucket/cohort/``, a local path), a path
    with ``target_protocol`` (as fsspec's URL chaining passes it), or an open fsspec file or
    ``OpenFile`` (``s3.open(path, "rb")``: its filesystem and identity are reused, no extra
    request). ``target_protocol``/``target_options``: how to build the filesystem of ``fo``.
    Options as on the command line: ``cache_dir`` (default: the daemon's), ``disk_cache``,
    ``cache_size``, ``memory``, ``ttl``, ``timeout``, ``suffixes``, ``root``, ``archives_only``
    (a prefix shows its archives only, not its other objects as files); other keyword
    arguments go to :class:`fsspec.AbstractFileSystem`. Pickles as its options, with ``fo``
    as a URL, and ``pinned``: the archive versions it serves (and when they were checked), so
    that a copy in another process serves the same ones until its parent's TTL is up, or
    fails with ESTALE, never another version.

    Paths are answered in the form they are asked: ``ls("/a")`` lists ``/a/b``, ``ls("a")``
    lists ``a/b``, as fsspec's own filesystems do.
    """

    protocol = "zipmount"
    root_marker = ""

    def __init__(self, fo: Any = "", *, target_protocol: str | None = None,
                 target_options: dict[str, Any] | None = None, cache_dir: str | None = None,
                 disk_cache: bool = True, cache_size: int | str = "10GiB",
                 memory: int | str = "256MiB", ttl: float = 60.0, timeout: float = 30.0,
                 suffixes: Sequence[str] = DEFAULT_SUFFIXES, root: str | None = None,
                 archives_only: bool = False, pinned: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        fs, path, known, url = _target(fo, target_protocol, target_options or {}, timeout)
        self._pid = os.getpid()
        # What a pickle carries: small, and enough for a worker to rebuild this filesystem.
        self._options: dict[str, Any] = {
            **kwargs, "fo": url,
            "target_protocol": target_protocol if isinstance(fo, str) else _protocol(fs),
            "target_options": target_options if isinstance(fo, str) else dict(fs.storage_options),
            "cache_dir": cache_dir, "disk_cache": disk_cache, "cache_size": cache_size,
            "memory": memory, "ttl": ttl, "timeout": timeout, "suffixes": tuple(suffixes),
            "root": root, "archives_only": archives_only,
        }
        self._connect(fs, path, known, _view(pinned) if pinned else None)

    def _connect(self, fs: fsspec.AbstractFileSystem, path: str, known: dict[str, Any] | None,
                 view: View | None) -> None:
        opts = self._options
        with _boundary():
            engine = Engine.shared(CacheConfig(
                memory=parse_size(opts["memory"], "memory"),
                dir=(opts["cache_dir"] or default_cache_dir()) if opts["disk_cache"] else None,
                size=parse_size(opts["cache_size"], "cache_size"), ttl=float(opts["ttl"])))
            self.stats = engine.stats  # the process's counters for this cache (requests, hits)
            self._tree = engine.filesystem_tree(
                fs, path, timeout=float(opts["timeout"]), known=known, suffixes=opts["suffixes"],
                root=opts["root"], ttl=float(opts["ttl"]), archives_only=opts["archives_only"],
                view=view)

    @property
    def tree(self) -> Tree:
        """The tree served; rebuilt in a forked child, where the parent's engine threads and
        its store client's event loop do not exist, serving the versions the parent pinned."""
        if self._pid != os.getpid():
            fs, path, _, _ = _target(self._options["fo"], self._options["target_protocol"],
                                     self._options["target_options"] or {},
                                     self._options["timeout"])
            self._connect(fs, path, None, view_of(self._tree))
            self._pid = os.getpid()
        return self._tree

    def __reduce__(self) -> tuple[Any, ...]:
        return _restore, (type(self), self._options, _pins(self.tree))

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        """``path`` without the protocol and trailing slashes, in the caller's form otherwise:
        a leading ``/`` stays (the root asked as ``/`` is ``/``)."""
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        bare = super()._strip_protocol(path)
        if bare:
            return bare
        asked = stringify_path(path)
        for prefix in ("zipmount://", "zipmount::"):
            asked = asked.removeprefix(prefix)
        return "/" if asked.startswith("/") else bare

    # -- metadata ---------------------------------------------------------------------------------

    def _stat(self, path: str) -> Node:
        with _boundary(self._options["fo"]):
            return self.tree.stat(path.strip("/"))

    @staticmethod
    def _detail(path: str, node: Node) -> dict[str, Any]:
        detail: dict[str, Any] = {"name": path, "size": node.size, "type": _TYPES[node.kind],
                                  "mtime": node.mtime_ns / 1e9, "mode": node.mode}
        if node.kind != "dir":
            detail.update(method=node.method, version=node.version, islink=node.kind == "link")
        return detail

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        return self._detail(path, self._stat(path))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        try:
            children = self.tree.listdir(path.strip("/"))
        except NotADirectory:  # fsspec: ls of a file lists that file
            return [self.info(path)] if detail else [path]
        except ZipmountError as exc:
            raise _os_error(exc) from None
        parent = path.rstrip("/")  # "/" is the root asked with a leading slash
        names = [(f"{parent}/{name}" if path else name, kind) for name, kind in children]
        if not detail:
            return [name for name, _ in names]
        # Directories need no stat: under a prefix that would open every archive's index.
        return [{"name": name, "size": 0, "type": "directory"} if kind == "dir" else self.info(name)
                for name, kind in names]

    def exists(self, path: str, **kwargs: Any) -> bool:
        try:
            self.info(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True  # other failures (EIO) raise: "missing" is not the same as "unreachable"

    def ukey(self, path: str) -> str:
        """The member version: changes whenever the archive or the member does."""
        detail = self.info(path)
        return detail.get("version") or fsspec.utils.tokenize(detail)

    def modified(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.info(path)["mtime"], tz=timezone.utc)

    # -- data -------------------------------------------------------------------------------------

    def _reader(self, path: str) -> FileReader:
        with _boundary(self._options["fo"]):
            return self.tree.open(path.strip("/"))

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None,
              autocommit: bool = True, cache_options: dict[str, Any] | None = None,
              **kwargs: Any) -> ZipmountFile:
        if mode != "rb":
            _read_only()
        path = self._strip_protocol(path)
        return ZipmountFile(self, path, self._reader(path))

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        reader = self._reader(path)
        try:
            size = reader.node.size  # of the version read, whatever the path shows by now
            begin = 0 if start is None else (max(0, size + start) if start < 0 else start)
            stop = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
            if stop <= begin:
                return b""
            with _boundary(self._options["fo"]):
                return reader.read(begin, stop - begin)
        finally:
            reader.close()

    def cat(self, path: Any, recursive: bool = False, on_error: str = "raise",
            **kwargs: Any) -> Any:
        """As fsspec's, but the members are read concurrently (zarr's ``getitems`` lands here)."""
        paths = self.expand_path(path, recursive=recursive)
        if not (len(paths) > 1 or isinstance(path, list) or paths[0] != self._strip_protocol(path)):
            return self.cat_file(paths[0], **kwargs)
        results = _gather([functools.partial(self.cat_file, p, **kwargs) for p in paths], on_error)
        return {p: r for p, r in zip(paths, results, strict=True) if r is not _OMIT}

    def cat_ranges(self, paths: list[str], starts: int | list[int], ends: int | list[int],
                   max_gap: int | None = None, on_error: str = "return", **kwargs: Any) -> list[Any]:
        """Byte ranges of members, read concurrently (zarr 3's partial reads, shard indexes)."""
        n = len(paths)
        starts = [starts] * n if isinstance(starts, int) or starts is None else starts
        ends = [ends] * n if isinstance(ends, int) or ends is None else ends
        if not len(starts) == len(ends) == n:
            raise ValueError("paths, starts and ends must have the same length")
        calls = [functools.partial(self.cat_file, p, s, e)
                 for p, s, e in zip(paths, starts, ends, strict=True)]
        return [r for r in _gather(calls, on_error) if r is not _OMIT]

    # Read-only: every write-like call answers EROFS, as the mount does.
    mkdir = makedirs = rmdir = rm_file = rm = _rm = pipe_file = put_file = cp_file = mv = \
        touch = _read_only


_OMIT = object()


def _gather(calls: Sequence[Callable[[], bytes]], on_error: str) -> list[Any]:
    """Run ``calls`` on the shared pool; errors raise, are returned, or are ``_OMIT``-ted."""
    futures = [_executor().submit(call) for call in calls] if len(calls) > 1 else None
    out: list[Any] = []
    for i, call in enumerate(calls):
        try:
            out.append(futures[i].result() if futures else call())
        except Exception as exc:
            if on_error == "raise":
                for f in futures or ():
                    f.cancel()
                raise
            out.append(exc if on_error == "return" else _OMIT)
    return out


class ZipmountFile(AbstractBufferedFile):
    """A member opened for reading, at the version it opened: its size and ``info()`` are that
    version's, whatever the path shows later. No read-ahead buffer of its own (cache ``none``):
    every read is the exact range asked for, served by the engine's block cache."""

    def __init__(self, fs: ZipmountFileSystem, path: str, reader: FileReader) -> None:
        self.reader = reader
        self._pid = os.getpid()
        node = reader.node
        super().__init__(fs, path, mode="rb", cache_type="none", size=node.size)
        self.details = fs._detail(path, node)

    def _fetch_range(self, start: int, end: int) -> bytes:
        with _boundary(self.fs._options["fo"]):
            if self._pid != os.getpid():
                # Forked (DataLoader workers): the parent's reader uses threads and an event loop
                # that do not exist here. The same member of the same version, opened afresh; if
                # the path shows another version by now, ESTALE: never bytes of two versions.
                reader = self.fs._reader(self.path)
                if reader.version != self.reader.version:
                    reader.close()
                    raise ObjectChanged(f"{self.path}: the version opened is no longer served")
                self.reader = reader
                self._pid = os.getpid()
            return self.reader.read(start, end - start)

    def close(self) -> None:
        super().close()
        self.reader.close()


# Filesystems restored from pickles in this process, by options and pinned versions: a Dask
# worker unpickles one per task, and must not build a tree (and load an index) for each.
_restored: weakref.WeakValueDictionary[str, ZipmountFileSystem] = weakref.WeakValueDictionary()
_restored_lock = threading.Lock()


def _restore(cls: type[ZipmountFileSystem], options: dict[str, Any],
             pinned: dict[str, Any]) -> ZipmountFileSystem:
    """The filesystem a pickle stands for: the one already restored in this process with the
    same options and versions, else a new one serving those versions."""
    key = fsspec.utils.tokenize(cls, os.getpid(), options, pinned["objects"], pinned["single"])
    with _restored_lock:
        fs = _restored.get(key)
    if fs is None:
        fs = cls(**options, pinned=pinned)
        with _restored_lock:
            fs = _restored.setdefault(key, fs)
    return fs


def _pins(tree: Tree) -> dict[str, Any]:
    """What a pickle carries of ``tree``: the versions served and when they were checked
    (wall clock: another process has its own monotonic clock)."""
    objects, single, age = view_of(tree)
    return {"objects": [dataclasses.asdict(o) for o in objects], "single": single,
            "checked": time.time() - age}


def _view(pins: dict[str, Any]) -> View:
    """The view of a pickle's ``pinned``."""
    return ([ObjectInfo(**o) for o in pins["objects"]], bool(pins["single"]),
            max(0.0, time.time() - float(pins["checked"])))


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def _target(fo: Any, protocol: str | None, options: dict[str, Any],
            timeout: float) -> tuple[fsspec.AbstractFileSystem, str, dict[str, Any] | None, str]:
    """(filesystem, path in it, known details, URL) of ``fo``."""
    if hasattr(fo, "fs") and hasattr(fo, "path"):  # an open fsspec file
        details = getattr(fo, "details", None)
        return fo.fs, fo.path, details if isinstance(details, dict) else None, \
            fo.fs.unstrip_protocol(fo.path)
    if not isinstance(fo, str) or not fo:
        raise TypeError("fo must be a URL, a path with target_protocol, or an open fsspec file")
    url = fo if "://" in fo or protocol is None else f"{protocol}://{fo}"
    protocol = protocol or fsspec.utils.get_protocol(url)
    if protocol in ("s3", "s3a"):
        options = with_s3_settings(options, timeout)
    try:
        fs = fsspec.filesystem(protocol, **options)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"cannot reach {url}: {exc}") from None
    path = fs._strip_protocol(url)
    if url.endswith("/") and not path.endswith("/"):
        path += "/"  # a prefix: list it, do not stat it
    return fs, path, None, url

