"""Read-ahead policy of :class:`zipmount.archive.Prefetcher`, driven by read offsets alone.

The prefetcher only decides *what* to fetch ahead; the ranges it asks for are recorded here
instead of being fetched (the cache and network paths are covered by the end-to-end tests).
"""

from __future__ import annotations

import random

from zipmount.archive import READAHEAD_MAX, READAHEAD_MIN, Prefetcher

MiB = 1024 * 1024
CHUNK = 200_000
SIZE = 1024 * MiB


class Recorder:
    """Stands in for a CachedObject: keeps the ranges asked for (``readahead_max``: the
    window the prefetcher under test is given)."""

    def __init__(self, readahead_max: int = READAHEAD_MAX) -> None:
        self.asked: list[tuple[int, int]] = []
        self.readahead_max = readahead_max

    def prefetch(self, start: int, end: int) -> None:
        self.asked.append((start, end))


def _walk(p: Prefetcher, start: int, count: int) -> None:
    for i in range(count):
        offset = start + i * CHUNK
        p.observe(offset, offset + CHUNK, SIZE)


def test_random_reads_fetch_nothing_ahead():
    rec = Recorder()
    p = Prefetcher(rec, rec.readahead_max)
    rng = random.Random(7)
    for _ in range(200):
        offset = rng.randrange(0, SIZE - CHUNK)
        p.observe(offset, offset + CHUNK, SIZE)
    assert rec.asked == []


def test_a_walk_is_fetched_ahead_with_a_window_that_grows_to_the_cap():
    rec = Recorder()
    p = Prefetcher(rec, rec.readahead_max)
    _walk(p, 0, 2000)  # 400 MB, read chunk after chunk
    assert rec.asked, "a sequential walk was not prefetched"
    sizes = [end - start for start, end in rec.asked]
    assert sizes[0] <= 4 * READAHEAD_MIN
    assert max(sizes) <= READAHEAD_MAX + 4 * CHUNK
    assert max(sizes) >= READAHEAD_MAX // 2, sizes
    # Each range continues the previous one: nothing is asked for twice.
    for (_, prev_end), (start, _) in zip(rec.asked, rec.asked[1:], strict=False):
        assert start == prev_end
    # It stays ahead of the reader without running far past it.
    last_read = 2000 * CHUNK
    assert last_read <= rec.asked[-1][1] <= last_read + READAHEAD_MAX + CHUNK


def test_a_walk_that_jumps_is_followed_at_once():
    rec = Recorder()
    p = Prefetcher(rec, rec.readahead_max)
    _walk(p, 0, 40)
    before = len(rec.asked)
    jump = 500 * MiB
    p.observe(jump, jump + CHUNK, SIZE)
    assert len(rec.asked) == before + 1, "the jump was not followed"
    start, end = rec.asked[-1]
    assert start == jump and end > jump + CHUNK
    # The walk goes on from there: later reads extend the new region.
    _walk(p, jump + CHUNK, 100)
    assert rec.asked[-1][1] > jump + 100 * CHUNK


def test_after_a_jump_random_reads_close_the_window():
    rec = Recorder()
    p = Prefetcher(rec, rec.readahead_max)
    _walk(p, 0, 40)
    rng = random.Random(3)
    for _ in range(100):
        offset = rng.randrange(0, SIZE - CHUNK)
        p.observe(offset, offset + CHUNK, SIZE)
    # At most the first jump is followed; then the reads are seen to be random.
    followed = [r for r in rec.asked if r[0] >= 40 * CHUNK + READAHEAD_MAX]
    assert len(followed) <= 1, followed


def test_the_window_stays_within_the_memory_cache_share():
    rec = Recorder(readahead_max=2 * MiB)
    p = Prefetcher(rec, rec.readahead_max)
    _walk(p, 0, 500)
    assert rec.asked and max(end - start for start, end in rec.asked) <= 2 * MiB + 4 * CHUNK


def test_never_past_the_limit():
    rec = Recorder()
    p = Prefetcher(rec, rec.readahead_max)
    limit = 30 * MiB
    for i in range(limit // CHUNK):
        p.observe(i * CHUNK, (i + 1) * CHUNK, limit)
    assert rec.asked and all(end <= limit for _, end in rec.asked)
