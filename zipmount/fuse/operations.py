"""The thin ``Operations`` of the mount: a :class:`~zipmount.tree.Tree` answered to libfuse.

Translation to errno only, plus the :class:`~.policy.KernelCachePolicy`'s answers put into
``fuse_file_info``. No libfuse here: :mod:`.session` binds this class to mfusepy (which calls
the methods by name), so it can be called directly in tests with any object carrying the
``fuse_file_info`` fields it sets.
"""

from __future__ import annotations

import errno
import functools
import itertools
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ZipmountError
from ..stats import STATS_XATTR, Stats
from ..tree import DirEntry, FileReader, Node, Tree
from .policy import KernelCachePolicy

log = logging.getLogger(__name__)

_KIND_BITS = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "link": stat.S_IFLNK}
_DIR_ONLY = {"st_mode": stat.S_IFDIR}  # what a listing tells of "." and ".."

# libfuse 3 capability flags (fuse_common.h)
FUSE_CAP_AUTO_INVAL_DATA = 1 << 12
FUSE_CAP_READDIRPLUS = 1 << 13
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14


class FuseError(OSError):
    """An errno answered to the kernel (the binding turns any OSError into ``-errno``)."""

    def __init__(self, code: int) -> None:
        super().__init__(code, os.strerror(code))


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
        except FuseError:
            raise
        except ZipmountError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
                log.warning("%s %s: %s (errno %s)", fn.__name__, args[0] if args else "", exc,
                            errno.errorcode.get(exc.errno, exc.errno))
            raise FuseError(exc.errno) from None
        except Exception as exc:
            log.exception("%s %s failed unexpectedly", fn.__name__, args[0] if args else "")
            raise FuseError(_errno_of(exc)) from None

    return wrapper


def _read_only(*_: Any) -> None:
    raise FuseError(errno.EROFS)


def _child(path: str, name: str) -> str:
    return path.rstrip("/") + "/" + name


