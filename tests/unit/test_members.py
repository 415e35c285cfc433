"""Member reads over local archive files, without FUSE: bounded decompression of every method,
checkpoints and the window for out-of-order reads, stored-member bounds and CRCs, spill files.

Archives are written byte by byte (tests/robust/zips.py) with payloads compressed here by the
standard library, and read through the real layers: ``Source.for_url(local path)`` ->
``BlockCache`` -> ``CachedObject`` -> ``Archive``.
"""

from __future__ import annotations

import bz2
import contextlib
import lzma
import os
import random
import resource
import signal
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from robust.zips import RawMember, raw_zip

from zipmount.archive import Archive, CachedObject, Decoding
from zipmount.archive.decompress import DecoderBudget, DecoderMemoryBusy
from zipmount.archive.decompress import checkpoints as ck
from zipmount.archive.decompress import streams as st
from zipmount.archive.decompress.cells import CELL, FILL_AFTER
from zipmount.archive.layout import WHOLE_MEMBER_MAX
from zipmount.archive.members import SPILL_MIN
from zipmount.cache import BlockCache, DiskTier
from zipmount.errors import ArchiveError
from zipmount.source import Source, StorageOptions
from zipmount.stats import Stats

MiB = 2**20
DEFLATE, BZIP2, LZMA = 8, 12, 14
METHODS = [DEFLATE, BZIP2, LZMA]


