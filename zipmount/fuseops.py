"""FUSE front-end: a thin mfusepy ``Operations`` over a :class:`~zipmount.tree.Tree` (libfuse 3) —
translation to errno and the kernel-cache policy only; :func:`serve` runs one session."""

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
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .archive import MemberReader
from .errors import ZipmountError
from .stats import STATS_XATTR, Stats
from .tree import Tree

# mfusepy loads the first of libfuse 2 and libfuse 3 it finds, in that order; zipmount is built for
# libfuse 3 (readdirplus, noflush, path invalidation, cached directories), so ask for it by name.
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
try:
    import mfusepy
    from mfusepy import FUSE, FuseOSError, Operations
except OSError as _exc:  # no libfuse at all
    raise ZipmountError(f"libfuse 3 is missing ({_exc}): install the Debian packages fuse3 and "
                        "libfuse3-3") from None
if mfusepy.fuse_version_major != 3:
    raise ZipmountError(f"libfuse 3 is needed, found {mfusepy.fuse_version_major}."
                        f"{mfusepy.fuse_version_minor}: install fuse3 and libfuse3-3")

_libfuse = mfusepy._libfuse  # libfuse calls mfusepy does not wrap
_libfuse.fuse_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_libfuse.fuse_invalidate_path.restype = ctypes.c_int

log = logging.getLogger(__name__)

_KIND_BITS = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "link": stat.S_IFLNK}

# libfuse 3 (fuse_common.h, fuse.h)
FUSE_CAP_AUTO_INVAL_DATA = 1 << 12
FUSE_CAP_READDIRPLUS = 1 << 13
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14
FUSE_READDIR_PLUS = 1 << 0
FUSE_FILL_DIR_PLUS = 1 << 1
# Worker threads per session: many reader processes each wait on their own request (libfuse 3.14.0
# ignores the option and prints "Ignoring invalid max threads value"; later versions honour it).
MAX_THREADS = 64
# The high-level API passes opendir's keep_cache and cache_readdir on to the kernel only since
# libfuse 3.16.1 (commit 98eb8089); before, the kernel re-reads every directory it lists.
CACHES_DIRECTORIES = (mfusepy.fuse_version_major, mfusepy.fuse_version_minor) >= (3, 16)


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


def _child(path: str, name: str) -> str:
    return path.rstrip("/") + "/" + name


@dataclass
class _Seen:
    """What the kernel may hold for one file: attributes of ``attr`` (answered at ``at``), pages
    of ``pages``."""

    attr: str | None
    pages: str | None
    at: float


