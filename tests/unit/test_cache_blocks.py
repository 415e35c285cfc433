"""The block cache alone, over a local fetch function: run files, single flight, bounded waits."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.stores import FaultyStore, Hang, MemoryStore, always

from zipmount.cache import BLOCK_SIZE, MAX_REQUEST, BlockCache, CacheClosed, FileStore, MemoryTier, RunFiles
from zipmount.errors import SourceError
from zipmount.stats import Stats

BS = BLOCK_SIZE
KEY = "c0ffee" * 6
DATA = os.urandom(3 * 2 * 1024 * 1024 + 1000)  # three cells and a bit


class Source:
    """A local object: counts the ranges asked for; ``fail`` makes every fetch raise."""

    def __init__(self, data: bytes = DATA) -> None:
        self.data = data
        self.calls: list[tuple[int, int]] = []
        self.fail = False
        self.lock = threading.Lock()

    def __call__(self, start: int, end: int) -> bytes:
        with self.lock:
            self.calls.append((start, end))
        if self.fail:
            raise SourceError("the endpoint is gone")
        return self.data[start:end]


def cache_over(root: Path | None, memory: int = 64 << 20, **kw) -> BlockCache:
    store = FileStore(root, 256 << 20) if root is not None else None
    return BlockCache(memory, store, Stats(), **kw)


def run_paths(root: Path) -> list[Path]:
    return sorted(p for p in (root / "files").rglob("*.run"))


def test_a_read_returns_the_bytes_asked_for_from_every_tier(tmp_path):
    src = Source()
    cache = cache_over(tmp_path)
    for start, end in [(0, 1), (BS - 3, BS + 3), (5, 3 * BS + 7), (len(DATA) - 10, len(DATA) + 99)]:
        assert cache.read(KEY, len(DATA), start, end, src) == DATA[start:end]
    assert cache.read(KEY, len(DATA), 0, len(DATA), src) == DATA
    cache.close()  # waits for the disk writes
    src.fail = True
    again = cache_over(tmp_path)
    assert again.read(KEY, len(DATA), 0, len(DATA), src) == DATA  # from the run files alone
    assert again.stats.counters["disk_hits"] > 0
    again.close()


def test_a_request_never_crosses_a_cell_so_other_processes_find_its_file(tmp_path):
    src = Source()
    cache = cache_over(tmp_path)
    cell = cache.cell_blocks * BS
    cache.read(KEY, len(DATA), cell - BS, cell + BS, src)
    cache.close()
    assert sorted(src.calls) == [(cell - BS, cell), (cell, cell + BS)]
    assert len(run_paths(tmp_path)) == 2 and len({p.parent for p in run_paths(tmp_path)}) == 2


def test_overlapping_run_files_both_serve_their_blocks(tmp_path):
    store = FileStore(tmp_path, 256 << 20)
    runs = RunFiles(store, BS, 32)
    runs.save(KEY, 0, DATA[0: 21 * BS])  # blocks 0-20
    runs.save(KEY, 5, DATA[5 * BS: 10 * BS])  # blocks 5-9, inside the first
    src = Source()
    src.fail = True
    cache = BlockCache(64 << 20, store, Stats())
    for i in (0, 7, 12, 20):  # 12: after the inner run's end, held by the outer one only
        assert cache.read(KEY, len(DATA), i * BS, (i + 1) * BS, src) == DATA[i * BS: (i + 1) * BS]
    assert src.calls == []
    cache.close()


def test_a_corrupt_run_file_is_dropped_and_fetched_again(tmp_path):
    src = Source()
    cache = cache_over(tmp_path)
    cache.read(KEY, len(DATA), 0, 4 * BS, src)
    cache.close()
    (path,) = run_paths(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(raw)
    again = cache_over(tmp_path)
    assert again.read(KEY, len(DATA), 0, 4 * BS, src) == DATA[: 4 * BS]
    assert len(src.calls) == 2
    again.close()
    (fresh,) = run_paths(tmp_path)
    assert fresh.read_bytes() != bytes(raw)  # the corrupt copy was replaced by a good one

    fresh.write_bytes(fresh.read_bytes()[:100])  # cut short
    third = cache_over(tmp_path)
    assert third.read(KEY, len(DATA), 0, 4 * BS, src) == DATA[: 4 * BS]
    assert len(src.calls) == 3
    third.close()


_EMFILE_CHILD = """
import os, sys, resource
from zipmount.cache import BlockCache, FileStore
from zipmount.stats import Stats
root, key, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(sys.argv[4], "rb").read()
fetched = []
def fetch(s, e):
    fetched.append((s, e))
    return data[s:e]
cache = BlockCache(1 << 20, FileStore(__import__("pathlib").Path(root), 1 << 30), Stats())
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
fds = []
try:
    while True:
        fds.append(os.open("/dev/null", os.O_RDONLY))
