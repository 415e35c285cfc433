"""Compressed-member reads through a real mount: sequential speed and random-read cost.

    .venv/bin/python -m bench.members

Builds (once, under ``.bench/members/``) a zip with a 2 GiB deflated member of zeros (~2 MB
compressed) and one with a 300 MB deflated member of word-salad text, mounts each from its local
path with the real ``zipmount`` CLI and ``--no-disk-cache`` (no spill file: decompression only),
and prints:

- ``cat`` of the 2 GiB member (MB/s; target >= 200) and the daemon's peak RSS;
- one sequential pass (``cat``) of the 300 MB member, on a fresh mount;
- 100 random 4 KiB ``pread`` of it on another fresh mount (cold: no checkpoints yet), then 100 more
  with O_DIRECT (past the page cache) on the same mount, each as a ratio to the sequential pass
  (target <= 10x).

Every mount is unmounted at the end, also on error or Ctrl-C. Takes well under 2 minutes.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from bench.servers import mounted, unmount

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench" / "members"
ZIPMOUNT = Path(sys.executable).parent / "zipmount"
MiB = 1 << 20
ZEROS_SIZE = 2048 * MiB
TEXT_SIZE = 300 * 10**6


def _zip_one(path: Path, name: str, chunks: Iterator[bytes], level: int) -> None:
    """A zip archive holding one deflated member, written as the chunks come (never in memory)."""
    comp = zlib.compressobj(level, zlib.DEFLATED, -15)
    tmp = path.with_suffix(".tmp")
    raw_name = name.encode()
    with open(tmp, "wb") as f:
        f.write(b"\0" * (30 + len(raw_name)))  # the local header, written once sizes are known
        crc = size = csize = 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
            data = comp.compress(chunk)
            csize += len(data)
            f.write(data)
        data = comp.flush()
        csize += len(data)
        f.write(data)
        # Both members are under 4 GiB: the 32-bit size fields hold them, no zip64 records.
        fields = (20, 0, 8, 0, 0x5A21, crc, csize, size, len(raw_name), 0)
        header = b"PK\x03\x04" + struct.pack("<5HIIIHH", *fields)
        cd_offset = f.tell()
        central = (b"PK\x01\x02" + struct.pack("<BBHHHHHIIIHHHHHII", 20, 3, 20, 0, 8, 0, 0x5A21, crc,
                                         csize, size, len(raw_name), 0, 0, 0, 0, 0o100644 << 16, 0)
                   + raw_name)
        f.write(central)
        f.write(b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central), cd_offset, 0))
        f.seek(0)
        f.write(header + raw_name)
    tmp.rename(path)


def _zeros() -> Iterator[bytes]:
    block = bytes(8 * MiB)
    for _ in range(ZEROS_SIZE // len(block)):
        yield block


def _text() -> Iterator[bytes]:
    rng = random.Random(300)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))
             for _ in range(2000)]
    left = TEXT_SIZE
    while left > 0:
        chunk = b" ".join(rng.choices(words, k=200_000))[:left]
        left -= len(chunk)
        yield chunk


def ensure_archives() -> tuple[Path, Path]:
    WORK.mkdir(parents=True, exist_ok=True)
    zeros, text = WORK / "zeros2g.zip", WORK / "text300m.zip"
    for path, name, chunks, level in ((zeros, "zeros.bin", _zeros, 9), (text, "text.txt", _text, 6)):
        if not path.exists():
            t0 = time.monotonic()
            _zip_one(path, name, chunks(), level)
            print(f"built {path.name} ({path.stat().st_size / 1e6:.1f} MB) in "
                  f"{time.monotonic() - t0:.1f}s")
    return zeros, text


@contextlib.contextmanager
def mount(archive: Path) -> Iterator[tuple[Path, int]]:
    """``zipmount mount ARCHIVE MP -f --no-disk-cache``; yields (mountpoint, daemon pid)."""
    mp = Path(tempfile.mkdtemp(prefix="mp-", dir=WORK))
    log = open(WORK / "daemon.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(ZIPMOUNT), "mount", str(archive), str(mp), "-f", "--no-disk-cache"],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (mounted(mp) and os.listdir(mp)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"zipmount did not mount {archive} (see {WORK / 'daemon.log'})")
            time.sleep(0.05)
        yield mp, proc.pid
    finally:
        unmount(mp)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        with contextlib.suppress(OSError):
            mp.rmdir()


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (the machine is shared: wall time is noisy)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cat(path: Path) -> float:
    t0 = time.monotonic()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.monotonic() - t0


def random_reads(path: Path, seed: int, direct: bool, n: int = 100, size: int = 4096) -> float:
    rng = random.Random(seed)
    offsets = [rng.randrange(TEXT_SIZE - size) for _ in range(n)]
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    buf = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT wants
    try:
        t0 = time.monotonic()
        for offset in offsets:
            got = os.preadv(fd, [buf], offset // 4096 * 4096 if direct else offset)
            if got != size:
                raise RuntimeError(f"short read at {offset}: {got}")
        return time.monotonic() - t0
    finally:
        os.close(fd)
        buf.close()


def main() -> None:
    zeros, text = ensure_archives()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with mount(zeros) as (mp, pid):
        cpu = cpu_seconds(pid)
        took = cat(mp / "zeros.bin")
        cpu = cpu_seconds(pid) - cpu
        print(f"cat 2 GiB deflated member (zeros): {took:.1f}s, {ZEROS_SIZE / took / 1e6:.0f} MB/s "
              f"(target >= 200); daemon CPU {cpu:.1f}s = {ZEROS_SIZE / cpu / 1e6:.0f} MB per "
              f"CPU-second; peak RSS {peak_rss_mib(pid):.0f} MiB")
    with mount(text) as (mp, pid):
        cpu = cpu_seconds(pid)
        seq = cat(mp / "text.txt")
        seq_cpu = cpu_seconds(pid) - cpu
        print(f"cat 300 MB deflated member (text): {seq:.2f}s, {TEXT_SIZE / seq / 1e6:.0f} MB/s; "
              f"daemon CPU {seq_cpu:.2f}s")
    with mount(text) as (mp, pid):
        cpu = cpu_seconds(pid)
        cold = random_reads(mp / "text.txt", 1, direct=False)
        cold_cpu = cpu_seconds(pid) - cpu
        warm = random_reads(mp / "text.txt", 2, direct=True)
        warm_cpu = cpu_seconds(pid) - cpu - cold_cpu
        print(f"100 random 4 KiB reads, fresh mount: {cold:.2f}s = {cold / seq:.2f}x the sequential "
              f"pass (target <= 10x); daemon CPU {cold_cpu:.2f}s = {cold_cpu / seq_cpu:.2f}x")
        print(f"100 more, O_DIRECT, checkpoints made: {warm:.2f}s = {warm / seq:.2f}x "
              f"({warm / 100 * 1000:.1f} ms per read); daemon CPU {warm_cpu:.2f}s = "
              f"{warm_cpu / seq_cpu:.2f}x; peak RSS {peak_rss_mib(pid):.0f} MiB")


if __name__ == "__main__":
    main()
