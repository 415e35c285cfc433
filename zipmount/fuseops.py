"""FUSE front-end: a thin fusepy ``Operations`` over a :class:`~zipmount.tree.Tree` — translation to
errno and the kernel-cache policy only."""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import json
import logging
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from fuse import FuseOSError, Operations

from .archive import MemberReader
from .errors import ZipmountError
from .stats import STATS_XATTR, Stats
from .tree import Tree

log = logging.getLogger(__name__)

_KIND_BITS = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "link": stat.S_IFLNK}


def _errno_of(exc: BaseException) -> int:
    if isinstance(exc, ZipmountError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def _translated(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every failure into an errno; unexpected ones are logged with a traceback."""

    @functools.wraps(fn)
    def wrapper(self: ZipOperations, *args: Any) -> Any:
        try:
            return fn(self, *args)
        except FuseOSError:
            raise
        except ZipmountError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
                log.warning("%s %s: %s (errno %s)", fn.__name__, args[0] if args else "", exc,
                            errno.errorcode.get(exc.errno, exc.errno))
            raise FuseOSError(exc.errno) from None
        except Exception as exc:
            log.exception("%s %s failed unexpectedly", fn.__name__, args[0] if args else "")
            raise FuseOSError(_errno_of(exc)) from None

    return wrapper


_this_thread = threading.local()


def _keep_thread_state() -> None:
    """Keep this libfuse worker thread's Python thread state between callbacks.

    ctypes creates a thread state for every callback from a thread Python did not start and
    destroys it afterwards (with a 16 KiB mmap'd frame stack each time: 4,200 mmap/munmap
    pairs for one whole-array read). One extra PyGILState_Ensure that is never released
    keeps it alive, so later callbacks reuse it.
    """
    if not getattr(_this_thread, "kept", False):
        ctypes.pythonapi.PyGILState_Ensure()
        _this_thread.kept = True


def _read_only(*_: Any) -> None:
    raise FuseOSError(errno.EROFS)


class ZipOperations(Operations):
    """Read-only operations; every write-like call answers EROFS."""

    use_ns = True  # fusepy: times are integer nanoseconds

    def __call__(self, op: str, *args: Any) -> Any:
        _keep_thread_state()
        return getattr(self, op)(*args)

    def __init__(self, tree: Tree, stats: Stats, *, uid: int | None = None,
                 gid: int | None = None, umask: int | None = None) -> None:
        self.tree = tree
        self.stats = stats
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.umask = umask or 0
        self._handles: dict[int, MemberReader] = {}
        self._handle_locks: dict[int, threading.Lock] = {}
        self._next_fh = itertools.count(1)
        # Kernel-cache bookkeeping per path (see ``open``): the member version the kernel's
        # attributes describe, the one whose pages its page cache may hold, and the versions
        # of the handles open now.
        self._attr_version: dict[str, str] = {}
        self._page_version: dict[str, str] = {}
        self._open_versions: dict[str, Counter[str]] = {}
        self._lock = threading.Lock()

    # -- metadata -------------------------------------------------------------------------------

    @_translated
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        node = self.tree.stat(path)
        if node.version:
            self._attr_version[path] = node.version
        return {
            "st_mode": _KIND_BITS[node.kind] | (node.mode & ~self.umask),
            "st_nlink": node.nlink,
            "st_size": node.size,
            "st_mtime": node.mtime_ns,
            "st_ctime": node.mtime_ns,
            "st_atime": node.mtime_ns,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_blocks": (node.size + 511) // 512,
        }

    @_translated
    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        dot = {"st_mode": stat.S_IFDIR}
        return [(".", dot, 0), ("..", dot, 0),
                *((name, {"st_mode": _KIND_BITS[kind]}, 0) for name, kind in self.tree.listdir(path))]

    @_translated
    def readlink(self, path: str) -> str:
        return self.tree.readlink(path)

    @_translated
    def access(self, path: str, amode: int) -> int:
        self.tree.stat(path)
        if amode & os.W_OK:
            raise FuseOSError(errno.EROFS)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 65536, "f_frsize": 65536, "f_namemax": 255}

    # -- data -------------------------------------------------------------------------------------

    @_translated
    def open(self, path: str, fi: Any) -> int:
        """Open a member; decide how the kernel may cache it, so no reader mixes versions.

        The page cache is kept across opens while the member version stays the same. When the
        archive was replaced, the first open of the new version drops the old pages — unless
        the kernel still holds the old attributes (its size would clip reads) or a handle on the
        old version is still open (its reads would refill old pages): then this handle reads
        with direct I/O, past the page cache.
        """
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise FuseOSError(errno.EROFS)
        reader = self.tree.open(path)
        version = reader.version
        with self._lock:
            others = self._open_versions.setdefault(path, Counter())
            if self._page_version.get(path) == version:
                fi.keep_cache = 1
            elif self._attr_version.get(path, version) == version and not any(
                    v != version for v in others):
                self._page_version[path] = version  # keep_cache=0: the kernel drops old pages
            else:
                fi.direct_io = 1
            others[version] += 1
            fh = next(self._next_fh)
            self._handles[fh] = reader
            self._handle_locks[fh] = threading.Lock()
        fi.fh = fh
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        t0 = time.monotonic()
        try:
            with self._handle_locks[fi.fh]:
                data = self._handles[fi.fh].read(offset, size)
        except Exception as exc:
            self.stats.record_read(0, time.monotonic() - t0, failed=True)
            code = _errno_of(exc)
            if isinstance(exc, ZipmountError):
                log.warning("read %s at %d: %s (errno %s)", path, offset, exc,
                            errno.errorcode.get(code, code))
            else:
                log.exception("read %s at %d failed unexpectedly", path, offset)
            raise FuseOSError(code) from None
        self.stats.record_read(len(data), time.monotonic() - t0)
        return data

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            reader = self._handles.pop(fi.fh, None)
            self._handle_locks.pop(fi.fh, None)
            if reader is not None:
                versions = self._open_versions.get(path)
                if versions is not None:
                    versions[reader.version] -= 1
                    if versions[reader.version] <= 0:
                        del versions[reader.version]
                    if not versions:
                        del self._open_versions[path]
        if reader is not None:
            reader.close()
        return 0

    # -- observability ----------------------------------------------------------------------------

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if path == "/" and name == STATS_XATTR:
            self.stats.set_gauge("open_archives", self.tree.open_archives())
            self.stats.set_gauge("open_files", len(self._handles))
            return json.dumps({"pid": os.getpid(), **self.stats.snapshot()}).encode()
        raise FuseOSError(errno.ENODATA)

    def listxattr(self, path: str) -> list[str]:
        return [STATS_XATTR] if path == "/" else []

    # -- everything that would write ----------------------------------------------------------------

    chmod = chown = create = link = mkdir = mknod = rename = rmdir = _read_only
    setxattr = removexattr = symlink = truncate = unlink = utimens = write = _read_only

    # Left out on purpose: the kernel then stops sending them (one round trip less per close).
    flush = fsync = fsyncdir = None