class ZipOperations(Operations):
    """Read-only operations; every write-like call answers EROFS."""

    use_ns = True  # times are integer nanoseconds
    # Bookkeeping of what the kernel caches is kept for at most this many paths (see ``_note``).
    max_tracked_paths = 65536

    def __init__(self, tree: Tree, stats: Stats, *, uid: int | None = None,
                 gid: int | None = None, umask: int | None = None, ttl: float = 60.0) -> None:
        self.tree = tree
        self.stats = stats
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.umask = umask or 0
        self.ttl = ttl
        self._handles: dict[int, MemberReader] = {}
        self._handle_locks: dict[int, threading.Lock] = {}
        self._next_fh = itertools.count(1)
        # Kernel-cache bookkeeping per path (see ``open``): the member version the kernel's
        # attributes describe and the one whose pages its page cache may hold; the versions
        # of the handles open now; the listing each directory's cached entries show.
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._unsure_until = 0.0  # until then, a path without bookkeeping may have been evicted
        self._open_versions: dict[str, Counter[str]] = {}
        self._listings: OrderedDict[str, int] = OrderedDict()
        self._stat_dirs: OrderedDict[str, None] = OrderedDict()  # directories with entries looked up
        self._lock = threading.Lock()
        self._fuse: int | None = None  # libfuse's struct fuse *, once the session runs

    # -- session ----------------------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        """Kernel-cache timeouts, readdirplus and attribute-driven page invalidation (libfuse 3)."""
        config.entry_timeout = config.attr_timeout = config.negative_timeout = self.ttl
        self._fuse = _libfuse.fuse_get_context().contents.fuse  # for fuse_invalidate_path
        conn.want |= conn.capable & (FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO
                                     | FUSE_CAP_AUTO_INVAL_DATA)
        log.debug("libfuse %s.%s: max_read %s, max_readahead %s, max_write %s, want %#x",
                  mfusepy.fuse_version_major, mfusepy.fuse_version_minor, conn.max_read,
                  conn.max_readahead, conn.max_write, conn.want)

    # -- bookkeeping ------------------------------------------------------------------------------

    def _note(self, path: str, version: str) -> None:
        """The kernel now holds attributes of ``version`` for ``path``; prune old bookkeeping.

        An entry older than the attr timeout can go when no handle is open on its path: the
        kernel asks again (and the answer re-creates it) before it uses those attributes, and
        an open without an entry drops the old pages. Past ``max_tracked_paths`` the oldest
        entries go even within the timeout; until that timeout has passed, an open without an
        entry treats the kernel's attributes as stale (they may be of a version we forgot).
        """
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(path)
            if seen is None:
                self._seen[path] = _Seen(version, None, now)
            else:
                seen.attr, seen.at = version, now
                self._seen.move_to_end(path)
            self._prune(now)

    def _prune(self, now: float) -> None:
        for _ in range(len(self._seen)):
            path, oldest = next(iter(self._seen.items()))
            expired = now - oldest.at > self.ttl
            if not expired and len(self._seen) <= self.max_tracked_paths:
                return
            if path in self._open_versions:  # kept while a handle is open
                self._seen.move_to_end(path)
                continue
            del self._seen[path]
            if not expired:
                self._unsure_until = max(self._unsure_until, oldest.at + self.ttl)

    def tracked_paths(self) -> int:
        """How many paths the kernel-cache bookkeeping holds now (bounded)."""
        return len(self._seen) + len(self._listings) + len(self._stat_dirs)

    # -- metadata -------------------------------------------------------------------------------

    def _attrs(self, path: str) -> dict[str, Any]:
        node = self.tree.stat(path)
        if node.version:
            self._note(path, node.version)
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
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        attrs = self._attrs(path)
        parent = path.rstrip("/").rpartition("/")[0] or "/"
        with self._lock:
            self._stat_dirs[parent] = None
            self._stat_dirs.move_to_end(parent)
            if len(self._stat_dirs) > self.max_tracked_paths:
                self._stat_dirs.popitem(last=False)
        return attrs

    def wants_plus(self, path: str) -> bool:
        """Whether a listing of ``path`` should carry its entries' attributes (READDIRPLUS).

        Only where the kernel has looked up entries of it before: then a listing saves those
        round trips. A listing nothing stats afterwards (``find``) would pay a stat per entry
        for nothing: 2-3x the time of names only for 10k entries.
        """
        with self._lock:
            return path in self._stat_dirs

    @_translated
    def opendir(self, path: str, fi: Any) -> int:
        """Let the kernel cache the directory's entries; keep them while its listing is unchanged."""
        listing = hash(tuple(self.tree.listdir(path)))
        with self._lock:
            fi.keep_cache = int(self._listings.get(path) == listing)
            self._listings[path] = listing
            self._listings.move_to_end(path)
            while len(self._listings) > self.max_tracked_paths:
                self._listings.popitem(last=False)  # forgotten: its next open drops the cache
        fi.cache_readdir = 1
        return 0

    @_translated
    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        dot = {"st_mode": stat.S_IFDIR}
        return [(".", dot, 0), ("..", dot, 0),
                *((name, {"st_mode": _KIND_BITS[kind]}, 0) for name, kind in self.tree.listdir(path))]

    @_translated
    def readdir_plus(self, path: str, offset: int) -> Iterator[tuple[str, dict[str, Any], bool]]:
        """(name, attributes, complete) of the entries from index ``offset`` on (``.`` and ``..``
        first, as in ``readdir``): a READDIRPLUS answers the lookups of its entries too."""
        entries = [(".", "dir"), ("..", "dir"), *self.tree.listdir(path)][offset:]
        return (self._entry_plus(path, name, kind, plain=index + offset < 2)
                for index, (name, kind) in enumerate(entries))

    def _entry_plus(self, path: str, name: str, kind: str, plain: bool) -> tuple[str, dict[str, Any], bool]:
        if not plain:
            try:
                return name, self._attrs(_child(path, name)), True
            except ZipmountError:  # looked up (and its error told) on its own
                pass
        return name, {"st_mode": _KIND_BITS[kind]}, False

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
        archive was replaced, the first open of the new version drops the old pages; if the
        kernel may still hold the old attributes (its size would clip reads), they are
        invalidated first, so its next read asks for the new ones. Only while a handle on the
        old version is still open (its reads would refill old pages), or where the kernel takes
        no invalidation, does this handle read with direct I/O, past the page cache.
        """
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise FuseOSError(errno.EROFS)
        reader = self.tree.open(path)
        version = reader.version
        with self._lock:
            others = self._open_versions.setdefault(path, Counter())
            seen = self._seen.get(path)
            if seen is None:  # never stat'ed, or its bookkeeping was pruned
                attr = None if time.monotonic() < self._unsure_until else version
                seen = self._seen[path] = _Seen(attr, None, time.monotonic())
            old_handles = any(v != version for v in others)
            stale_attr = seen.attr != version
            if seen.pages == version:
                fi.keep_cache = 1
            elif not old_handles and not stale_attr:
                seen.pages = version  # keep_cache=0: the kernel drops old pages
            elif old_handles:
                fi.direct_io = 1
            others[version] += 1
            fh = next(self._next_fh)
            self._handles[fh] = reader
            self._handle_locks[fh] = threading.Lock()
        if stale_attr and not old_handles and seen.pages != version:
            if self._invalidate(path):
                with self._lock:
                    seen.pages, seen.attr = version, None  # the kernel asks for attributes again
            else:
                fi.direct_io = 1
        fi.noflush = 1  # nothing to flush: close(2) needs no FLUSH round trip
        fi.fh = fh
        return 0

    def _invalidate(self, path: str) -> bool:
        """Make the kernel drop its attributes and pages of ``path`` (True once it has)."""
        if self._fuse is None:
            return False
        err = _libfuse.fuse_invalidate_path(self._fuse, path.encode("utf-8", "surrogateescape"))
        if err not in (0, -errno.ENOENT):  # ENOENT: the kernel holds nothing of it
            log.debug("cannot invalidate %s: errno %s", path, -err)
        return err in (0, -errno.ENOENT)

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
    # ``ioctl`` is left out too: libfuse itself answers Python's isatty() check on open (TCGETS)
    # with ENOSYS, without a Python callback; the kernel has no way to skip that round trip.
    flush = fsync = fsyncdir = None


class _Session(FUSE):
    """mfusepy's FUSE with what it leaves out: ``fuse_file_info`` for opendir (to let the kernel
    cache directories), readdirplus entries (FUSE_FILL_DIR_PLUS), and a kept thread state."""

    operations: ZipOperations

    def _wrapper(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        _keep_thread_state()
        return super()._wrapper(func, *args, **kwargs)

    def opendir(self, path: bytes, fip: Any) -> int:
        return self.operations.opendir(path.decode(self.encoding, self.errors), fip.contents)

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any,
                       flags: int) -> int:
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        if not flags & FUSE_READDIR_PLUS or decoded is None or not self.operations.wants_plus(decoded):
            return super().readdir_fuse_3(path, buf, filler, offset, fip, flags)
        # Each entry with its own offset: libfuse 3.14 sends entries filled with offset 0 from a
        # list that drops their attributes (and the node id the kernel needs to keep them).
        st = mfusepy.c_stat()
        entries = self.operations.readdir_plus(decoded, offset)
        for index, (name, attrs, complete) in enumerate(entries, start=offset + 1):
            ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
            mfusepy.set_st_attrs(st, attrs, use_ns=True)
            if filler(buf, name.encode(self.encoding, self.errors), st, index,
                      FUSE_FILL_DIR_PLUS if complete else 0):
                break  # the reply is full; the kernel asks again from the last offset sent
        return 0


def serve(ops: ZipOperations, mountpoint: str, *, fsname: str, allow_other: bool = False) -> None:
    """Serve ``ops`` on ``mountpoint`` (read-only) until it is unmounted; raises if mounting fails."""
    if not CACHES_DIRECTORIES:  # what opendir answers would be dropped: libfuse opens them alone
        ops.opendir = None  # type: ignore[method-assign]
    _Session(ops, mountpoint, raw_fi=True, foreground=True, ro=True, fsname=fsname,
             subtype="zipmount", default_permissions=True, max_threads=MAX_THREADS,
             **({"allow_other": True} if allow_other else {}))
