"""Cache layer: fixed-size blocks of remote objects in a memory tier and a persistent disk tier.

One :class:`BlockCache` serves every archive of a daemon. Blocks are keyed by the object's identity
(location, path, ETag, size), so a replaced object can never be served from old blocks.

Why not fsspec's caches: s3fs/fsspec file caches (``readahead``, ``blockcache``, ``bytes``) live in
one open file object, in memory only, with 5-50 MB blocks; on the zarr-in-zip workload of
NOTES.md that served 1,349 MB for ~10 MB of chunks and forgot everything on re-read.
``CachingFileSystem``/``blockcache`` persist whole sparse files with one JSON metadata file rewritten
per update, have no global size cap or LRU eviction, and no per-block checksum. What is needed here
is small (64 KiB) blocks fetched by right-sized range requests, one memory cap for all archives,
single flight for concurrent misses, and crash-safe, checksummed, size-capped persistence.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import itertools
import logging
import os
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .stats import Stats

log = logging.getLogger(__name__)

BLOCK_SIZE = 64 * 1024
# Bigger requests are split and fetched in parallel (one stream does not saturate a link).
MAX_REQUEST = 2 * 1024 * 1024
_RUN_HEADER = struct.Struct("<8sI")  # magic, number of blocks; then (crc32, length) per block
_RUN_ENTRY = struct.Struct("<II")
_MAGIC = b"zmrun001"

Fetch = Callable[[int, int], bytes]


class MemoryTier:
    """LRU of blocks under one global byte cap.

    The cap also covers the buffers of requests in flight (``reserve``) and holds back 1/16 of
    itself (at most 16 MiB) for short-lived copies (FUSE replies, joined blocks), so that the
    daemon's memory stays within the cap plus the interpreter's own ~64 MiB however hard it is
    read (bench: 356-364 MiB peak for a 256 MiB cap without the headroom).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.reserved = min(capacity // 16, 16 * 1024 * 1024)  # the headroom
        self._blocks: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> None:
        """Hold (positive) or release (negative) room for buffers not in the LRU."""
        with self._lock:
            self.reserved += nbytes
            self._evict()

    def _evict(self) -> None:
        while self._blocks and self.used + self.reserved > self.capacity:
            _, evicted = self._blocks.popitem(last=False)
            self.used -= len(evicted)

    def get(self, key: tuple[str, int]) -> bytes | None:
        with self._lock:
            data = self._blocks.get(key)
            if data is not None:
                self._blocks.move_to_end(key)
            return data

    def put(self, key: tuple[str, int], data: bytes) -> None:
        if len(data) > self.capacity:
            return
        with self._lock:
            old = self._blocks.pop(key, None)
            if old is not None:
                self.used -= len(old)
            self._blocks[key] = data
            self.used += len(data)
            self._evict()


class DiskTier:
    """Named files under ``root`` with a total size cap, evicted least recently used first.

    Blocks are stored as *run files*, one per request (up to MAX_REQUEST of consecutive blocks),
    with a CRC-32 per block in the header; files are written to a temporary name and renamed, so
    a daemon killed mid-write never leaves a block that is later served corrupt. (One file per
    64 KiB block made a remount's whole-array read 1.3 s for 1,558 files; reading 2 MiB runs
    back is one read each.) One daemon owns a cache directory at a time (``flock`` on
    ``root/lock``).
    """

    def __init__(self, root: Path, capacity: int) -> None:
        self.root = root
        self.capacity = capacity
        self.files_dir = root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(root / "lock", "a+")  # noqa: SIM115 - held for the daemon's life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._made_dirs: set[Path] = set()
        self._tmp_ids = itertools.count()
        # key -> sorted [(first, last)] of the run files holding that object's blocks
        self._runs: dict[str, list[tuple[int, int]]] = {}
        self.used = 0
        self._load()
        self.prune()  # a restart with a smaller size must not keep more than it allows

    def _load(self) -> None:
        entries = []
        for sub in self.files_dir.iterdir():
            for entry in os.scandir(sub):
                if entry.name.startswith(".tmp"):
                    os.unlink(entry.path)  # left by a killed daemon
                    continue
                st = entry.stat()
                entries.append((st.st_mtime, entry.name, st.st_size))
        for _, name, size in sorted(entries):
            if not name.endswith((".run", ".index.json", ".view.json", ".spill")):
                os.unlink(self.path(name))  # not a file this version writes
                continue
            self._sizes[name] = size
            self.used += size
            if name.endswith(".run"):
                key, first, last = _parse_run_name(name)
                bisect.insort(self._runs.setdefault(key, []), (first, last))

    def path(self, name: str) -> Path:
        return self.files_dir / name[:2] / name

    def touch(self, name: str) -> bool:
        """Mark ``name`` as just used; False if it is not cached."""
        with self._lock:
            if name not in self._sizes:
                return False
            self._sizes.move_to_end(name)
        with contextlib.suppress(OSError):
            os.utime(self.path(name))
        return True

    def _run_of(self, key: str, index: int) -> tuple[int, int] | None:
        runs = self._runs.get(key)
        if not runs:
            return None
        pos = bisect.bisect_right(runs, (index, 2**62)) - 1
        if pos >= 0 and runs[pos][0] <= index <= runs[pos][1]:
            return runs[pos]
        return None

    def has_block(self, key: str, index: int) -> bool:
        with self._lock:
            return self._run_of(key, index) is not None

    def get_blocks(self, key: str, index: int) -> dict[int, bytes]:
        """Every block of the run file holding block ``index`` (empty if none, or corrupt).

        A run is read with one read; each block is checked against its CRC-32.
        """
        with self._lock:
            run = self._run_of(key, index)
        if run is None:
            return {}
        name = _run_name(key, *run)
        if not self.touch(name):
            return {}
        try:
            raw = self.path(name).read_bytes()
            magic, count = _RUN_HEADER.unpack_from(raw)
            if magic == _MAGIC and count == run[1] - run[0] + 1:
                blocks, offset = {}, _RUN_HEADER.size + count * _RUN_ENTRY.size
                for n in range(count):
                    crc, length = _RUN_ENTRY.unpack_from(raw, _RUN_HEADER.size + n * _RUN_ENTRY.size)
                    data = raw[offset: offset + length]
                    if len(data) != length or zlib.crc32(data) != crc:
                        break
                    blocks[run[0] + n] = data
                    offset += length
                else:
                    return blocks
            log.warning("disk cache: dropping corrupt file %s", name)
        except (OSError, struct.error):
            pass
        self.remove(name)
        return {}

    def put_run(self, key: str, first: int, blocks: list[bytes]) -> None:
        """Store consecutive blocks ``first, first+1, ...`` of object ``key`` as one file."""
        header = [_RUN_HEADER.pack(_MAGIC, len(blocks)),
                  *(_RUN_ENTRY.pack(zlib.crc32(b), len(b)) for b in blocks)]
        chunks = [*header, *blocks]
        self.write(_run_name(key, first, first + len(blocks) - 1), chunks,
                   sum(map(len, chunks)))

    def write(self, name: str, chunks: list[bytes] | Iterator[bytes],
              size: int | None = None) -> None:
        """Write ``name`` atomically from ``chunks`` (``size``: at most that many bytes in all).

        With ``size``, room is made (least recently used files deleted) before the first byte is
        written, so the files never add up to more than the capacity, not even while one is
        being written.
        """
        reserve = size or 0
        if reserve > self.capacity:
            raise OSError(errno.EFBIG, f"{size} bytes do not fit a disk cache of {self.capacity}")
        self._account(None, reserve)
        target = self.path(name)
        written = 0
        try:
            if target.parent not in self._made_dirs:
                target.parent.mkdir(exist_ok=True)
                self._made_dirs.add(target.parent)
            tmp = target.parent / f".tmp{os.getpid()}.{threading.get_ident()}.{next(self._tmp_ids)}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    for chunk in chunks:
                        written += len(chunk)
                        if size is not None and written > size:
                            raise OSError(errno.EFBIG, f"{name}: more than the {size} bytes "
                                                       "announced")
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view):]
                finally:
                    os.close(fd)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except BaseException:
            with self._lock:
                self.used -= reserve  # release the reservation
            raise
        self._account(name, written, reserved=reserve)

    def _account(self, name: str | None, size: int, reserved: int = 0) -> None:
        """Add ``size`` bytes (``name``: a file now in place of ``reserved`` reserved bytes; None:
        a reservation) and delete least recently used files until the total fits."""
        with self._lock:
            self.used += size - reserved
            if name is not None:
                self.used -= self._sizes.pop(name, 0)
                self._sizes[name] = size
                if name.endswith(".run"):
                    key, first, last = _parse_run_name(name)
                    runs = self._runs.setdefault(key, [])
                    if (first, last) not in runs:
                        bisect.insort(runs, (first, last))
            while self.used > self.capacity and self._sizes:
                old, old_size = self._sizes.popitem(last=False)
                self.used -= old_size
                self._forget_run(old)
                with contextlib.suppress(OSError):  # under the lock: never over, even briefly
                    os.unlink(self.path(old))

    def prune(self) -> None:
        """Evict least recently used files until the cache fits its capacity."""
        self._account(None, 0)

    def counts(self) -> dict[str, int]:
        """How many blocks, archive indexes and spill files the cache holds."""
        with self._lock:
            names = list(self._sizes)
        spills = sum(n.endswith(".spill") for n in names)
        indexes = sum(n.endswith(".index.json") for n in names)
        blocks = sum(last - first + 1 for n in names if n.endswith(".run")
                     for _, first, last in [_parse_run_name(n)])
        return {"blocks": blocks, "indexes": indexes, "spills": spills}

    def _forget_run(self, name: str) -> None:
        if name.endswith(".run"):
            key, first, last = _parse_run_name(name)
            runs = self._runs.get(key, [])
            if (first, last) in runs:
                runs.remove((first, last))
            if not runs:
                self._runs.pop(key, None)

    def remove(self, name: str) -> None:
        with self._lock:
            self.used -= self._sizes.pop(name, 0)
            self._forget_run(name)
            with contextlib.suppress(OSError):
                os.unlink(self.path(name))

    def close(self) -> None:
        self._lock_file.close()


