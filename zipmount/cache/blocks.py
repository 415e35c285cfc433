"""The block cache: blocks of remote objects in memory, then in run files of the file store
(:mod:`.runs`), then fetched with one right-sized request (single flight, parallel pieces,
bounded waits).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from ..errors import SourceError, ZipmountError
from ..stats import Stats
from .files import FileStore
from .memory import Buffer, MemoryTier
from .runs import RunFiles

log = logging.getLogger(__name__)

BLOCK_SIZE = 64 * 1024
# Bigger requests are split and fetched in parallel (one stream does not saturate a link).
MAX_REQUEST = 2 * 1024 * 1024

Fetch = Callable[[int, int], Buffer]


class CacheClosed(ZipmountError):
    """The cache was closed while a read waited for it."""


class _NoData(SourceError):
    """A read's deadline passed while it waited for blocks (EIO)."""


Job = tuple[str, int, tuple[int, int], Fetch, dict[int, Future[memoryview]]]


class _Queued:
    """A read-ahead piece waiting for a thread (``job``: the arguments of ``_fetch_run``)."""

    __slots__ = ("job", "task")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.task: Future[None] | None = None


class BlockCache:
    """Blocks of remote objects: memory tier, then run files, then one right-sized request.

    Concurrent misses of the same block in one process cost one request (single flight); a read
    waiting for another's request gives up after ``timeout`` seconds, and one that needs a
    read-ahead piece still queued takes it over. Runs of missing blocks are
    fetched with one request each, split into parallel requests of at most MAX_REQUEST (the
    first on the reader's own thread). No lock is held across a fetch or a file access.
    """

    def __init__(self, memory_bytes: int, disk: FileStore | None, stats: Stats,
                 block_size: int = BLOCK_SIZE, fetch_threads: int = 16, timeout: float = 30.0) -> None:
        self.block_size = block_size
        self.cell_blocks = max(1, MAX_REQUEST // block_size)
        self.memory = MemoryTier(memory_bytes, block_size)
        self.disk = disk
        self.runs = RunFiles(disk, block_size, self.cell_blocks) if disk is not None else None
        self.stats = stats
        self.timeout = timeout
        self._inflight: dict[tuple[str, int], Future[memoryview]] = {}
        # Read-ahead pieces not started yet, by each of their blocks: a read that needs one
        # takes it over instead of waiting behind the queue.
        self._queued: dict[tuple[str, int], _Queued] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._queueing = 0  # fetched pieces to be queued for the disk writer
        self._all_queued = threading.Condition(self._lock)
        # Pieces of reads never queue behind read-ahead: each has its own threads.
        self._requests = ThreadPoolExecutor(fetch_threads, thread_name_prefix="zipmount-get")
        self._ahead = ThreadPoolExecutor(max(2, fetch_threads // 2), thread_name_prefix="zipmount-ahead")
        # Disk writes happen on one thread of their own, after readers are served; a bounded
        # queue holds the fetchers back only if the disk falls behind by that many pieces
        # (pieces waiting count against the memory cap: at most an eighth of it in all).
        self._writes: queue.Queue[tuple[str, int, Buffer] | None] = queue.Queue(
            maxsize=max(1, min(16, memory_bytes // (8 * MAX_REQUEST))))
        self._writer: threading.Thread | None = None
        if self.runs is not None:
            self._writer = threading.Thread(target=self._write_runs, name="zipmount-disk", daemon=True)
            self._writer.start()

    def read(self, key: str, size: int, start: int, end: int, fetch: Fetch,
             timeout: float | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object ``key`` of ``size`` bytes; ``timeout``: this
        read's bound on waiting for requests other reads started (default: the cache's)."""
        end = min(end, size)
        if start >= end:
            return b""
        found = self._blocks(key, size, start, end, fetch, timeout)
        bs = self.block_size
        first, last = start // bs, (end - 1) // bs
        offset = start - first * bs
        if first == last:
            return bytes(found[first][offset: offset + end - start])
        # One copy: the parts of the first and last block that are wanted, joined.
        parts = [found[i] for i in range(first, last + 1)]
        parts[0] = parts[0][offset:]
        parts[-1] = parts[-1][: end - last * bs]
        return b"".join(parts)

    def fill(self, key: str, size: int, start: int, end: int, fetch: Fetch) -> None:
        """Make sure the blocks of ``[start, end)`` are cached, as :meth:`read` would, without
        copying them out (a decode that keeps what it passes on the way)."""
        if start < min(end, size):
            self._blocks(key, size, start, min(end, size), fetch, None)

    def _blocks(self, key: str, size: int, start: int, end: int, fetch: Fetch,
                timeout: float | None) -> dict[int, memoryview]:
        """The blocks of ``[start, end)`` by index: cached ones, others fetched or waited for."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        bs = self.block_size
        first, last = start // bs, (end - 1) // bs
        found: dict[int, memoryview] = {}
        missing = []
        listed: dict[int, list[tuple[int, int]]] = {}  # the runs of each cell, listed once
        for i in range(first, last + 1):
            data = self._lookup(key, i, listed)
            if data is None:
                missing.append(i)
            else:
                found[i] = data
        if missing:
            waits, mine = self._claim(key, missing)
            pieces = [(key, size, piece, fetch, waits) for piece in _pieces(mine, self.cell_blocks)]
            claimed = set(mine)
            pieces += self._take_over(key, [i for i in waits if i not in claimed])
            own = {i for _, _, (a, b), _, _ in pieces for i in range(a, b + 1) if i in waits}
            queued = [(job, self._requests.submit(self._fetch_run, *job)) for job in pieces[1:]]
            if pieces:
                self._fetch_run(*pieces[0])
            # Every wait ends by the read's deadline, for a request another read started and
            # for this read's own pieces queued in the shared pool behind other reads' alike.
            try:
                found.update((i, self._wait(fut, deadline, timeout, i in own)) for i, fut in waits.items())
            except _NoData as exc:
                for job, task in queued:  # not started yet: nobody else will fetch them now
                    if task.cancel():
                        self._abandon(job, exc)
                raise
        return found

    def _wait(self, fut: Future[memoryview], deadline: float, timeout: float,
              own: bool) -> memoryview:
        try:
            return fut.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            why = "its requests queued behind other reads'" if own else \
                "waiting for a request another read started"
            raise _NoData(f"no data within {timeout:g} s ({why})") from None

    def _abandon(self, job: Job, exc: BaseException) -> None:
        """Fail the blocks of a piece that will not be fetched (its reader gave up)."""
        key, _, (first, last), _, futures = job
        with self._lock:
            for i in range(first, last + 1):
                if self._inflight.get((key, i)) is futures[i]:
                    del self._inflight[(key, i)]
        for i in range(first, last + 1):
            _settle(futures[i], exc=exc)

    def prefetch(self, key: str, size: int, start: int, end: int, fetch: Fetch) -> None:
        """Fetch the uncached blocks of ``[start, end)`` in the background.

        The blocks are claimed (single flight) before this returns, so a read that arrives
        meanwhile waits for these requests instead of sending its own. Errors are left to reads.
        """
        end = min(end, size)
        if start >= end or self._closed:
            return
        bs = self.block_size
        absent, on_disk = [], []
        cells: dict[int, list[tuple[int, int]]] = {}
        for i in range(start // bs, (end - 1) // bs + 1):
            if self.memory.get(key, i) is not None:
                continue
            if self.runs is not None:
                cell = i // self.cell_blocks
                if cell not in cells:
                    cells[cell] = self.runs.runs(key, cell)
                if any(a <= i <= b for a, b in cells[cell]):
                    on_disk.append(i)
                    continue
            absent.append(i)
        if on_disk:  # load them into memory ahead of the reader, off its thread
            self._ahead.submit(self._promote, key, on_disk)
        if absent:
            waits, mine = self._claim(key, absent)
            for piece in _pieces(mine, self.cell_blocks):
                queued = _Queued((key, size, piece, fetch, waits))
                with self._lock:
                    for i in range(piece[0], piece[1] + 1):
                        self._queued[(key, i)] = queued
                queued.task = self._ahead.submit(self._run_queued, queued)

    def _run_queued(self, queued: _Queued) -> None:
        self._unqueue(queued)
        self._fetch_run(*queued.job)

    def _unqueue(self, queued: _Queued) -> None:
        key, _, (first, last), _, _ = queued.job
        with self._lock:
            for i in range(first, last + 1):
                if self._queued.get((key, i)) is queued:
                    del self._queued[(key, i)]

    def _take_over(self, key: str, indices: list[int]) -> list[Job]:
        """The queued read-ahead pieces holding ``indices`` that had not started: now the
        caller's to fetch."""
        taken: list[Job] = []
        for i in indices:
            with self._lock:
                queued = self._queued.get((key, i))
            if queued is not None and queued.task is not None and queued.task.cancel():
                self._unqueue(queued)
                taken.append(queued.job)
        return taken

    def _promote(self, key: str, indices: list[int]) -> None:
        for i in indices:
            if self.memory.get(key, i) is None:
                self._lookup(key, i)  # loads the whole run file holding block i

    def _claim(self, key: str, indices: list[int]) -> tuple[dict[int, Future[memoryview]], list[int]]:
        """Futures for ``indices``; the ones this caller must fetch are returned in ``mine``."""
        mine: list[int] = []
        waits: dict[int, Future[memoryview]] = {}
        with self._lock:
            for i in indices:
                fut = self._inflight.get((key, i))
                if fut is None:
                    fut = self._inflight[(key, i)] = Future()
                    if self._closed:
                        fut.set_exception(CacheClosed("the block cache is closed"))
                    else:
                        mine.append(i)
                waits[i] = fut
        return waits, mine

    def _lookup(self, key: str, index: int,
                listed: dict[int, list[tuple[int, int]]] | None = None) -> memoryview | None:
        """Block ``index`` from memory, else from a run file; ``listed``: the runs of the cells
        this read listed already (a read of many blocks checks each cell's directory once)."""
        data = self.memory.get(key, index)
        if data is not None:
            self.stats.add("memory_hits")
            return data
        self.stats.add("memory_misses")
        if self.runs is None:
            return None
        cell = index // self.cell_blocks
        if listed is not None:
            if cell not in listed:
                listed[cell] = self.runs.runs(key, cell)
            runs = [r for r in listed[cell] if r[0] <= index <= r[1]]
        else:
            runs = self.runs.holding(key, index)
        got = self.runs.load(key, index, runs) if runs else None
        if got is None:
            self.stats.add("disk_misses")
            return None
        self.stats.add("disk_hits")
        first, blocks = got
        self.memory.put_run(key, first, blocks)  # the whole run file was read: keep all of it
        offset = (index - first) * self.block_size
        return blocks[offset: offset + self.block_size]

    def _fetch_run(self, key: str, size: int, run: tuple[int, int], fetch: Fetch,
                   futures: dict[int, Future[memoryview]]) -> None:
        first, last = run
        bs = self.block_size
        start, end = first * bs, min(size, (last + 1) * bs)
        # The response arrives in chunks that the client joins into one body: two copies exist
        # side by side for a moment. The body itself is kept as is (blocks are views of it).
        self.memory.reserve(2 * (end - start))
        try:
            data = fetch(start, end)
            if len(data) != end - start:
                raise SourceError(f"asked for {end - start} bytes, received {len(data)}")
        except BaseException as exc:
            self.memory.reserve(-2 * (end - start))
            with self._lock:
                for i in range(first, last + 1):
                    self._inflight.pop((key, i), None)
            for i in range(first, last + 1):
                _settle(futures[i], exc=exc)
            return
        self.memory.put_run(key, first, data)
        self.memory.reserve(-2 * (end - start))
        with self._lock:
            for i in range(first, last + 1):
                self._inflight.pop((key, i), None)
            # Decided before the readers are served: a close() right after them still waits
            # for this piece to be queued, and its writes to finish.
            keep = self._writer is not None and not self._closed
            self._queueing += keep
        view = memoryview(data).cast("B")
        for i in range(first, last + 1):
            _settle(futures[i], view[(i - first) * bs: (i - first + 1) * bs])
        if keep:
            # A piece waiting to be written is held even once the LRU dropped it: the cap
            # covers it until it is written (the disk may be a few pieces behind).
            self.memory.reserve(len(data))
            try:
                self._writes.put((key, first, data), timeout=self.timeout)
            except queue.Full:
                self.memory.reserve(-len(data))
                log.warning("disk cache: writes fell %g s behind; a piece is not kept", self.timeout)
            finally:
                with self._lock:
                    self._queueing -= 1
                    self._all_queued.notify_all()

    def _write_runs(self) -> None:
        while (item := self._writes.get()) is not None:
            try:
                self.runs.save(*item)  # type: ignore[union-attr]
            except OSError as exc:
                log.warning("disk cache write failed: %s", exc)
            finally:
                self.memory.reserve(-len(item[2]))

    def close(self) -> None:
        """Stop: every waiting read fails with :class:`CacheClosed`; queued disk writes finish."""
        with self._lock:
            self._closed = True
            waiting = list(self._inflight.values())
            self._inflight.clear()
        for fut in waiting:
            _settle(fut, exc=CacheClosed("the block cache is closed"))
        self._requests.shutdown(wait=False, cancel_futures=True)
        self._ahead.shutdown(wait=False, cancel_futures=True)
        if self._writer is not None:
            with self._lock:
                self._all_queued.wait_for(lambda: not self._queueing, self.timeout)
            self._writes.put(None)
            self._writer.join(self.timeout)
            if self._writer.is_alive():
                log.warning("disk cache: writes still running at close")
                return  # the store stays open for them
        if self.disk is not None:
            self.disk.close()


def _settle(fut: Future[memoryview], result: memoryview | None = None,
            exc: BaseException | None = None) -> None:
    """Complete ``fut`` unless close() already failed it."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        pass


def _pieces(indices: list[int], cell: int) -> Iterator[tuple[int, int]]:
    """Contiguous runs (first, last) of sorted ``indices``, none crossing a multiple of ``cell``."""
    if not indices:
        return
    first = prev = indices[0]
    for i in indices[1:]:
        if i != prev + 1 or i % cell == 0:
            yield first, prev
            first = i
        prev = i
    yield first, prev