except OSError as exc:
    assert exc.errno == 24, exc  # EMFILE: no descriptor left for the run file
assert cache.read(key, size, 0, 4096, fetch) == data[:4096]
print("fetched while out of descriptors:", len(fetched))
cache.close()  # its disk write fails too (EMFILE): logged, nothing else
for fd in fds:
    os.close(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
"""


def test_running_out_of_file_descriptors_never_deletes_cached_data(tmp_path):
    src = Source()
    cache = cache_over(tmp_path / "cache")
    cache.read(KEY, len(DATA), 0, 4 * BS, src)
    cache.close()
    before = [(p, p.read_bytes()) for p in run_paths(tmp_path / "cache")]
    assert len(before) == 1
    (tmp_path / "data").write_bytes(DATA)
    r = subprocess.run([sys.executable, "-c", _EMFILE_CHILD, str(tmp_path / "cache"), KEY,
                        str(len(DATA)), str(tmp_path / "data")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "fetched while out of descriptors: 1" in r.stdout  # a miss, served by a request
    (path, content), = before
    assert path.read_bytes() == content


def test_concurrent_misses_cost_one_request():
    gate = threading.Event()
    src = Source()

    def slow(start: int, end: int) -> bytes:
        gate.wait(10)
        return src(start, end)

    cache = cache_over(None)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.read(KEY, len(DATA), 0, 3 * BS, slow)))
               for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join()
    assert results == [DATA[: 3 * BS]] * 6
    assert len(src.calls) == 1
    cache.close()


def test_a_read_waiting_for_another_reads_request_gives_up_after_the_timeout():
    gate = threading.Event()

    def stuck(start: int, end: int) -> bytes:
        gate.wait(30)
        return DATA[start:end]

    cache = cache_over(None, timeout=0.5)
    owner = threading.Thread(target=cache.read, args=(KEY, len(DATA), 0, BS, stuck))
    owner.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="no data within 0.5 s"):
        cache.read(KEY, len(DATA), 0, BS, stuck)
    assert 0.4 < time.monotonic() - t0 < 2
    gate.set()
    owner.join()
    cache.close()


def test_a_read_whose_own_piece_is_queued_behind_other_reads_ends_within_its_deadline():
    """Issue 15, item 5: a 20-byte read across a cell boundary sends its second piece to the
    shared fetch pool, queued behind other reads' pieces that hang; it must end (data or
    "no data within 1 s") within its own deadline, not when the queue drains."""
    inner = MemoryStore()
    slow = [inner.put(f"bkt/slow{n}", DATA) for n in range(4)]
    quick = inner.put("bkt/quick", DATA)
    store = FaultyStore(inner, timeout=600)
    cache = cache_over(None, fetch_threads=2, timeout=1.0)
    outcomes: dict[str, bytes | Exception] = {}

    def read(obj, start: int, end: int) -> None:
        try:
            data = cache.read(obj.path, obj.size, start, end, lambda a, b: store.read(obj, a, b))
            outcomes[obj.path] = data
        except SourceError as exc:
            outcomes[obj.path] = exc

    with store.fault(always(Hang(), match=lambda c: c.is_read and "slow" in c.path)):
        # Each reads four cells: the first piece on its own thread, three queued in the pool.
        others = [threading.Thread(target=read, args=(obj, 0, len(DATA))) for obj in slow]
        for t in others:
            t.start()
        deadline = time.monotonic() + 60
        while len(store.log()) < len(others) + 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # until every read and both pool threads hang
        assert len(store.log()) == len(others) + 2
        small = threading.Thread(target=read, args=(quick, MAX_REQUEST - 10, MAX_REQUEST + 10))
        small.start()
        small.join(1.0 + 30)  # its deadline, plus any scheduling delay
        assert not small.is_alive(), "the read waited for its queued piece without a deadline"
    for t in others:
        t.join(30)
    small.join(30)
    got = outcomes["bkt/quick"]
    assert got == DATA[MAX_REQUEST - 10: MAX_REQUEST + 10] or \
        isinstance(got, SourceError) and "no data within 1 s" in str(got)
    assert all(isinstance(outcomes[o.path], SourceError) for o in slow)  # hung, then released
    cache.close()


def test_closing_the_cache_wakes_every_waiting_read():
    gate = threading.Event()

    def stuck(start: int, end: int) -> bytes:
        gate.wait(30)
        return DATA[start:end]

    cache = cache_over(None, timeout=60)
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            cache.read(KEY, len(DATA), 0, BS, stuck)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    owner = threading.Thread(target=waiter)  # it fetches; the others wait for it
    owner.start()
    time.sleep(0.1)
    waiters = [threading.Thread(target=waiter) for _ in range(4)]
    for t in waiters:
        t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    cache.close()
    for t in waiters:
        t.join(5)
    assert time.monotonic() - t0 < 2
    assert len(errors) == 4 and all(isinstance(e, CacheClosed) for e in errors), errors
    gate.set()
    owner.join(5)
    assert len(errors) == 5 and isinstance(errors[-1], CacheClosed)
    with pytest.raises(CacheClosed):
        cache.read(KEY, len(DATA), 5 * BS, 6 * BS, stuck)


def test_a_short_response_is_an_error_and_is_not_cached():
    cache = cache_over(None)
    with pytest.raises(SourceError, match="received"):
        cache.read(KEY, len(DATA), 0, 2 * BS, lambda s, e: DATA[s: e - 1])
    src = Source()
    assert cache.read(KEY, len(DATA), 0, 2 * BS, src) == DATA[: 2 * BS] and len(src.calls) == 1
    cache.close()


def test_the_memory_tier_counts_whole_runs_and_evicts_them_whole():
    mem = MemoryTier(80 * BS, BS)
    mem.reserved = 70 * BS  # 10 blocks left for the LRU
    mem.put_run("a", 0, DATA[: 4 * BS])
    mem.put_run("a", 2, DATA[2 * BS: 8 * BS])  # overlaps the first run
    assert mem.used == 10 * BS
    assert bytes(mem.get("a", 1)) == DATA[BS: 2 * BS]
    assert bytes(mem.get("a", 3)) == DATA[3 * BS: 4 * BS]
    mem.put_run("b", 0, DATA[: 4 * BS])  # evicts the least recently used run: the first
    assert mem.used == 10 * BS
    assert mem.get("a", 0) is None and mem.get("a", 1) is None
    for i in (2, 3, 7):  # blocks 2 and 3 were served by the second run since it came in
        assert bytes(mem.get("a", i)) == DATA[i * BS: (i + 1) * BS]
    assert bytes(mem.get("b", 3)) == DATA[3 * BS: 4 * BS]


def test_a_read_takes_over_a_queued_read_ahead_piece_instead_of_waiting_behind_it():
    gate = threading.Event()
    src = Source()

    def blocked(start: int, end: int) -> bytes:
        gate.wait(30)
        return src(start, end)

    cache = cache_over(None, fetch_threads=4, timeout=60)  # two read-ahead threads
    cell = cache.cell_blocks * BS
    cache.prefetch(KEY, len(DATA), 0, 2 * cell, blocked)  # two pieces: both threads stuck
    cache.prefetch(KEY, len(DATA), 2 * cell, 3 * cell, src)  # a third, queued behind them
    time.sleep(0.2)
    t0 = time.monotonic()
    assert cache.read(KEY, len(DATA), 2 * cell, 2 * cell + 100, src) == DATA[2 * cell: 2 * cell + 100]
    assert time.monotonic() - t0 < 5
    assert [c for c in src.calls if c[0] == 2 * cell] == [(2 * cell, 3 * cell)]  # once, whole
    gate.set()
    cache.close()


def test_a_run_large_next_to_a_small_memory_cap_is_kept_block_by_block():
    mem = MemoryTier(16 * BS, BS)
    mem.reserved = 0
    mem.put_run("a", 0, DATA[: 4 * BS])  # a quarter of the cap: kept block by block
    mem.put_run("b", 0, DATA[: 14 * BS])
    assert mem.used <= 16 * BS
    assert bytes(mem.get("b", 13)) == DATA[13 * BS: 14 * BS]
    assert mem.get("a", 0) is None and mem.get("a", 3) is not None  # evicted one by one, oldest first


def test_pieces_waiting_for_the_disk_count_against_the_memory_cap(tmp_path, monkeypatch):
    # the disk falls behind: what waits to be written is held even once the LRU dropped it
    started, release = threading.Event(), threading.Event()
    save = RunFiles.save

    def slow_save(self, *args):
        started.set()
        release.wait(30)
        save(self, *args)

    monkeypatch.setattr(RunFiles, "save", slow_save)
    src = Source()
    cache = cache_over(tmp_path, memory=64 << 20)  # a queue of 4 pieces: 1/8 of the cap
    piece = MAX_REQUEST // 4
    try:
        headroom = cache.memory.reserved
        for start in range(0, 5 * piece, piece):  # one being written, four queued
            assert cache.read(KEY, len(DATA), start, start + piece, src) == DATA[start: start + piece]
        assert started.wait(10)
        assert cache.memory.reserved - headroom == 5 * piece, "waiting pieces not counted"
        assert cache.memory.used + cache.memory.reserved <= cache.memory.capacity
    finally:
        release.set()
        cache.close()  # waits for the disk writes
    assert cache.memory.reserved == headroom, "written pieces still counted"
    assert len(run_paths(tmp_path)) == 5
