"""One cache directory, several real processes at once: every byte served is right, the size cap
holds, what one process cached another reads without a request, and a writer killed mid-way
leaves nothing that is later served corrupt."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from robust.harness import cache_usage_between_writes, dir_usage

from zipmount.cache import BLOCK_SIZE, BlockCache, FileStore
from zipmount.errors import SourceError
from zipmount.stats import Stats

OBJECTS = 6
OBJECT_SIZE = 3 * 1024 * 1024 + 12345
CAP = 8 * 1024 * 1024  # less than half of what the workers read: evictions all along


def object_key(n: int) -> str:
    return f"{n:02d}" + "5eed" * 9


def object_bytes(n: int) -> bytes:
    return random.Random(n).randbytes(OBJECT_SIZE)


# A worker: random ranges of random objects through its own BlockCache over the shared dir,
# each checked against the expected bytes. Prints one JSON line.
WORKER = """
import json, random, sys, time
from pathlib import Path
from zipmount.cache import BlockCache, FileStore
from zipmount.stats import Stats
root, seed, seconds, cap, nobj, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), \\
    int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
objects = [random.Random(n).randbytes(size) for n in range(nobj)]
keys = [f"{n:02d}" + "5eed" * 9 for n in range(nobj)]
fetched = [0]
def fetcher(n):
    def fetch(start, end):
        fetched[0] += end - start
        return objects[n][start:end]
    return fetch
stats = Stats()
cache = BlockCache(512 * 1024, FileStore(Path(root), cap), stats)
rnd = random.Random(seed)
reads = bad = 0
print("ready", flush=True)
stop = time.monotonic() + seconds
while time.monotonic() < stop:
    n = rnd.randrange(nobj)
    start = rnd.randrange(size)
    end = min(size, start + rnd.randrange(1, 600_000))
    if cache.read(keys[n], size, start, end, fetcher(n)) != objects[n][start:end]:
        bad += 1
    reads += 1
cache.close()
print(json.dumps({"reads": reads, "bad": bad, "fetched": fetched[0],
                  "disk_hits": stats.counters["disk_hits"]}), flush=True)
"""


def start_worker(root: Path, seed: int, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(root), str(seed), str(seconds),
                             str(CAP), str(OBJECTS), str(OBJECT_SIZE)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr
    return proc


def served_from_disk(root: Path) -> int:
    """Reads every block of every object from the run files alone (no request can succeed) and
    checks it; returns how many blocks were served."""
    def gone(start: int, end: int) -> bytes:
        raise SourceError("no requests in this check")

    cache = BlockCache(1 << 20, FileStore(root, CAP), Stats())
    served = 0
    try:
        for n in range(OBJECTS):
            data = object_bytes(n)
            for start in range(0, OBJECT_SIZE, BLOCK_SIZE):
                end = min(OBJECT_SIZE, start + BLOCK_SIZE)
                try:
                    got = cache.read(object_key(n), OBJECT_SIZE, start, end, gone)
                except SourceError:
                    continue
                assert got == data[start:end], f"object {n} block {start // BLOCK_SIZE}: wrong bytes"
                served += 1
    finally:
        cache.close()
    return served


def test_processes_sharing_a_cache_dir_serve_right_bytes_under_one_cap(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    FileStore(root, CAP).close()
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], cache_usage_between_writes(root))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        workers = [start_worker(root, seed, 4.0) for seed in range(4)]
        victim = start_worker(root, 99, 60.0)
        time.sleep(1.5)
        victim.send_signal(signal.SIGKILL)  # mid-read, mid-write: wherever it is
        victim.wait(10)
        results = []
        for w in workers:
            out, err = w.communicate(timeout=120)
            assert w.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        stop.set()
        sampler.join()
    print(results, "peak", peak[0])
    assert all(r["bad"] == 0 for r in results), results
    assert all(r["reads"] > 20 for r in results), results
    assert sum(r["disk_hits"] for r in results) > 0, "no process read another's (or its own) run files"
    # Held to within a few blocks: with 5 processes evicting at once on a loaded machine, the
    # sampler has seen up to ~180 KB over the cap for a moment (2 %); the cause is not found
    # yet (docs/SERVICE.md). A leak of accounting would grow far past this.
    assert peak[0] <= CAP + 4 * BLOCK_SIZE, f"{peak[0]} bytes in a cache capped at {CAP}"

    store = FileStore(root, CAP)
    leftovers = [p for p in (root / "files").rglob(".tmp*")]
    old = time.time() - 60
    for p in leftovers:  # the killed writer's, if it died mid-write: stale once old enough
        os.utime(p, (old, old))
    store.prune()
    assert not list((root / "files").rglob(".tmp*"))
    assert store.used == dir_usage(root / "files")[0] <= CAP
    runs_before = len(list((root / "files").rglob("*.run")))
    assert served_from_disk(root) > 0
    assert len(list((root / "files").rglob("*.run"))) == runs_before, "a run file was corrupt"
    store.close()


FILL = """
import sys
from pathlib import Path
from zipmount.cache import BlockCache, FileStore
from zipmount.stats import Stats
data = open(sys.argv[2], "rb").read()
cache = BlockCache(1 << 20, FileStore(Path(sys.argv[1]), 64 << 20), Stats())
assert cache.read(sys.argv[3], len(data), 0, len(data), lambda s, e: data[s:e]) == data
cache.close()
"""


def test_what_one_process_cached_another_reads_without_a_request(tmp_path):
    root = tmp_path / "cache"
    data = object_bytes(0)
    (tmp_path / "obj").write_bytes(data)
    r = subprocess.run([sys.executable, "-c", FILL, str(root), str(tmp_path / "obj"), object_key(0)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    calls = []

    def fetch(start: int, end: int) -> bytes:
        calls.append((start, end))
        return data[start:end]

    cache = BlockCache(1 << 20, FileStore(root, 64 << 20), Stats())
    try:
        for start in range(0, OBJECT_SIZE, 300_000):
            assert cache.read(object_key(0), OBJECT_SIZE, start, start + 300_000, fetch) == \
                data[start: start + 300_000]
    finally:
        cache.close()
    assert calls == [], f"{len(calls)} requests for blocks another process had cached"
