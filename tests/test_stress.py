"""Concurrency stress: 4 processes x 4 threads doing random preads across several archives of
one prefix mount for 30 s, every byte checked against the source.

Half the opens use O_DIRECT so that reads reach the daemon instead of the kernel page cache.
The caches are small (4 MiB memory, 48 MiB disk) so blocks are evicted and refetched, and big
compressed members are read at random offsets: a deflated one (decompressor checkpoints) and a
bzip2 one (spill file). The daemon reaches the S3 server
through the fault proxy, which resets every 8th range GET mid-body: retries must stay
invisible. Set ZIPMOUNT_STRESS_SECONDS to run longer.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from robust.faultproxy import ResetMidBody
from robust.harness import open_fds, stack
from robust.zips import random_bytes

SECONDS = float(os.environ.get("ZIPMOUNT_STRESS_SECONDS", "30"))
PROCESSES, THREADS = 4, 4
WORKER = Path(__file__).parent / "robust" / "stress_worker.py"


def _archives() -> dict[str, dict[str, tuple[bytes, int]]]:
    text = b"".join(b"%07d the quick brown fox jumps over the lazy dog\n" % i
                    for i in range(220_000))  # ~11 MiB
    return {
        "a.zip": {f"stored/s{i:02d}.bin": (random_bytes(f"a{i}", 150_000 + 7919 * i),
                                           zipfile.ZIP_STORED) for i in range(30)},
        "b.zip": {**{f"text/t{i:02d}.txt": (text[i * 50_000: i * 50_000 + 180_000 + i],
                                            zipfile.ZIP_DEFLATED) for i in range(20)},
                  "big/text.txt": (text, zipfile.ZIP_DEFLATED),
                  "big/text.bz2.txt": (text, zipfile.ZIP_BZIP2)},
        "sub/c.zip": {**{f"tiny/{i}.dat": (random_bytes(f"c{i}", i * 37), zipfile.ZIP_STORED)
                         for i in range(40)},
                      "large.bin": (random_bytes("c-large", 3 * 2**20 + 5), zipfile.ZIP_STORED),
                      "bz.txt": (text[:400_000], zipfile.ZIP_BZIP2)},
    }


def _zip(members: dict[str, tuple[bytes, int]]) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, (data, method) in members.items():
            zf.writestr(zipfile.ZipInfo(name, (2024, 1, 2, 3, 4, 6)), data, compress_type=method)
    return buf.getvalue()


@pytest.fixture(scope="module")
def st(tmp_path_factory):
    with stack(tmp_path_factory.mktemp("stress")) as s:
        yield s


def test_random_preads_from_many_processes_and_threads(st, tmp_path):
    expected = tmp_path / "expected"
    for arc, members in _archives().items():
        st.put(f"stress/{arc}", _zip(members))
        for name, (data, _) in members.items():
            path = expected / arc / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    counter = itertools.count()

    def every_8th_get_reset(req):  # transient faults under concurrency: retried, invisible
        return ResetMidBody(0.3) if req.is_range_get and next(counter) % 8 == 7 else None

    st.proxy.rule = every_8th_get_reset
    with st.mounted("stress/", "--memory", "4MiB", "--cache-size", "48MiB", "--ttl", "3600") as h:
        mp = h.mountpoint
        fds0 = open_fds(h.pid)
        procs = [subprocess.Popen([sys.executable, str(WORKER), str(mp), str(expected),
                                   str(SECONDS), str(THREADS), str(i)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for i in range(PROCESSES)]
        results = []
        try:
            for p in procs:
                out, err = p.communicate(timeout=SECONDS + 90)
                assert p.returncode == 0, err[-3000:]
                results.append(json.loads(out))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert h.proc.poll() is None, "the daemon died under stress"
        fds1 = open_fds(h.pid)
        log = h.stderr()
    st.proxy.rule = None
    resets = len(st.proxy.log(lambda r: r.action == "reset"))
    mismatches = [m for r in results for m in r["mismatches"]]
    errors = [e for r in results for e in r["errors"]]
    ops = sum(r["ops"] for r in results)
    preads = sum(r["preads"] for r in results)
    print(f"stress: {ops} opens, {preads} preads, "
          f"{sum(r['bytes'] for r in results) / 2**20:.0f} MiB checked, "
          f"{sum(r['direct'] for r in results)} O_DIRECT opens, {resets} connection resets")
    assert not mismatches, mismatches
    assert not errors, errors
    assert ops >= 500 and preads >= 1500, f"too little work done: {ops} opens, {preads} preads"
    assert "Traceback" not in log, log[-4000:]
    assert "into the disk cache for random access" in log, "the spill path was not exercised"
    assert fds1 <= fds0 + 4, f"fds {fds0} -> {fds1} after the stress"
    assert resets >= 3, "the proxy reset too few connections to exercise retries"
