"""The file store: named blobs under one cache directory, shared by every process on the node.

Any layer keeps files here by name (``<name[:2]>/<name>``; a name may hold one ``/`` to group
files in a directory of their own). The store knows nothing of what the names mean: it writes
atomically, keeps the total under a size cap and evicts the least recently used files first.

Sharing one directory between processes (daemons, notebooks, DataLoader or Dask workers):

- A file appears only complete: it is written to ``.tmp.<bytes>.<pid>...`` beside its name, then
  renamed. A reader that opens a name sees a whole file or none; one that finds it gone
  (evicted by another process meanwhile) treats that as a miss.
- Recency is the file's mtime (set on every hit), so every process sees every other's hits.
- The total is kept in ``ledger`` (bytes used, time of the last scan, bytes ever added), updated
  under ``flock`` in short critical sections, never across I/O of a blob nor a scan. A writer
  creates its temporary file (named with the size it will have), then reserves that size in the
  ledger; when the total would pass the cap, it scans the directory (the true total) and deletes
  the oldest files until the total is 10% under the cap, so a scan is paid once per tenth of the
  cap written. A scan also runs every few minutes, correcting drift (a process killed between
  reserving and writing, files deleted by hand).
- One scan at a time (``flock`` on ``scan.lock``); the ledger is not locked meanwhile: the scan
  sets it to what it found plus what was added while it walked (so it may be ahead, never
  behind).
- Nobody waits for a lock without a bound (a stopped process may hold one for ever): the ledger
  lock at most LOCK_WAIT seconds, then a write is refused (EAGAIN: not kept, the cache is
  optional) and a removal is counted later; automatic scans only when no other scan runs;
  ``prune``/``clear`` wait at most SCAN_WAIT for another scan, then fail with
  :class:`CacheBusy`. After the ledger lock was found stuck, the next attempts for
  BUSY_BACKOFF seconds do not wait at all. A writer that waited for another's scan does not
  scan again if that one left the total under the cap.
- A writer holds ``flock`` on its temporary file: a scan deletes only unlocked temporary files
  older than a few seconds (left by a killed process) and counts the others at the size their
  name announces. The kernel drops a dead process's locks, so a crash never blocks the rest.

How tight the cap is: a scan counts every file and every reservation (a temporary file renamed
while the scan walks its directory at the size it announced), so the ledger is exact but for
``size``-less writes and files deleted behind the store's back, until the next scan. Each
process keeps its own cap: processes sharing a directory should use the same size (the
smallest one wins).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import itertools
import logging
import os
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ZipmountError

log = logging.getLogger(__name__)

_LEDGER = struct.Struct("<qdq")  # bytes used, time.time() of the last scan, bytes ever added
_OLD_LEDGER = struct.Struct("<qd")  # written by versions before "bytes ever added"
RESCAN_INTERVAL = 300.0
LOCK_WAIT = 2.0  # the longest a caller waits for the ledger lock (held for microseconds)
SCAN_WAIT = 30.0  # the longest prune/clear wait for another process's scan to end
BUSY_BACKOFF = 10.0  # after a lock was found stuck, attempts this long do not wait
_TMP = ".tmp."
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1
_renameat2: Any
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
except AttributeError:  # a libc without it (glibc < 2.28)
    _renameat2 = None
_DEAD_TMP_AGE = 10.0  # an unlocked temporary file this old belongs to a killed writer
_LOW_WATER = 0.9  # an eviction frees down to this fraction of the cap


class CacheBusy(ZipmountError):
    """Another process has held the cache's scan (or ledger) lock for too long."""

    errno = errno.EAGAIN


@dataclass(frozen=True)
class StoredFile:
    """One file of the store: its name, size and last use (mtime, ns)."""

    name: str
    size: int
    used_ns: int