def text(seed: int, size: int) -> bytes:
    """Compressible but irregular bytes (words drawn at random)."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnop") for _ in range(rng.randint(2, 9)))
             for _ in range(400)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=4096)) + b"\n"
    return bytes(out[:size])


def compress(method: int, chunks: Iterable[bytes]) -> bytes:
    """A zip member payload of ``method`` for the concatenated ``chunks``."""
    if method == DEFLATE:
        c = zlib.compressobj(1, zlib.DEFLATED, -15)
    elif method == BZIP2:
        c = bz2.BZ2Compressor(9)
    else:
        c = lzma.LZMACompressor(lzma.FORMAT_RAW, filters=[
            {"id": lzma.FILTER_LZMA1, "preset": 0, "dict_size": 8 * MiB, "lc": 3, "lp": 0, "pb": 2}])
    body = b"".join(c.compress(chunk) for chunk in chunks) + c.flush()
    if method == LZMA:  # zip's LZMA header: version 9.4, 5 bytes of properties
        body = struct.pack("<BBH", 9, 4, 5) + struct.pack("<BI", (2 * 5 + 0) * 9 + 3, 8 * MiB) + body
    return body


def member(name: str, method: int, plain: bytes, **kw) -> RawMember:
    return RawMember(name.encode(), plain, method=method, payload=compress(method, [plain]), **kw)


def bomb(name: str, method: int, size: int) -> RawMember:
    """``size`` zero bytes, compressed without ever holding them."""
    zeros = bytes(MiB)
    crc = 0
    for _ in range(size // MiB):
        crc = zlib.crc32(zeros, crc)
    return RawMember(name.encode(), method=method, payload=compress(method, [zeros] * (size // MiB)),
                     crc=crc, file_size=size)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@contextlib.contextmanager
def opened(path: Path, disk_root: Path | None = None, disk_size: int = 256 * MiB,
           memory: int = 32 * MiB, decoding: Decoding | None = None) -> Iterator[Archive]:
    """The archive at ``path`` through the real layers (``decoding``: shared with another
    archive, as an engine shares it; default a fresh one)."""
    stats = Stats()
    source, inner = Source.for_url(str(path), StorageOptions(timeout=10, retries=0), stats)
    disk = DiskTier(disk_root, disk_size) if disk_root is not None else None
    cache = BlockCache(memory, disk, stats)
    try:
        yield Archive.open(CachedObject(source, source.stat(inner), cache), disk,
                           decoding or Decoding())
    finally:
        cache.close()  # closes the disk tier too


def write_zip(workdir: Path, members: list[RawMember], name: str = "a.zip") -> Path:
    path = workdir / name
    path.write_bytes(raw_zip(members))
    return path


def read_all(archive: Archive, name: str, step: int = 128 * 1024) -> bytes:
    reader = archive.reader(archive.entries[name])
    try:
        out, offset = [], 0
        while chunk := reader.read(offset, step):
            out.append(chunk)
            offset += len(chunk)
        return b"".join(out)
    finally:
        reader.close()


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# -- decompression ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_every_method_reads_back_exactly_in_order_out_of_order_and_at_random(workdir, method):
    plain = text(method, 3 * MiB + 12345)
    with opened(write_zip(workdir, [member("m", method, plain)])) as archive:
        assert read_all(archive, "m") == plain
        reader = archive.reader(archive.entries["m"])
        try:
            # the kernel's concurrent readahead: 128 KiB READs, neighbours swapped
            offsets = list(range(0, len(plain), 128 * 1024))
            for i in range(0, len(offsets) - 1, 2):
                offsets[i], offsets[i + 1] = offsets[i + 1], offsets[i]
            for offset in offsets:
                assert reader.read(offset, 128 * 1024) == plain[offset: offset + 128 * 1024]
            rng = random.Random(method)
            for _ in range(20 if method == DEFLATE else 4):
                offset = rng.randrange(len(plain))
                assert reader.read(offset, 4096) == plain[offset: offset + 4096], offset
            assert reader.read(len(plain) - 10, 100) == plain[-10:]
            assert reader.read(len(plain), 100) == b""
        finally:
            reader.close()


@pytest.mark.parametrize("method", [BZIP2, LZMA, DEFLATE])
def test_one_read_of_a_compression_bomb_takes_bounded_memory(workdir, method):
    size = 64 * MiB
    # deflate keeps the cells it decodes on the way to 40 MiB: bounded by the memory cap (8 MiB)
    with opened(write_zip(workdir, [bomb("zeros", method, size)]), memory=8 * MiB) as archive:
        reader = archive.reader(archive.entries["zeros"])
        try:
            reset_peak_rss()
            before = peak_rss()
            assert reader.read(0, 128 * 1024) == bytes(128 * 1024)
            assert reader.read(40 * MiB, 128 * 1024) == bytes(128 * 1024)  # forward skip
            grew = peak_rss() - before
        finally:
            reader.close()
    # zipfile's bzip2/LZMA streams took the whole member (+64 MiB) on the first read
    assert grew < 24 * MiB, f"peak RSS grew {grew / MiB:.0f} MiB for two 128 KiB reads"


def test_an_lzma_dictionary_bigger_than_the_member_is_clamped_and_a_huge_one_refused(workdir):
    plain = text(1, 100_000)
    c = lzma.LZMACompressor(lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA1, "dict_size": MiB}])
    raw = c.compress(plain) + c.flush()
    props = struct.pack("<BBHBI", 9, 4, 5, 93, 0xFFFFFFFF)  # claims a 4 GiB dictionary
    huge = 2**31
    members = [RawMember(b"clamped", plain, method=LZMA, payload=props + raw),
               RawMember(b"huge", method=LZMA, payload=props + raw, file_size=huge)]
    with opened(write_zip(workdir, members)) as archive:
        assert read_all(archive, "clamped") == plain
        with pytest.raises(ArchiveError, match="dictionary"):
            archive.reader(archive.entries["huge"]).read(0, 4096)


@pytest.mark.parametrize("method", METHODS)
def test_a_crc_mismatch_fails_the_read_that_completes_the_member(workdir, method):
    plain = text(2, 3 * MiB)
    with opened(write_zip(workdir, [member("bad", method, plain, crc=zlib.crc32(plain) ^ 1)])
                ) as archive:
        reader = archive.reader(archive.entries["bad"])
        try:
            assert reader.read(0, MiB) == plain[:MiB]
            with pytest.raises(ArchiveError, match="CRC"):
                reader.read(MiB, 2 * MiB)
            with pytest.raises(ArchiveError, match="CRC"):  # also after a restart from a checkpoint
                reader.read(len(plain) - 10, 10)
        finally:
            reader.close()


@pytest.mark.parametrize("method", METHODS)
def test_data_shorter_than_declared_or_corrupt_is_an_archive_error(workdir, method):
    plain = text(3, 200_000)
    good = compress(method, [plain])
    members = [member("short", method, plain, file_size=len(plain) + 1),
               RawMember(b"truncated", plain, method=method, payload=good[: len(good) // 2]),
               RawMember(b"garbage", plain, method=method,
                         payload=good[:9] + bytes(200) + good[209:])]
    with opened(write_zip(workdir, members)) as archive:
        for name in ("short", "truncated", "garbage"):
            with pytest.raises(ArchiveError):
                read_all(archive, name)


def test_random_reads_of_a_deflated_member_start_from_its_checkpoints(workdir):
    plain = text(4, 12 * MiB)
    with opened(write_zip(workdir, [member("big", DEFLATE, plain)])) as archive:
        first = archive.reader(archive.entries["big"])
        assert first.read(len(plain) - 4096, 4096) == plain[-4096:]  # decodes all, checkpoints
        first.close()
        rng = random.Random(4)
        entry = archive.entries["big"]
        for _ in range(30):
            # A new stream (as a new handle's): it starts from the member's checkpoints.
            stream = st.MemberStream(archive.view(entry), archive.decoding.checkpoints, None,
                                     archive.decoding.budget)
            offset = rng.randrange(len(plain))
            assert stream.read(offset, 4096) == plain[offset: offset + 4096]
            assert stream.stream is not None
            assert offset - stream.stream.started_at <= ck.CHECKPOINT_EVERY + st.PIECE, \
                f"decompressed {offset - stream.stream.started_at} bytes to reach {offset}"
            stream.close()


def test_a_random_read_fetches_the_input_up_to_the_next_checkpoint_at_once(workdir):
    plain = random.Random(10).randbytes(64 * MiB)  # over WHOLE_MEMBER_MAX: not fetched at open
    path = write_zip(workdir, [member("big", DEFLATE, plain)])
    decoding = Decoding()  # one engine's: its checkpoints outlive a block cache's contents
    with opened(path, decoding=decoding) as archive:
        assert read_all(archive, "big") == plain  # makes the checkpoints
    with opened(path, memory=256 * MiB, decoding=decoding) as archive:  # a fresh block cache
        entry = archive.entries["big"]
        member_version = archive.member_version(entry)
        counters = archive.cached.cache.stats.counters
        needed = 0
        rng = random.Random(10)
        reads = 6
        for _ in range(reads):
            offset = rng.randrange(len(plain) - ck.CHECKPOINT_EVERY)
            start = decoding.checkpoints.nearest(member_version, offset)
            end = decoding.checkpoints.following(member_version, offset)
            needed += (end.in_pos if end else entry.compress_size) - (start.in_pos if start else 0)
            needed += 2 * 64 * 1024  # whole blocks at both ends
            decoding.park.take(member_version)
            reader = archive.reader(entry)
            assert reader.read(offset, 4096) == plain[offset: offset + 4096]
            reader.close()
        time.sleep(0.5)  # anything fetched ahead has arrived
        fetched, requests = counters["bytes_fetched"], counters["requests"]
    print(f"{reads} random reads: {requests} requests, {fetched} bytes, {needed} between checkpoints")
    # one request for the local header, then the span to the next checkpoint at once (up to 3
    # requests of at most 2 MiB, in parallel); reading the input 64 KiB at a time until
    # read-ahead guessed the pattern took 4 or more, one after the other
    assert requests <= 1 + reads * 3, f"{requests} requests for {reads} random reads"
    assert fetched <= needed, f"fetched {fetched} bytes for {reads} random reads, {needed} needed"


def test_backward_steps_inside_the_window_reuse_the_stream(workdir):
    plain = text(5, 8 * MiB)
    with opened(write_zip(workdir, [member("m", BZIP2, plain)])) as archive:
        reader = archive.reader(archive.entries["m"])
        try:
            assert reader.read(0, 3 * MiB) == plain[: 3 * MiB]
            stream = reader.stream.stream
            back = 3 * MiB - st.WINDOW + 4096
            assert reader.read(back, 4096) == plain[back: back + 4096]
            assert reader.read(3 * MiB, 4096) == plain[3 * MiB: 3 * MiB + 4096]
            assert reader.stream.stream is stream, "a step back inside the window restarted"
        finally:
            reader.close()


def test_a_new_handle_goes_on_where_the_last_closed_one_stopped(workdir):
    plain = text(9, 4 * MiB)
    with opened(write_zip(workdir, [member("m", LZMA, plain)])) as archive:
        reader = archive.reader(archive.entries["m"])
        assert reader.read(0, MiB) == plain[:MiB]
        stream = reader.stream.stream
        reader.close()
        for offset in range(MiB, 3 * MiB, 256 * 1024):  # open, read, close, again and again
            reader = archive.reader(archive.entries["m"])
            assert reader.read(offset, 4096) == plain[offset: offset + 4096]
            assert reader.stream.stream is stream, f"restarted from the start for {offset}"
            reader.close()


def test_checkpoints_stay_within_their_budget(workdir):
    store = ck.CheckpointStore(budget=8 * ck.CHECKPOINT_COST)
    plain = text(6, 12 * MiB)
    with opened(write_zip(workdir, [member("a", DEFLATE, plain), member("b", DEFLATE, plain)])
                ) as archive:
        for name in ("a", "b"):
            entry = archive.entries[name]
            stream = st.MemberStream(archive.view(entry), store, None, DecoderBudget())
            assert stream.read(len(plain) - 10, 10) == plain[-10:]
            assert store.used <= store.budget
        assert store.nearest(archive.member_version(archive.entries["b"]), len(plain)) \
            is not None  # the most recent member is kept


def lzma_member(name: str, plain: bytes, dict_size: int) -> RawMember:
    """An LZMA member whose header asks for a ``dict_size`` dictionary (what the decoder takes)."""
    c = lzma.LZMACompressor(lzma.FORMAT_RAW, filters=[
        {"id": lzma.FILTER_LZMA1, "preset": 0, "dict_size": dict_size, "lc": 3, "lp": 0, "pb": 2}])
    body = c.compress(plain) + c.flush()
    head = struct.pack("<BBH", 9, 4, 5) + struct.pack("<BI", (2 * 5 + 0) * 9 + 3, dict_size)
    return RawMember(name.encode(), plain, method=LZMA, payload=head + body)


def test_many_open_lzma_handles_stay_within_one_decoder_budget(workdir):
    # 12 handles of members that each need an 8 MiB dictionary (filled: every handle reads past
    # it), all open at once, read in turns: without one budget they held ~12 x 10 MiB.
    plains = [text(20 + i, 10 * MiB) for i in range(12)]
    path = write_zip(workdir, [lzma_member(f"m{i}", p, 8 * MiB) for i, p in enumerate(plains)])
    budget = DecoderBudget(capacity=24 * MiB)
    with opened(path, decoding=Decoding(budget=budget)) as archive:
        readers = [archive.reader(archive.entries[f"m{i}"]) for i in range(12)]
        reset_peak_rss()
        before = peak_rss()
        try:
            for offset in (9 * MiB, 9 * MiB + 300_000):
                for plain, reader in zip(plains, readers, strict=True):
                    assert reader.read(offset, 4096) == plain[offset: offset + 4096]
                    assert budget.used <= budget.capacity
        finally:
            for reader in readers:
                reader.close()
        grew = peak_rss() - before
        assert budget.peak <= budget.capacity
    # The decoders, windows and parked streams are the budget; the slack is for the read
    # buffers, the allocator and the block cache (32 MiB in this test).
    assert grew < budget.capacity + 48 * MiB, f"grew {grew / MiB:.0f} MiB"


class _Holder:
    """A charge holder for the budget: droppable unless busy."""

    def __init__(self, parked: bool, busy: bool = False) -> None:
        self.parked, self.busy, self.dropped = parked, busy, False

    def try_drop(self) -> bool:
        self.dropped = not self.busy
        return self.dropped


def test_the_decoder_budget_drops_parked_streams_first_and_waits_for_busy_ones_with_a_bound():
    budget = DecoderBudget(capacity=10, timeout=0.3)
    open_one, parked = _Holder(parked=False), _Holder(parked=True)
    budget.charge(open_one, 5)
    budget.charge(parked, 5)
    budget.charge(_Holder(parked=False), 5)  # room is made: the parked stream goes first
    assert parked.dropped and not open_one.dropped and budget.used == 10
    busy = DecoderBudget(capacity=10, timeout=0.3)
    busy.charge(_Holder(parked=False, busy=True), 8)  # a read in progress: cannot be dropped
    with pytest.raises(DecoderMemoryBusy):
        busy.charge(_Holder(parked=False), 5)
    assert busy.used == 8 and busy.peak <= busy.capacity
    alone = DecoderBudget(capacity=10)
    alone.charge(_Holder(parked=False), 50)  # one decoder bigger than the budget still runs
    assert alone.used == 50


def test_closed_handles_keep_no_more_than_the_budget_and_the_engine_frees_them(workdir):
    plains = [text(40 + i, 12 * MiB) for i in range(6)]
    path = write_zip(workdir, [lzma_member(f"m{i}", p, 8 * MiB) for i, p in enumerate(plains)])
    decoding = Decoding(budget=DecoderBudget(capacity=24 * MiB))
    with opened(path, decoding=decoding) as archive:
        for i, plain in enumerate(plains):
            reader = archive.reader(archive.entries[f"m{i}"])
            assert reader.read(9 * MiB, 4096) == plain[9 * MiB: 9 * MiB + 4096]
            reader.close()  # parked for the member's next handle, charged to the budget
            assert decoding.budget.used <= decoding.budget.capacity
        assert decoding.budget.used > 0
        decoding.close()
        assert decoding.budget.used == 0
        assert decoding.park.take(archive.member_version(archive.entries["m5"])) is None


# -- decoded cells ------------------------------------------------------------------------------


CELLS_PLAIN = text(14, 12 * MiB + 12345)  # the last cell short
CELLS = -(-len(CELLS_PLAIN) // CELL)


def random_reads(archive: Archive, name: str, plain: bytes, count: int, seed: int,
                 size: int = 4096) -> list[int]:
    """``count`` random reads of ``size`` bytes, each by a new handle (as page faults come);
    returns their offsets."""
    rng = random.Random(seed)
    entry = archive.entries[name]
    offsets = []
    for _ in range(count):
        offset = rng.randrange(len(plain) - size)
        offsets.append(offset)
        reader = archive.reader(entry)
        try:
            assert reader.read(offset, size) == plain[offset: offset + size], offset
        finally:
            reader.close()
    return offsets


def test_random_reads_of_a_deflated_member_decode_each_cell_once(workdir):
    with opened(write_zip(workdir, [member("big", DEFLATE, CELLS_PLAIN)])) as archive:
        counters = archive.cached.cache.stats.counters
        random_reads(archive, "big", CELLS_PLAIN, 200, seed=1)
        # the first phase: the first read far into the member decodes up to it, keeping every
        # cell on the way; a read beyond goes on from there: each byte decoded once
        assert 1 <= counters["cells_decoded"] <= CELLS
        assert counters["cell_bytes_decoded"] <= len(CELLS_PLAIN)
        made = counters["cells_decoded"], counters["cell_bytes_decoded"]
        random_reads(archive, "big", CELLS_PLAIN, 200, seed=2)
        random_reads(archive, "big", CELLS_PLAIN, 50, seed=3, size=100_000)
        assert (counters["cells_decoded"], counters["cell_bytes_decoded"]) == made, \
            "a random read after the first pass decoded again"


def test_a_cell_decoded_on_from_the_last_one_comes_out_of_one_call(workdir):
    # input held back by the call before is topped up: a cell of bytes that compress 2:1 or
    # better is one piece, not two joined
    plain = CELLS_PLAIN[:5 * MiB]
    with opened(write_zip(workdir, [member("mixed", DEFLATE, plain)])) as archive:
        view = archive.view(archive.entries["mixed"])
        stream = st.Stream(view, archive.decoding.checkpoints)
        pieces = []
        while stream.out_pos < len(plain):
            pieces.append(stream.decode(min(len(plain), stream.out_pos + CELL), most=CELL))
        assert b"".join(pieces) == plain
        assert [len(p) for p in pieces[:-1]] == [CELL] * (len(pieces) - 1)


def test_a_member_read_once_at_a_few_offsets_decodes_only_around_them(workdir):
    path = write_zip(workdir, [member("big", DEFLATE, CELLS_PLAIN)])
    decoding = Decoding()
    with opened(path, decoding=decoding) as archive:
        assert read_all(archive, "big") == CELLS_PLAIN  # checkpoints made (kept by the engine)
        assert archive.cached.cache.stats.counters["cells_decoded"] == 0, \
            "a read in order went through the decoded cells"
    with opened(path, decoding=decoding) as archive:  # a fresh block cache
        random_reads(archive, "big", CELLS_PLAIN, 3, seed=4)
        counters = archive.cached.cache.stats.counters
        # each read: its cell and the ones before it since the checkpoint before it
        assert 1 <= counters["cells_decoded"] <= 3 * ck.CHECKPOINT_EVERY // CELL
        assert counters["cell_bytes_decoded"] <= 3 * ck.CHECKPOINT_EVERY


def test_a_reader_walking_over_cells_decoded_before_decodes_nothing(workdir, monkeypatch):
    # a loader's page faults walk on (readahead) over a member a jump already decoded: the
    # kept cells serve them, no stream decodes from a checkpoint again
    with opened(write_zip(workdir, [member("big", DEFLATE, CELLS_PLAIN)]),
                memory=64 * MiB) as archive:
        entry = archive.entries["big"]
        jump = archive.reader(entry)
        last = len(CELLS_PLAIN) - 4096
        assert jump.read(last, 4096) == CELLS_PLAIN[last:]  # decodes every cell on the way
        jump.close()
        decoded = []
        real = st.Stream.decode
        monkeypatch.setattr(st.Stream, "decode",
                            lambda self, stop=None: decoded.append(1) or real(self, stop))
        walker = archive.reader(entry)
        for offset in range(0, len(CELLS_PLAIN), MiB):
            assert walker.read(offset, MiB) == CELLS_PLAIN[offset: offset + MiB], offset
        walker.close()
        assert not decoded, f"{len(decoded)} pieces decoded again"


def test_reads_in_order_arriving_out_of_order_stay_with_the_stream(workdir):
    # the kernel's readahead: 1 MiB READs of a sequential reader, a few in flight at once,
    # answered in any order (here: each group of 4 shuffled)
    with opened(write_zip(workdir, [member("big", DEFLATE, CELLS_PLAIN)])) as archive:
        reader = archive.reader(archive.entries["big"])
        offsets = list(range(0, len(CELLS_PLAIN), MiB))
        rng = random.Random(8)
        for group in range(0, len(offsets), 4):
            batch = offsets[group: group + 4]
            rng.shuffle(batch)
            for offset in batch:
                assert reader.read(offset, MiB) == CELLS_PLAIN[offset: offset + MiB]
        reader.close()
        assert archive.cached.cache.stats.counters["cells_decoded"] == 0


def test_concurrent_random_readers_share_the_decode_of_a_cell(workdir):
    with opened(write_zip(workdir, [member("big", DEFLATE, CELLS_PLAIN)])) as archive:
        entry = archive.entries["big"]
        shared = archive.reader(entry)  # one handle read from every thread, as mmap faults are
        errors: list[str] = []

        def read_at_random(seed: int) -> None:
            rng = random.Random(seed)
            own = archive.reader(entry)
            try:
                for n in range(60):
                    offset = rng.randrange(len(CELLS_PLAIN) - 4096)
                    got = (own if n % 2 else shared).read(offset, 4096)
                    if got != CELLS_PLAIN[offset: offset + 4096]:
                        errors.append(f"wrong bytes at {offset}")
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))
            finally:
                own.close()

        threads = [threading.Thread(target=read_at_random, args=(seed,)) for seed in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        shared.close()
        assert not any(t.is_alive() for t in threads), "a reader hung"
        assert not errors, errors[:5]
        assert 1 <= archive.cached.cache.stats.counters["cells_decoded"] <= CELLS


FILL_PLAIN = text(19, (FILL_AFTER + 2) * ck.CHECKPOINT_EVERY + CELL // 2)


def test_a_member_read_at_random_on_and_on_is_decoded_whole_in_the_background(workdir):
    plain = FILL_PLAIN
    cells = -(-len(plain) // CELL)
    with opened(write_zip(workdir, [member("big", DEFLATE, plain)]), workdir / "cache",
                memory=128 * MiB) as archive:  # every cell stays in memory: each made once
        counters = archive.cached.cache.stats.counters
        reader = archive.reader(archive.entries["big"])
        for stretch in range(1, FILL_AFTER + 1):  # FILL_AFTER reads that make cells on demand
            offset = stretch * ck.CHECKPOINT_EVERY + CELL + 5000
            assert reader.read(offset, 4096) == plain[offset: offset + 4096]
        reader.close()
        deadline = time.monotonic() + 60
        while counters["cells_decoded"] < cells and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the fill is over
        made = counters["cells_decoded"]
        # every cell once (a race between the fill and a reader may make one twice)
        assert cells <= made <= cells + 2, "the rest of the member was not filled"
        assert counters["cell_bytes_decoded"] <= 2 * len(plain)
        random_reads(archive, "big", plain, 100, seed=6)  # new offsets: no decode any more
        assert counters["cells_decoded"] == made


def test_a_member_read_at_a_few_offsets_is_not_filled(workdir):
    with opened(write_zip(workdir, [member("big", DEFLATE, FILL_PLAIN)]), workdir / "cache") \
            as archive:
        offsets = random_reads(archive, "big", FILL_PLAIN, 3, seed=7)
        counters = archive.cached.cache.stats.counters
        made = counters["cells_decoded"]
        time.sleep(1)  # a fill, had one started, would have made more meanwhile
        assert made == counters["cells_decoded"]
        # decoded up to the farthest read (once: what it takes to get there), no further
        farthest = -(-(max(offsets) + 4096) // CELL) * CELL
        assert made <= farthest // CELL
        assert counters["cell_bytes_decoded"] <= farthest < len(FILL_PLAIN) - 2 * CELL


def test_decoded_cells_outlive_the_daemon_in_its_disk_cache(workdir):
    # a new engine (a restart, another mount) over the same cache directory decodes nothing
    path = write_zip(workdir, [member("big", DEFLATE, CELLS_PLAIN)])
    with opened(path, workdir / "cache") as archive:
        last = len(CELLS_PLAIN) - 4096
        reader = archive.reader(archive.entries["big"])
        assert reader.read(last, 4096) == CELLS_PLAIN[last:]  # every cell decoded and kept
        reader.close()
    with opened(path, workdir / "cache") as archive:
        random_reads(archive, "big", CELLS_PLAIN, 50, seed=9)
        counters = archive.cached.cache.stats.counters
        assert counters["cells_decoded"] == 0
        assert counters["disk_hits"] > 0


def test_a_replaced_archive_never_serves_the_old_decoded_cells(workdir):
    old, new = CELLS_PLAIN, text(15, len(CELLS_PLAIN))  # same name, size, offset: new bytes
    path = write_zip(workdir, [member("big", DEFLATE, old)])
    with opened(path, workdir / "cache") as archive:
        random_reads(archive, "big", old, 40, seed=5)
        assert archive.cached.cache.stats.counters["cells_decoded"] > 0
    assert list((workdir / "cache").glob("files/*/*m*.65536.*/*.run")), "no decoded cell kept"
    path.write_bytes(raw_zip([member("big", DEFLATE, new)]))
    os.utime(path, (time.time() + 10, time.time() + 10))  # a new version (mtime token)
    with opened(path, workdir / "cache") as archive:  # the same cache directory
        random_reads(archive, "big", new, 40, seed=5)  # the same offsets


# -- stored members -------------------------------------------------------------------------------


def test_a_stored_member_declaring_more_bytes_than_it_holds_is_an_error_not_its_neighbour(workdir):
    # The index drops members whose central record alone runs over the next header; these
    # lie by less than their local extra field, which only the member read sees.
    pad = b"\xfe\xca" + struct.pack("<H", 96) + bytes(96)
    members = [RawMember(b"liar", b"L" * 1000, file_size=1050, compress_size=1050, extra=pad),
               RawMember(b"next", b"N" * 1000),
               RawMember(b"last", b"Z" * 100, file_size=150, compress_size=150, extra=pad),
               RawMember(b"mismatch", b"M" * 100, file_size=200)]
    with opened(write_zip(workdir, members)) as archive:
        with pytest.raises(ArchiveError, match="next member"):
            archive.reader(archive.entries["liar"])
        assert read_all(archive, "next") == b"N" * 1000
        with pytest.raises(ArchiveError, match="next member or the central directory"):
            archive.reader(archive.entries["last"])
        with pytest.raises(ArchiveError, match="declares 200 bytes but holds 100"):
            archive.reader(archive.entries["mismatch"])


def test_a_big_stored_member_read_whole_in_order_is_crc_checked(workdir):
    plain = random.Random(7).randbytes(WHOLE_MEMBER_MAX + 3 * MiB + 5)
    members = [RawMember(b"good", plain), RawMember(b"bad", plain, crc=zlib.crc32(plain) ^ 1)]
    with opened(write_zip(workdir, members)) as archive:
        assert read_all(archive, "good") == plain
        for name in ("good", "bad"):
            reader = archive.reader(archive.entries[name])
            offsets = list(range(0, len(plain), 128 * 1024))
            for i in range(0, len(offsets) - 3, 3):  # readahead reorders by a few READs
                offsets[i], offsets[i + 2] = offsets[i + 2], offsets[i]
            try:
                for n, offset in enumerate(offsets):
                    completes = n == len(offsets) - 1
                    if name == "bad" and completes:
                        with pytest.raises(ArchiveError, match="CRC"):
                            reader.read(offset, 128 * 1024)
                    else:
                        assert reader.read(offset, 128 * 1024) == plain[offset: offset + 128 * 1024]
            finally:
                reader.close()
        with pytest.raises(ArchiveError, match="CRC"):  # the kernel's retry must fail as well
            archive.reader(archive.entries["bad"])
        reader = archive.reader(archive.entries["good"])  # random reads: nothing to check
        assert reader.read(5 * MiB, 100) == plain[5 * MiB: 5 * MiB + 100]
        reader.close()


# -- spill files ------------------------------------------------------------------------------------


SPILL_PLAIN = text(8, SPILL_MIN + MiB)


def spill_files(disk_root: Path) -> list[Path]:
    return sorted(disk_root.glob("files/*/*.spill"))


def jump_back(archive: Archive, name: str = "m") -> None:
    """Read past the window, then step back to the start: what makes a spill file."""
    reader = archive.reader(archive.entries[name])
    try:
        assert reader.read(SPILL_MIN, 4096) == SPILL_PLAIN[SPILL_MIN: SPILL_MIN + 4096]
        assert reader.read(10, 4096) == SPILL_PLAIN[10: 4106]
        assert reader.read(len(SPILL_PLAIN) - 5, 10) == SPILL_PLAIN[-5:]
    finally:
        reader.close()


@pytest.fixture(scope="module")
def spill_zip(tmp_path_factory) -> Path:
    return write_zip(tmp_path_factory.mktemp("spill"), [member("m", BZIP2, SPILL_PLAIN)])


def test_a_bzip2_member_read_backwards_spills_and_a_deflated_one_does_not(workdir, spill_zip):
    plain = SPILL_PLAIN
    path = write_zip(workdir, [member("d", DEFLATE, plain)], "d.zip")
    with opened(spill_zip, workdir / "cache") as archive:
        jump_back(archive)
        assert len(spill_files(workdir / "cache")) == 1
    with opened(path, workdir / "cache2") as archive:
        reader = archive.reader(archive.entries["d"])
        assert reader.read(SPILL_MIN, 4096) == plain[SPILL_MIN: SPILL_MIN + 4096]
        assert reader.read(10, 4096) == plain[10: 4106]
        reader.close()
        assert spill_files(workdir / "cache2") == []


@contextlib.contextmanager
def file_size_limit(nbytes: int) -> Iterator[None]:
    """Writes past ``nbytes`` fail with EFBIG (RLIMIT_FSIZE): a real write failure mid-file."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_a_spill_write_failure_falls_back_to_streaming(workdir, spill_zip, caplog):
    with opened(spill_zip, workdir / "cache") as archive, file_size_limit(4 * MiB):
        jump_back(archive)
        jump_back(archive)  # a second handle streams too, without trying again
    assert caplog.text.count("cannot write the spill file") == 1, caplog.text
    assert spill_files(workdir / "cache") == []
    assert not list((workdir / "cache").glob("files/*/.tmp*")), "a partial spill file was left"


