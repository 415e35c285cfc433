"""Resource bounds of a running daemon, measured from /proc of the real process.

- memory stays bounded with a 100,000-entry archive and with 64 concurrent readers
  (``--memory`` caps the block cache; the rest is the index, ~85 bytes per entry with names of
  about 30 characters (``EntryTable.memory_bytes``), plus ~160 bytes per member read (what the
  archive remembers of it), and per-request buffers: each reader of a member up to 16 MiB fetches
  it whole, which costs a few times the member size while in flight, so the peak grows with
  readers x member size);
- a sweep reading every member of many archives keeps what the loaded indexes hold (charged and
  measured with tracemalloc) within ``--index-memory``, the block cache within ``--memory``;
- no file-descriptor or thread leak after 10,000 open/read/close cycles;
- the disk cache never holds more than ``--cache-size`` bytes, also while it is being filled by
  concurrent readers and spill files, and also right after a restart with a smaller size.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile

import pytest
from robust.harness import (
    dir_usage,
    open_fds,
    peak_rss_bytes,
    read_file,
    reset_peak_rss,
    rss_bytes,
    stack,
    threads,
)
from robust.zips import RawMember, plain_zip, random_bytes, raw_zip

from zipmount.fuse.session import MAX_THREADS

MiB = 2**20
N_ENTRIES = 100_000


def _big_index_zip() -> tuple[bytes, dict[str, bytes]]:
    members = []
    sample: dict[str, bytes] = {}
    for i in range(N_ENTRIES):
        name = f"d{i // 1000:03d}/f{i:06d}.dat"
        data = b"%08d" % i
        members.append(RawMember(name.encode(), data))
        if i % 997 == 0:
            sample[name] = data
    return raw_zip(members), sample


READERS_FILES = {f"r{i:02d}.bin": random_bytes(f"reader{i}", MiB + i) for i in range(64)}
SPILL_TEXT = b"".join(b"line %08d of a big deflated member\n" % i for i in range(300_000))


@pytest.fixture(scope="module")
def st(tmp_path_factory):
    with stack(tmp_path_factory.mktemp("bounds")) as s:
        big, sample = _big_index_zip()
        s.put("bounds/index100k.zip", big)
        s.big_sample = sample
        s.put("bounds/readers.zip", plain_zip(READERS_FILES))
        mixed = {"stored.bin": random_bytes("mixed", 300_000), "small.txt": b"small\n" * 100}
        s.mixed = mixed
        out = io.BytesIO(plain_zip(mixed))
        with zipfile.ZipFile(out, "a") as zf:
            zf.writestr("deflated.txt", b"deflate me\n" * 20_000, compress_type=zipfile.ZIP_DEFLATED)
            zf.writestr("spill.txt", SPILL_TEXT, compress_type=zipfile.ZIP_DEFLATED)
        s.put("bounds/mixed.zip", out.getvalue())
        yield s


def test_memory_bounded_with_100k_entries(st):
    with st.mounted("bounds/index100k.zip", "--memory", "16MiB", timeout=60) as h:
        mp, pid = h.mountpoint, h.pid
        dirs = sorted(os.listdir(mp))
        assert len(dirs) == 100
        count = 0
        for i, d in enumerate(dirs):
            names = os.listdir(mp / d)
            count += len(names)
            for name in names[i % 10::10]:  # every tenth entry: getattr
                os.stat(mp / d / name)
        assert count == N_ENTRIES
        for name, data in st.big_sample.items():
            assert read_file(mp / name) == data
        rss = rss_bytes(pid)
        peak = peak_rss_bytes(pid)
    print(f"100k entries: RSS {rss / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB")
    # ~100 MB of index for 100k entries is the measured order of magnitude (Python objects);
    # what must not happen is per-entry cost growing with data read or a second copy per read.
    assert rss < 220 * MiB, f"RSS {rss / MiB:.0f} MiB with a 100k-entry archive"
    assert peak < 320 * MiB, f"peak RSS {peak / MiB:.0f} MiB with a 100k-entry archive"


def test_memory_bounded_with_64_concurrent_readers(st):
    with st.mounted("bounds/readers.zip", "--memory", "8MiB", "--no-disk-cache") as h:
        mp, pid = h.mountpoint, h.pid
        os.listdir(mp)
        base = rss_bytes(pid)
        reset_peak_rss(pid)
        errors: list[str] = []
        barrier = threading.Barrier(64)

        def reader(name: str) -> None:
            try:
                barrier.wait(30)
                data = read_file(mp / name)
                if data != READERS_FILES[name]:
                    errors.append(f"{name}: wrong bytes")
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(f"{name}: {exc!r}")

        ts = [threading.Thread(target=reader, args=(n,)) for n in READERS_FILES]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        assert not any(t.is_alive() for t in ts), "a reader hung"
        assert not errors, errors[:5]
        grew = peak_rss_bytes(pid) - base
    total = sum(map(len, READERS_FILES.values()))
    print(f"64 readers of {total / MiB:.0f} MiB: peak grew {grew / MiB:.0f} MiB over {base / MiB:.0f}")
    assert grew < 160 * MiB, (f"peak RSS grew {grew / MiB:.0f} MiB for 64 readers of "
                              f"{total / MiB:.0f} MiB with --memory 8MiB")


def test_no_fd_or_thread_leak_after_10k_open_close(st):
    with st.mounted("bounds/mixed.zip", "--memory", "32MiB", "--cache-size", "64MiB") as h:
        mp, pid = h.mountpoint, h.pid
        names = ["stored.bin", "small.txt", "deflated.txt", "spill.txt"]

        def cycle(i: int) -> None:
            name = names[i % len(names)]
            fd = os.open(mp / name, os.O_RDONLY)
            try:
                # spill.txt: a read far from the start makes the daemon use its spill file
                offset = 5_000_000 + i if name == "spill.txt" else i % 1000
                os.pread(fd, 64, offset)
            finally:
                os.close(fd)

        for i in range(2000):  # warm up: thread pools fill lazily, spill file, kernel caches
            cycle(i)
        time.sleep(0.5)
        fds0, threads0 = open_fds(pid), threads(pid)
        counts = []
        for round_ in range(2):  # a leak grows with every round; pools stop at their size
            for i in range(5_000):
                cycle(round_ * 5_000 + i)
            time.sleep(1.0)
            counts.append((open_fds(pid), threads(pid)))
        (fds1, threads1), (fds2, threads2) = counts
        print(f"10k open/close: fds {fds0} -> {fds1} -> {fds2}, "
              f"threads {threads0} -> {threads1} -> {threads2}")
        stats = json.loads(os.getxattr(mp, "user.zipmount.stats"))
    assert fds2 <= fds0 + 2, f"fd leak: {fds0} -> {fds1} -> {fds2} after 10k open/close"
    # libfuse 3.14 keeps idle workers (up to the mount's max_threads), and the block cache's
    # fetch pools start threads lazily up to their size: bounded, but not back to the start.
    assert threads2 <= threads1 + 2, f"thread leak: {threads0} -> {threads1} -> {threads2}"
    assert threads2 <= threads0 + MAX_THREADS, f"threads beyond the pools: {threads0} -> {threads2}"
    assert stats["open_files"] == 0, f"daemon still tracks {stats['open_files']} open files"


class _Sampler(threading.Thread):
    """Samples the cache directory's size every few ms and keeps the maximum."""

    def __init__(self, root) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.max_apparent = self.max_allocated = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            apparent, allocated = dir_usage(self.root / "files") if (self.root / "files").exists() \
                else (0, 0)
            self.max_apparent = max(self.max_apparent, apparent)
            self.max_allocated = max(self.max_allocated, allocated)
            self.samples += 1
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def test_disk_cache_never_exceeds_its_size(st, tmp_path):
    cap = 4 * MiB
    cache_dir = tmp_path / "cache"
    sampler = _Sampler(cache_dir)
    sampler.start()
    try:
        with st.mounted("bounds/readers.zip", "--cache-dir", str(cache_dir), "--cache-size",
                        "4MiB", "--memory", "1MiB") as h:
            mp = h.mountpoint
            names = sorted(READERS_FILES)[:32]  # 32 MiB through a 4 MiB cache

            def reader(chunk: list[str]) -> None:
                for n in chunk:
                    assert read_file(mp / n) == READERS_FILES[n]

            ts = [threading.Thread(target=reader, args=(names[i::4],)) for i in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(120)
        with st.mounted("bounds/mixed.zip", "--cache-dir", str(cache_dir), "--cache-size",
                        "4MiB", "--memory", "1MiB") as h:
            f = h.mountpoint / "spill.txt"  # ~10 MiB decompressed: too big to spill here
            with open(f, "rb") as fh:
                fh.seek(len(SPILL_TEXT) - 1000)
                assert fh.read() == SPILL_TEXT[-1000:]
    finally:
        sampler.stop()
    assert sampler.samples > 50
    print(f"disk cache max: {sampler.max_apparent} bytes ({sampler.max_allocated} allocated), "
          f"{sampler.samples} samples")
    assert sampler.max_apparent <= cap, f"cache held {sampler.max_apparent} bytes > {cap}"


def test_disk_cache_shrinks_to_a_smaller_size_at_restart(st, tmp_path):
    cache_dir = tmp_path / "cache"
    names = sorted(READERS_FILES)[:8]
    with st.mounted("bounds/readers.zip", "--cache-dir", str(cache_dir), "--cache-size",
                    "64MiB") as h:
        for n in names:
            assert read_file(h.mountpoint / n) == READERS_FILES[n]
    filled = dir_usage(cache_dir / "files")[0]
    assert filled > 7 * MiB, filled
    with st.mounted("bounds/readers.zip", "--cache-dir", str(cache_dir), "--cache-size",
                    "5MiB") as h:
        usage_at_mount = dir_usage(cache_dir / "files")[0]
        for n in names[-2:]:  # served from the (shrunk) cache or refetched: same bytes
            assert read_file(h.mountpoint / n) == READERS_FILES[n]
        usage_after_reads = dir_usage(cache_dir / "files")[0]
    assert usage_at_mount <= 5 * MiB, f"{usage_at_mount} bytes cached under a 5 MiB cap"
    assert usage_after_reads <= 5 * MiB, f"{usage_after_reads} bytes cached under a 5 MiB cap"



def _cohort(root, archives: int, entries: int) -> list[str]:
    """``archives`` hard links of one rkns-like zip (each its own object to zipmount)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(entries):
            zf.writestr(f"rkns/signals/g{i % 8}/signal/{i // 8}.0", b"%064d" % i)
    root.mkdir()
    first = root / "rec0000.rkns"
    first.write_bytes(buf.getvalue())
    for i in range(1, archives):
        os.link(first, root / f"rec{i:04d}.rkns")
    return sorted(p.name for p in root.iterdir())


# The sweep runs in a fresh interpreter: what earlier tests of the same process left alive
# (engines, trees, pools) must not count as this sweep's heap growth.
_SWEEP = """
import gc, json, sys, tracemalloc
from zipmount.config import CacheConfig
from zipmount.engine import Engine
from zipmount.source import StorageOptions

cohort, cache, cap, memory, names, members = json.loads(sys.argv[1])
engine = Engine(StorageOptions(), CacheConfig(dir=cache, memory=memory, index_memory=cap))
tree = engine.open_tree(cohort + "/", suffixes=(".rkns",))


def sweep(archive):
    for member in members:
        reader = tree.open(f"{archive}/{member}")
        try:
            assert len(reader.read(0, 100)) == 64
        finally:
            reader.close()


try:
    for name in names[:3]:  # warm up: thread pools, imports, first allocations
        sweep(name)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    most_charged = 0
    for name in names[3:]:
        sweep(name)
        most_charged = max(most_charged, engine.indexes.used)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    loaded = len(engine.indexes)
    print(json.dumps({"most_charged": most_charged, "held": held, "loaded": loaded,
                      "per_archive": engine.indexes.used / loaded}))
finally:
    engine.close()
"""


def test_a_sweep_reading_every_member_of_many_archives_holds_no_more_than_the_caps(tmp_path):
    """In process (the engine and tree a mount uses, over a local directory): 120 archives of 200
    members, every member read, as ``zipmount prefetch`` does. Without the per-member state
    charged, the indexes held about twice ``index_memory``."""
    archives, entries = 120, 200
    names = _cohort(tmp_path / "cohort", archives, entries)
    members = [f"rkns/signals/g{i % 8}/signal/{i // 8}.0" for i in range(entries)]
    cap, memory = 1 * MiB, 1 * MiB
    args = [str(tmp_path / "cohort"), str(tmp_path / "cache"), cap, memory, names, members]
    r = subprocess.run([sys.executable, "-c", _SWEEP, json.dumps(args)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    most_charged, held, loaded = got["most_charged"], got["held"], got["loaded"]
    print(f"{archives} archives x {entries} members: {loaded} indexes loaded at the end, "
          f"{got['per_archive'] / 1024:.1f} KiB charged each, {most_charged / MiB:.2f} MiB charged "
          f"at most, heap grew {held / MiB:.2f} MiB (caps: index {cap / MiB:.0f} MiB, blocks "
          f"{memory / MiB:.0f} MiB)")
    assert most_charged <= cap
    # What the loaded archives hold, charged or not, plus the block cache, plus what the tree
    # keeps per listed archive (~1 KiB each, not per archive opened).
    assert held <= 1.25 * cap + memory + archives * 1024 + 256 * 1024, held
    assert loaded < archives // 4  # the cap dropped most of them