class FileStore:
    """Named files under ``root/files`` with a total size cap, shared by processes (see module)."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root = root
        self.capacity = capacity
        self.files_dir = root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._base = str(self.files_dir)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        self._ledger_fd = os.open(root / "ledger", flags, 0o600)
        self._scan_fd = os.open(root / "scan.lock", flags, 0o600)
        # flock is per open file: the threads of this process need locks of their own.
        self._ledger_gate = _Gate(self._ledger_fd, BUSY_BACKOFF)
        # A scan may rightly take seconds: waiting for one never makes later attempts skip it.
        self._scan_gate = _Gate(self._scan_fd, 0.0)
        self._pending_lock = threading.Lock()
        self._pending = [0, 0]  # bytes used, bytes added: not in the ledger yet (it was stuck)
        self._tmp_ids = itertools.count()
        # A restart with a smaller size must not keep more than it allows.
        with self._ledger() as ledger:
            pass
        if ledger is not None and self._needs_scan(ledger, grew=True):
            self._scan(capacity, wait=0.0, unless_done=True)

    # --- naming and reading -------------------------------------------------------------
    def path(self, name: str) -> Path:
        """Where ``name`` lives (it may not exist, or vanish at any moment)."""
        return Path(self.fspath(name))

    def fspath(self, name: str) -> str:
        """:meth:`path` as a string, for hot paths (a ``Path`` costs microseconds to build)."""
        return f"{self._base}/{name[:2]}/{name}"

    def touch(self, name: str) -> bool:
        """Mark ``name`` as just used; False if it is not stored."""
        try:
            os.utime(self.fspath(name))
            return True
        except OSError:
            return False

    def read(self, name: str) -> bytes | None:
        """The bytes of ``name``, marked as just used; None if it is not stored or cannot be
        read now (a transient error such as EMFILE is a miss, never a reason to delete it)."""
        try:
            with open(self.fspath(name), "rb") as f:
                data = f.read()
        except OSError:
            return None
        self.touch(name)
        return data

    def listing(self, group: str) -> tuple[int, list[str]] | None:
        """(mtime in ns, names) of the directory ``group`` holding names ``group/...``; None if
        it does not exist. The mtime changes whenever a file is added or removed there."""
        where = self.fspath(group)
        try:
            st = os.stat(where)
            names = [e.name for e in os.scandir(where) if not e.name.startswith(_TMP)]
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, names

    # --- writing -------------------------------------------------------------------------
    def write(self, name: str, chunks: Iterable[bytes | memoryview], size: int | None = None,
              overwrite: bool = True) -> None:
        """Write ``name`` atomically from ``chunks`` (``size``: at most that many bytes in all).

        With ``size``, room is made (least recently used files deleted) before the first byte is
        written, so the files add up to no more than the capacity, not even while one is being
        written. ``overwrite=False`` is for names that stand for their content (a run of blocks,
        a spill file): a file another process put there first is kept, and the total is never
        corrected by the size of a file that an eviction may have removed meanwhile.
        """
        reserve = size or 0
        if reserve > self.capacity:
            raise OSError(errno.EFBIG, f"{size} bytes do not fit a disk cache of {self.capacity}")
        target = self.path(name)
        tmp = target.parent / f"{_TMP}{reserve}.{os.getpid()}.{threading.get_ident()}.{next(self._tmp_ids)}"
        fd = self._create(tmp)
        written = replaced = 0
        try:
            # Locked and named with its size before it is counted, so that a scan by any
            # process sees this reservation from the moment the ledger holds it.
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._reserve(reserve)
            try:
                for chunk in chunks:
                    view = memoryview(chunk).cast("B")
                    written += len(view)
                    if size is not None and written > size:
                        raise OSError(errno.EFBIG, f"{name}: more than the {size} bytes announced")
                    while view:
                        view = view[os.write(fd, view):]
                if overwrite:
                    with contextlib.suppress(FileNotFoundError):
                        replaced = os.stat(target).st_size
                    os.replace(tmp, target)
                elif not _rename_if_absent(tmp, target):
                    written = 0  # the same content is there already
                    os.unlink(tmp)
            except BaseException:
                self._add(-reserve)
                raise
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        self._add(written - reserve - replaced)

    def _create(self, tmp: Path) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        for _ in range(3):  # another process may remove an empty directory between the two
            try:
                return os.open(tmp, flags, 0o600)
            except FileNotFoundError:
                tmp.parent.mkdir(parents=True, exist_ok=True)
        return os.open(tmp, flags, 0o600)

    def remove(self, name: str) -> None:
        """Delete ``name`` (nothing if it is already gone)."""
        path = self.path(name)
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            return
        self._add(-size)
        self._rmdir_empty(path.parent)

    # --- the shared total ----------------------------------------------------------------
    @property
    def used(self) -> int:
        """Bytes stored by every process (as of the ledger; exact after a scan)."""
        raw = os.pread(self._ledger_fd, 8, 0)
        return max(0, struct.unpack("<q", raw)[0]) if len(raw) == 8 else 0

    @contextlib.contextmanager
    def _ledger(self, wait: float = LOCK_WAIT) -> Iterator[list[Any] | None]:
        """The ledger as ``[used, scanned, added]``, locked for a short update (written back
        at the end of the block), with this process's pending changes applied; None if it
        could not be locked within ``wait`` seconds."""
        if not self._ledger_gate.enter(wait):
            yield None
            return
        try:
            raw = os.pread(self._ledger_fd, _LEDGER.size, 0)
            if len(raw) == _LEDGER.size:
                ledger = list(_LEDGER.unpack(raw))
            elif len(raw) >= _OLD_LEDGER.size:
                ledger = [*_OLD_LEDGER.unpack(raw[:_OLD_LEDGER.size]), 0]
            else:  # none yet, or lost: a scan will tell
                ledger = [0, 0.0, 0]
            with self._pending_lock:
                ledger[0] += self._pending[0]
                ledger[2] += self._pending[1]
                self._pending = [0, 0]
            yield ledger
            os.pwrite(self._ledger_fd, _LEDGER.pack(*ledger), 0)
        finally:
            self._ledger_gate.leave()

    def _needs_scan(self, ledger: list[Any], grew: bool) -> bool:
        used, scanned, _ = ledger
        return used < 0 or (grew and used > self.capacity) or \
            time.time() - scanned > RESCAN_INTERVAL

    def _add(self, delta: int) -> None:
        """Add ``delta`` bytes to the total (later, if the ledger is stuck); scan and evict if
        it passes the cap or is stale, unless another scan runs."""
        with self._ledger() as ledger:
            if ledger is not None:
                ledger[0] += delta
                ledger[2] += max(0, delta)
        if ledger is None:
            with self._pending_lock:
                self._pending[0] += delta
                self._pending[1] += max(0, delta)
        elif self._needs_scan(ledger, grew=delta > 0):
            self._scan(self.capacity, wait=0.0, unless_done=True)

    def _reserve(self, size: int) -> None:
        """Count ``size`` bytes about to be written, making room first if the total would pass
        the cap; OSError(EAGAIN) if that cannot be done now (the write is not kept)."""
        with self._ledger() as ledger:
            if ledger is not None:
                ledger[0] += size
                ledger[2] += size
        if ledger is None:
            if size:
                raise OSError(errno.EAGAIN, "the disk cache's ledger is locked by another "
                                            "process: not kept")
            return
        over = size > 0 and ledger[0] > self.capacity
        if self._needs_scan(ledger, grew=size > 0) and \
                not self._scan(self.capacity, wait=LOCK_WAIT if over else 0.0,
                               unless_done=True) and over:
            self._add(-size)
            raise OSError(errno.EAGAIN, "the disk cache is full and another process is "
                                        "scanning it: not kept")

    def _scan(self, capacity: int, wait: float, low_water: float = _LOW_WATER,
              unless_done: bool = False) -> bool:
        """Scan the directory (one process at a time; the ledger is not locked meanwhile),
        evict down to ``low_water`` of ``capacity`` if over it, and set the ledger to the
        total found plus what was added meanwhile (``unless_done``: nothing, if a scan that
        ended while this one waited left the ledger needing none). False if another scan
        kept on for ``wait`` seconds or the ledger was stuck (nothing was done, or the total
        is not recorded)."""
        if not self._scan_gate.enter(wait):
            return False
        try:
            with self._ledger() as ledger:
                pass
            if ledger is None:
                return False
            if unless_done and not self._needs_scan(ledger, grew=True):
                return True
            added_before = ledger[2]
            total = self._scan_and_evict(capacity, low_water)
            with self._ledger() as ledger:
                if ledger is not None:
                    ledger[0] = total + max(0, ledger[2] - added_before)
                    ledger[1] = time.time()
            return ledger is not None
        finally:
            self._scan_gate.leave()

    def prune(self, capacity: int | None = None) -> None:
        """Evict least recently used files until the store fits ``capacity`` (default: its own);
        :class:`CacheBusy` if another process keeps the cache busy for SCAN_WAIT seconds."""
        if not self._scan(self.capacity if capacity is None else capacity, wait=SCAN_WAIT,
                          low_water=1.0):
            raise CacheBusy(f"{self.root}: another process has been scanning the cache (or "
                            f"holding its ledger) for {SCAN_WAIT:g} s; try again")

    def clear(self) -> None:
        """Delete every file (files being written by live processes land afterwards)."""
        self.prune(0)

    def files(self) -> list[StoredFile]:
        """Every stored file, as of now."""
        return [f for f, _ in self._walk()[0]]

    def _walk(self) -> tuple[list[tuple[StoredFile, str]], int]:
        """Stored files (with their paths) and the bytes reserved by live writers; deletes the
        temporary files of dead ones."""
        found, reserved = [], 0
        now = time.time()
        for dirpath, _, names in os.walk(self.files_dir):
            for base in names:
                path = os.path.join(dirpath, base)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    if base.startswith(_TMP):  # renamed into place since the listing, most likely
                        reserved += _announced(base)
                    continue
                if base.startswith(_TMP):
                    if now - st.st_mtime > _DEAD_TMP_AGE and not _locked(path):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(path)
                    else:
                        reserved += max(st.st_size, _announced(base))
                    continue
                name = os.path.relpath(path, self.files_dir).split(os.sep, 1)[-1]
                found.append((StoredFile(name, st.st_size, st.st_mtime_ns), path))
        return found, reserved

    def _scan_and_evict(self, capacity: int, low_water: float = _LOW_WATER) -> int:
        """The true total, after deleting the least recently used files if it is over
        ``capacity``. Called under the scan lock."""
        found, reserved = self._walk()
        total = sum(f.size for f, _ in found) + reserved
        if total > capacity:
            goal = int(capacity * low_water)
            for f, path in sorted(found, key=lambda fp: fp[0].used_ns):
                if total <= goal:
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    total -= f.size
                    self._rmdir_empty(Path(path).parent)
        return total

    def _rmdir_empty(self, directory: Path) -> None:
        if directory.parent != self.files_dir and directory != self.files_dir:
            with contextlib.suppress(OSError):  # not empty: still in use
                directory.rmdir()

    def close(self) -> None:
        if self._pending != [0, 0]:
            with self._ledger():  # one more try to record what was pending
                pass
        os.close(self._ledger_fd)
        os.close(self._scan_fd)


class _Gate:
    """An exclusive ``flock`` on ``fd`` shared by the threads of this process, entered with a
    bound on the wait (polled: flock has no timeout); once it was found held for a whole wait,
    attempts for ``backoff`` seconds do not wait."""

    def __init__(self, fd: int, backoff: float) -> None:
        self.fd = fd
        self.backoff = backoff
        self._threads = threading.Lock()
        self._stuck_until = 0.0

    def enter(self, wait: float) -> bool:
        start = time.monotonic()
        if start < self._stuck_until:
            wait = 0.0
        if not self._threads.acquire(timeout=wait):
            return False
        delay = 0.0005
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._stuck_until = 0.0
                return True
            except BlockingIOError:
                left = start + wait - time.monotonic()
                if left <= 0:
                    if wait > 0:  # held all the while it was waited for
                        self._stuck_until = time.monotonic() + self.backoff
                    self._threads.release()
                    return False
                time.sleep(min(delay, left))
                delay = min(2 * delay, 0.005)  # held for microseconds: look again soon

    def leave(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        self._threads.release()


def _rename_if_absent(src: Path, dst: Path) -> bool:
    """Rename ``src`` to ``dst`` unless ``dst`` exists, atomically; False if it exists.

    renameat2(RENAME_NOREPLACE), which the os module does not offer: a link and an unlink
    would show the file under two names for a moment (counted twice by a concurrent scan).
    """
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                      _RENAME_NOREPLACE) == 0:
            return True
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        if err not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: a file system without it
            raise OSError(err, os.strerror(err), str(dst))
    try:
        os.link(src, dst)
    except FileExistsError:
        return False
    os.unlink(src)
    return True


def _announced(base: str) -> int:
    with contextlib.suppress(ValueError, IndexError):
        return int(base[len(_TMP):].split(".", 1)[0])
    return 0


def _locked(path: str) -> bool:
    """Whether a live writer holds ``path`` (its flock)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
