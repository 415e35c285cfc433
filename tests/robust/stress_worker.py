"""One stress process: THREADS threads doing random preads of mounted members for SECONDS and
checking every byte against the expected copy on local disk. Prints one JSON line.

    python stress_worker.py MOUNT EXPECTED SECONDS THREADS SEED
"""

from __future__ import annotations

import json
import mmap
import os
import random
import sys
import threading
import time


def _pread(fd: int, offset: int, size: int, direct: bool) -> bytes:
    if not direct:
        return os.pread(fd, size, offset)
    start = offset // 4096 * 4096
    span = (offset + size - start + 4095) // 4096 * 4096
    buf = mmap.mmap(-1, span)
    try:
        n = os.preadv(fd, [buf], start)
        return bytes(buf[offset - start: max(offset - start, min(n, offset + size - start))])
    finally:
        buf.close()


def main() -> int:
    mount, expected, seconds, nthreads, seed = sys.argv[1], sys.argv[2], float(sys.argv[3]), \
        int(sys.argv[4]), int(sys.argv[5])
    members = []
    for dirpath, _, names in os.walk(expected):
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), expected)
            members.append((rel, os.path.getsize(os.path.join(dirpath, n))))
    members.sort()
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    result = {"ops": 0, "preads": 0, "bytes": 0, "direct": 0, "mismatches": [], "errors": []}

    def run(tseed: int) -> None:
        rng = random.Random(tseed)
        ops = preads = nbytes = direct_n = 0
        while time.monotonic() < deadline:
            rel, size = rng.choice(members)
            direct = rng.random() < 0.5
            flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
            try:
                fd = os.open(os.path.join(mount, rel), flags)
            except OSError as exc:
                with lock:
                    result["errors"].append(f"open {rel}: {exc}")
                continue
            try:
                with open(os.path.join(expected, rel), "rb") as ref:
                    for _ in range(rng.randint(1, 6)):
                        if rng.random() < 0.1:
                            offset, length = 0, size + 1  # whole file, and EOF
                        else:
                            offset = rng.randrange(0, max(1, size))
                            length = rng.choice((1, 17, 4096, 65536, 131072, 300_000))
                        got = _pread(fd, offset, length, direct)
                        want = os.pread(ref.fileno(), length, offset)
                        preads += 1
                        nbytes += len(got)
                        if got != want:
                            with lock:
                                result["mismatches"].append(
                                    f"{rel} @{offset}+{length} direct={direct}: got {len(got)} "
                                    f"bytes, want {len(want)}")
                            break
            except OSError as exc:
                with lock:
                    result["errors"].append(f"read {rel}: {exc}")
            finally:
                os.close(fd)
            ops += 1
            direct_n += direct
        with lock:
            result["ops"] += ops
            result["preads"] += preads
            result["bytes"] += nbytes
            result["direct"] += direct_n

    threads = [threading.Thread(target=run, args=(seed * 1000 + i,)) for i in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result["mismatches"] = result["mismatches"][:20]
    result["errors"] = result["errors"][:20]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