def test_a_spill_file_deleted_behind_the_daemon_is_made_again(workdir, spill_zip):
    root = workdir / "cache"
    with opened(spill_zip, root) as archive:
        jump_back(archive)
        (spill,) = spill_files(root)
        spill.unlink()
        jump_back(archive)
        assert spill.exists()


def test_a_damaged_spill_file_is_checked_and_made_again_after_a_restart(workdir, spill_zip):
    root = workdir / "cache"
    with opened(spill_zip, root) as archive:
        jump_back(archive)
    (spill,) = spill_files(root)
    with open(spill, "r+b") as f:  # a zeroed region, same size
        f.seek(100)
        f.write(bytes(8192))
    with opened(spill_zip, root) as archive:  # a restart: same cache directory
        jump_back(archive)
    assert zlib.crc32(spill.read_bytes()) == zlib.crc32(SPILL_PLAIN)


def test_a_spill_file_of_the_wrong_size_is_made_again(workdir, spill_zip):
    root = workdir / "cache"
    with opened(spill_zip, root) as archive:
        jump_back(archive)
    (spill,) = spill_files(root)
    os.truncate(spill, 1000)
    with opened(spill_zip, root) as archive:
        jump_back(archive)
    assert spill.stat().st_size == len(SPILL_PLAIN)


def test_a_corrupt_member_found_while_spilling_is_an_error_once_and_leaves_no_spill(workdir):
    path = write_zip(workdir, [member("m", BZIP2, SPILL_PLAIN, crc=zlib.crc32(SPILL_PLAIN) ^ 1)])
    with opened(path, workdir / "cache") as archive:
        reader = archive.reader(archive.entries["m"])
        with pytest.raises(ArchiveError, match="CRC"):
            reader.read(SPILL_MIN, 4096)  # makes the spill file: decompresses and checks it all
        with pytest.raises(ArchiveError, match="CRC"):  # at once: not decompressed again
            reader.read(0, 4096)
        reader.close()
        with pytest.raises(ArchiveError, match="CRC"):
            archive.reader(archive.entries["m"])
    assert spill_files(workdir / "cache") == []