class ZipOperations:
    """Read-only operations; every write-like call answers EROFS."""

    use_ns = True  # times are integer nanoseconds

    def __init__(self, tree: Tree, stats: Stats, *, uid: int | None = None,
                 gid: int | None = None, umask: int | None = None, ttl: float = 60.0,
                 policy: KernelCachePolicy | None = None) -> None:
        self.tree = tree
        self.stats = stats
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.umask = umask or 0
        self.ttl = ttl
        self.policy = policy or KernelCachePolicy(ttl)
        # Set by the session once it runs: make the kernel drop its attributes and pages of a
        # path (True once it has). Without one, a stale open reads with direct I/O.
        self.invalidate: Callable[[str], bool] | None = None
        self._handles: dict[int, FileReader] = {}
        self._handle_locks: dict[int, threading.Lock] = {}
        self._next_fh = itertools.count(1)
        self._lock = threading.Lock()

    # -- session ----------------------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        """Kernel-cache timeouts, readdirplus and attribute-driven page invalidation (libfuse 3)."""
        config.entry_timeout = config.attr_timeout = config.negative_timeout = self.ttl
        conn.want |= conn.capable & (FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO
                                     | FUSE_CAP_AUTO_INVAL_DATA)
        log.debug("max_read %s, max_readahead %s, max_write %s, want %#x", conn.max_read,
                  conn.max_readahead, conn.max_write, conn.want)

    def open_handles(self) -> int:
        """How many files are open now."""
        return len(self._handles)

    # -- metadata -------------------------------------------------------------------------------

    def _attrs(self, path: str, node: Node, *, for_handle: bool = False) -> dict[str, Any]:
        """The attributes of ``node`` for the kernel, which keeps them for ``path`` unless the
        policy says they must go (see :meth:`KernelCachePolicy.attributes_sent`)."""
        if (node.version and self.policy.attributes_sent(path, node.version, for_handle=for_handle)
                and self.invalidate is not None):
            self.invalidate(path)
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
    def getattr(self, path: str, fi: Any = None) -> dict[str, Any]:
        """The attributes of ``path``; with the ``fuse_file_info`` of a file open here (the kernel
        asks so before reads, and takes the open file's size from the answer), those of the
        version that handle reads, whatever the path shows now."""
        reader = self._handles.get(fi.fh) if fi is not None else None
        if reader is not None:
            return self._attrs(path, reader.node, for_handle=True)
        attrs = self._attrs(path, self.tree.stat(path))
        self.policy.looked_up_in(path.rstrip("/").rpartition("/")[0] or "/")
        return attrs

    def wants_plus(self, path: str) -> bool:
        """Whether a listing of ``path`` should carry its entries' attributes (READDIRPLUS)."""
        return self.policy.wants_plus(path)

    @_translated
    def opendir(self, path: str, fi: Any) -> int:
        """Let the kernel cache the directory's entries; keep them while its listing is unchanged."""
        fi.keep_cache = int(self.policy.keep_listing(path, hash(tuple(self.tree.listdir(path)))))
        fi.cache_readdir = 1
        return 0

    @_translated
    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        return [(".", _DIR_ONLY, 0), ("..", _DIR_ONLY, 0),
                *((name, {"st_mode": _KIND_BITS[kind]}, 0) for name, kind in self.tree.listdir(path))]

    @_translated
    def readdir_plus(self, path: str, offset: int) -> Iterator[tuple[str, dict[str, Any], bool]]:
        """(name, attributes, complete) of the entries from index ``offset`` on (``.`` and ``..``
        first, as in ``readdir``): a READDIRPLUS answers the lookups of its entries too."""
        entries = self.tree.scandir(path)
        dots = [(name, _DIR_ONLY, False) for name in (".", "..")[offset:]]
        return itertools.chain(dots, (self._entry_plus(path, entry)
                                      for entry in entries[max(0, offset - 2):]))

    def _entry_plus(self, path: str, entry: DirEntry) -> tuple[str, dict[str, Any], bool]:
        try:
            return entry.name, self._attrs(_child(path, entry.name), entry.node()), True
        except ZipmountError:  # looked up (and its error told) on its own
            return entry.name, {"st_mode": _KIND_BITS[entry.kind]}, False

    @_translated
    def readlink(self, path: str) -> str:
        return self.tree.readlink(path)

    @_translated
    def access(self, path: str, amode: int) -> int:
        self.tree.stat(path)
        if amode & os.W_OK:
            raise FuseError(errno.EROFS)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 65536, "f_frsize": 65536, "f_namemax": 255}

    # -- data -------------------------------------------------------------------------------------

    @_translated
    def open(self, path: str, fi: Any) -> int:
        """Open a member; let the policy decide how the kernel may cache it (see
        :meth:`KernelCachePolicy.plan_open`), so no reader mixes versions."""
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise FuseError(errno.EROFS)
        reader = self.tree.open(path)
        plan = self.policy.plan_open(path, reader.version)
        with self._lock:
            fh = next(self._next_fh)
            self._handles[fh] = reader
            self._handle_locks[fh] = threading.Lock()
        fi.keep_cache = int(plan.keep_cache)
        fi.direct_io = int(plan.direct_io)
        if plan.invalidate:
            if self.invalidate is not None and self.invalidate(path):
                self.policy.invalidated(path, reader.version)
            else:  # the kernel takes no invalidation: read past its pages
                fi.direct_io = 1
        fi.noflush = 1  # nothing to flush: close(2) needs no FLUSH round trip
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
            raise FuseError(code) from None
        self.stats.record_read(len(data), time.monotonic() - t0)
        return data

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            reader = self._handles.pop(fi.fh, None)
            self._handle_locks.pop(fi.fh, None)
        if reader is not None:
            self.policy.released(path, reader.version)
            reader.close()
        return 0

    # -- observability ----------------------------------------------------------------------------

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if path == "/" and name == STATS_XATTR:
            self.stats.set_gauge("open_archives", self.tree.open_archives())
            self.stats.set_gauge("open_files", len(self._handles))
            return json.dumps({"pid": os.getpid(), **self.stats.snapshot()}).encode()
        raise FuseError(errno.ENODATA)

    def listxattr(self, path: str) -> list[str]:
        return [STATS_XATTR] if path == "/" else []

    # -- everything that would write ----------------------------------------------------------------

    chmod = chown = create = link = mkdir = mknod = rename = rmdir = _read_only
    setxattr = removexattr = symlink = truncate = unlink = utimens = write = _read_only

    # Left out on purpose: the kernel then stops sending them (one round trip less per close).
    # ``ioctl`` is left out too: libfuse itself answers Python's isatty() check on open (TCGETS)
    # with ENOSYS, without a Python callback; the kernel has no way to skip that round trip.
    flush = fsync = fsyncdir = None
