"""The libfuse 3 binding: mfusepy's ``FUSE`` with what zipmount needs beyond it, and
:func:`serve`. The only module of zipmount that loads libfuse."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from ..errors import ZipmountError
from .operations import ZipOperations

# mfusepy loads the first of libfuse 2 and libfuse 3 it finds, in that order; zipmount is built for
# libfuse 3 (readdirplus, noflush, path invalidation, cached directories), so ask for it by name.
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
try:
    import mfusepy
    from mfusepy import FUSE
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

# libfuse 3 (fuse.h)
FUSE_READDIR_PLUS = 1 << 0
FUSE_FILL_DIR_PLUS = 1 << 1
# Worker threads per session: many reader processes each wait on their own request (libfuse 3.14.0
# ignores the option; later versions honour it).
MAX_THREADS = 64
# Idle workers kept per session. Set explicitly: libfuse 3.14.0 warns "Ignoring invalid max
# threads value 4294967295" on every mount when it is left at its unset value.
MAX_IDLE_THREADS = 16
# The high-level API passes opendir's keep_cache and cache_readdir on to the kernel only since
# libfuse 3.16.1 (commit 98eb8089); before, the kernel re-reads every directory it lists.
CACHES_DIRECTORIES = (mfusepy.fuse_version_major, mfusepy.fuse_version_minor) >= (3, 16)

_this_thread = threading.local()


def _keep_thread_state() -> None:
    """Keep this libfuse worker thread's Python thread state between callbacks.

    ctypes creates a thread state for every callback from a thread Python did not start and
    destroys it afterwards (with a 16 KiB mmap'd frame stack each time: thousands of
    mmap/munmap pairs for one whole-array read). One extra PyGILState_Ensure that is never
    released keeps it alive, so later callbacks reuse it.
    """
    if not getattr(_this_thread, "kept", False):
        ctypes.pythonapi.PyGILState_Ensure()
        _this_thread.kept = True


class _Session(FUSE):
    """mfusepy's FUSE with what it leaves out: ``fuse_file_info`` for opendir (to let the kernel
    cache directories), readdirplus entries (FUSE_FILL_DIR_PLUS), path invalidation, and a kept
    thread state."""

    operations: ZipOperations

    def _wrapper(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        _keep_thread_state()
        return super()._wrapper(func, *args, **kwargs)

    def init_fuse_3(self, conn: Any, config: Any) -> None:
        fuse = _libfuse.fuse_get_context().contents.fuse  # the struct fuse * of this session
        self.operations.invalidate = lambda path: _invalidate_path(fuse, path)
        log.debug("libfuse %s.%s", mfusepy.fuse_version_major, mfusepy.fuse_version_minor)
        return super().init_fuse_3(conn, config)

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


def _invalidate_path(fuse: Any, path: str) -> bool:
    """Make the kernel drop its attributes and pages of ``path`` (True once it has)."""
    err = _libfuse.fuse_invalidate_path(fuse, path.encode("utf-8", "surrogateescape"))
    if err not in (0, -errno.ENOENT):  # ENOENT: the kernel holds nothing of it
        log.debug("cannot invalidate %s: errno %s", path, -err)
    return err in (0, -errno.ENOENT)


def serve(ops: ZipOperations, mountpoint: str, *, fsname: str, allow_other: bool = False) -> None:
    """Serve ``ops`` on ``mountpoint`` (read-only) until it is unmounted; raises if mounting fails."""
    if not CACHES_DIRECTORIES:  # what opendir answers would be dropped: libfuse opens them alone
        ops.opendir = None  # type: ignore[method-assign,assignment]
    _Session(ops, mountpoint, raw_fi=True, foreground=True, ro=True, fsname=fsname,
             subtype="zipmount", default_permissions=True, max_threads=MAX_THREADS,
             max_idle_threads=MAX_IDLE_THREADS,
             **({"allow_other": True} if allow_other else {}))