class BlockCache:
    """Blocks of remote objects: memory tier, then disk tier, then one right-sized request.

    Concurrent misses of the same block cost one request (single flight). Runs of missing blocks
    are fetched with one request each, split into parallel requests of at most MAX_REQUEST.
    """

    def __init__(self, memory_bytes: int, disk: DiskTier | None, stats: Stats,
                 block_size: int = BLOCK_SIZE, fetch_threads: int = 8) -> None:
        self.block_size = block_size
        self.memory = MemoryTier(memory_bytes)
        self.disk = disk
        self.stats = stats
        self._inflight: dict[tuple[str, int], Future[bytes]] = {}
        self._lock = threading.Lock()
        self._requests = ThreadPoolExecutor(fetch_threads, thread_name_prefix="zipmount-get")

    def read(self, key: str, size: int, start: int, end: int, fetch: Fetch) -> bytes:
        """Bytes ``[start, end)`` of the object ``key`` of ``size`` bytes."""
        end = min(end, size)
        if start >= end:
            return b""
        bs = self.block_size
        first, last = start // bs, (end - 1) // bs
        found: dict[int, bytes] = {}
        missing = []
        for i in range(first, last + 1):
            data = self._lookup(key, i)
            if data is None:
                missing.append(i)
            else:
                found[i] = data
        if missing:
            waits, mine = self._claim(key, missing)
            pieces = list(_runs(mine, MAX_REQUEST // bs))
            for piece in pieces[1:]:
                self._requests.submit(self._fetch_run, key, size, piece, fetch, waits)
            if pieces:
                self._fetch_run(key, size, pieces[0], fetch, waits)
            found.update((i, fut.result()) for i, fut in waits.items())
        offset = start - first * bs
        if first == last:
            return found[first][offset: offset + end - start]
        # One copy: the parts of the first and last block that are wanted, joined.
        parts = [memoryview(found[i]) for i in range(first, last + 1)]
        parts[0] = parts[0][offset:]
        parts[-1] = parts[-1][: end - last * bs]
        return b"".join(parts)

    def prefetch(self, key: str, size: int, start: int, end: int, fetch: Fetch) -> None:
        """Fetch the uncached blocks of ``[start, end)`` in the background.

        The blocks are claimed (single flight) before this returns, so a read that arrives
        meanwhile waits for these requests instead of sending its own. Errors are left to reads.
        """
        end = min(end, size)
        if start >= end:
            return
        bs = self.block_size
        absent, on_disk = [], []
        for i in range(start // bs, (end - 1) // bs + 1):
            if self.memory.get((key, i)) is None:
                if self.disk is not None and self.disk.has_block(key, i):
                    on_disk.append(i)
                else:
                    absent.append(i)
        if on_disk:  # load them into memory ahead of the reader, off its thread
            self._requests.submit(self._promote, key, on_disk)
        if absent:
            waits, mine = self._claim(key, absent)
            for piece in _runs(mine, MAX_REQUEST // bs):
                self._requests.submit(self._fetch_run, key, size, piece, fetch, waits)

    def _promote(self, key: str, indices: list[int]) -> None:
        for i in indices:
            if self.memory.get((key, i)) is None:
                self._lookup(key, i)  # loads the whole run file holding block i

    def _claim(self, key: str, indices: list[int]) -> tuple[dict[int, Future[bytes]], list[int]]:
        """Futures for ``indices``; the ones this caller must fetch are returned in ``mine``."""
        mine: list[int] = []
        waits: dict[int, Future[bytes]] = {}
        with self._lock:
            for i in indices:
                fut = self._inflight.get((key, i))
                if fut is None:
                    fut = self._inflight[(key, i)] = Future()
                    mine.append(i)
                waits[i] = fut
        return waits, mine

    def _lookup(self, key: str, index: int) -> bytes | None:
        data = self.memory.get((key, index))
        if data is not None:
            self.stats.add("memory_hits")
            return data
        self.stats.add("memory_misses")
        if self.disk is None:
            return None
        blocks = self.disk.get_blocks(key, index)
        if index not in blocks:
            self.stats.add("disk_misses")
            return None
        self.stats.add("disk_hits")
        for i, block in blocks.items():  # the whole run file was read: keep all of it
            self.memory.put((key, i), block)
        return blocks[index]

    def _fetch_run(self, key: str, size: int, run: tuple[int, int], fetch: Fetch,
                   futures: dict[int, Future[bytes]]) -> None:
        first, last = run
        bs = self.block_size
        nbytes = min(size, (last + 1) * bs) - first * bs
        # The response arrives in chunks, is joined into one body, then copied into blocks:
        # up to three copies exist side by side for a moment.
        self.memory.reserve(3 * nbytes)
        try:
            data = fetch(first * bs, min(size, (last + 1) * bs))
        except BaseException as exc:
            self.memory.reserve(-3 * nbytes)
            with self._lock:
                for i in range(first, last + 1):
                    self._inflight.pop((key, i), None)
            for i in range(first, last + 1):
                futures[i].set_exception(exc)
            return
        blocks = {i: data[(i - first) * bs: (i - first + 1) * bs] for i in range(first, last + 1)}
        del data
        self.memory.reserve(-3 * nbytes)
        for i, block in blocks.items():
            self.memory.put((key, i), block)
        with self._lock:
            for i in blocks:
                self._inflight.pop((key, i), None)
        for i, block in blocks.items():
            futures[i].set_result(block)
        # Readers are served first; the disk copy is written after (2 ms per 8 MiB piece
        # otherwise delayed every waiting reader).
        if self.disk is not None:
            try:
                self.disk.put_run(key, first, list(blocks.values()))
            except OSError as exc:
                log.warning("disk cache write failed: %s", exc)

    def close(self) -> None:
        self._requests.shutdown(wait=False, cancel_futures=True)
        if self.disk is not None:
            self.disk.close()


def _run_name(key: str, first: int, last: int) -> str:
    return f"{key}.{first}-{last}.run"


def _parse_run_name(name: str) -> tuple[str, int, int]:
    key, span, _ = name.rsplit(".", 2)
    first, last = span.split("-")
    return key, int(first), int(last)


def _runs(indices: list[int], max_len: int) -> Iterator[tuple[int, int]]:
    """Contiguous runs (first, last) of sorted ``indices``, each at most ``max_len`` long."""
    if not indices:
        return
    first = prev = indices[0]
    for i in indices[1:]:
        if i != prev + 1 or i - first >= max_len:
            yield first, prev
            first = i
        prev = i
    yield first, prev
