"""Compressed-member reads through a real mount: sequential speed and random-read cost.

    .venv/bin/python -m bench.members [--case cat|first-pass|loader|wheel-import ...]

Builds (once, under ``.bench/members/``) a zip with a 2 GiB deflated member of zeros (~2 MB
compressed) and one with a 300 MB deflated member of word-salad text, mounts each from its local
path with the real ``zipmount`` CLI and ``--no-disk-cache`` (no spill file: decompression only),
and prints:

- ``cat`` of the 2 GiB member (MB/s; target >= 200) and the daemon's peak RSS;
- one sequential pass (``cat``) of the 300 MB member, on a fresh mount;
- 100 random 4 KiB ``pread`` of it on another fresh mount (cold: no checkpoints yet), then 100 more
  with O_DIRECT (past the page cache) on the same mount, each as a ratio to the sequential pass
  (target <= 10x);
- random reads after the first pass (issue 18): 100 random 4 KiB O_DIRECT reads of the 300 MB
  deflated member, then the same 100 again, against the same from the same bytes *stored* in a
  zip, each on a fresh mount with a fresh disk cache (target: deflated <= 2x stored), and 100
  reads at new offsets;
- the loader case: the 300 MB member (a stand-in for a big ``.so``) mapped and its pages touched
  in the order a dynamic loader and the code it runs touch them (headers, the section table at
  the end, the symbol/relocation tables walked in order, the data segment, then 5 % of the code
  pages at random), from a fresh mount with a fresh disk cache vs from an extracted copy on local
  disk, page cache dropped (``posix_fadvise(DONTNEED)`` of the files involved) both times; then
  again on the same mount (page cache as the kernel kept it, and dropped) vs local warm; the
  daemon's peak RSS against ``--memory``;
- the wheel-import case (issue 18's headline): ``import torch`` in a fresh interpreter from the
  PyTorch CPU wheel mounted as it is (fresh disk cache, default ``--memory``, the wheel's page
  cache dropped) vs from a copy extracted once to local disk (its page cache dropped), bytecode
  written to a fresh ``pycache_prefix`` on both sides, then a second import on the same mount vs
  local warm, three times; medians, spread, daemon CPU and peak RSS.

Every mount is unmounted at the end, also on error or Ctrl-C. Takes a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from bench.servers import mounted, unmount
from zipmount.stats import STATS_XATTR

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench" / "members"
ZIPMOUNT = Path(sys.executable).parent / "zipmount"
MiB = 1 << 20
ZEROS_SIZE = 2048 * MiB
TEXT_SIZE = 300 * 10**6


def _zip_one(path: Path, name: str, chunks: Iterator[bytes], level: int) -> None:
    """A zip archive holding one member, deflated at ``level`` (0: stored), written as the
    chunks come (never in memory)."""
    method = 8 if level else 0
    comp = zlib.compressobj(level, zlib.DEFLATED, -15)
    tmp = path.with_suffix(".tmp")
    raw_name = name.encode()
    with open(tmp, "wb") as f:
        f.write(b"\0" * (30 + len(raw_name)))  # the local header, written once sizes are known
        crc = size = csize = 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
            data = comp.compress(chunk) if method else chunk
            csize += len(data)
            f.write(data)
        data = comp.flush() if method else b""
        csize += len(data)
        f.write(data)
        # Both members are under 4 GiB: the 32-bit size fields hold them, no zip64 records.
        fields = (20, 0, method, 0, 0x5A21, crc, csize, size, len(raw_name), 0)
        header = b"PK\x03\x04" + struct.pack("<5HIIIHH", *fields)
        cd_offset = f.tell()
        central = (b"PK\x01\x02" + struct.pack("<BBHHHHHIIIHHHHHII", 20, 3, 20, 0, method, 0, 0x5A21, crc,
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


def ensure_archives() -> tuple[Path, Path, Path, Path]:
    """The zeros and text archives, the text stored, and the text extracted (a local copy)."""
    WORK.mkdir(parents=True, exist_ok=True)
    zeros, text = WORK / "zeros2g.zip", WORK / "text300m.zip"
    stored, local = WORK / "text300m-stored.zip", WORK / "extracted" / "text.txt"
    for path, name, chunks, level in ((zeros, "zeros.bin", _zeros, 9), (text, "text.txt", _text, 6),
                                      (stored, "text.txt", _text, 0)):
        if not path.exists():
            t0 = time.monotonic()
            _zip_one(path, name, chunks(), level)
            print(f"built {path.name} ({path.stat().st_size / 1e6:.1f} MB) in "
                  f"{time.monotonic() - t0:.1f}s")
    if not local.exists():
        local.parent.mkdir(exist_ok=True)
        with open(local.with_suffix(".tmp"), "wb") as f:
            for chunk in _text():
                f.write(chunk)
        local.with_suffix(".tmp").rename(local)
    return zeros, text, stored, local


@contextlib.contextmanager
def mount(archive: Path, *opts: str) -> Iterator[tuple[Path, int]]:
    """``zipmount mount ARCHIVE MP -f OPTS`` (default ``--no-disk-cache``); yields (mountpoint,
    daemon pid)."""
    mp = Path(tempfile.mkdtemp(prefix="mp-", dir=WORK))
    log = open(WORK / "daemon.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(ZIPMOUNT), "mount", str(archive), str(mp), "-f",
                             *(opts or ("--no-disk-cache",))],
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


@contextlib.contextmanager
def fresh_cache() -> Iterator[list[str]]:
    """Mount options for a disk cache of its own, deleted afterwards."""
    path = Path(tempfile.mkdtemp(prefix="cache-", dir=WORK))
    try:
        yield ["--cache-dir", str(path)]
    finally:
        shutil.rmtree(path, ignore_errors=True)


def drop_page_cache(*paths: Path) -> None:
    """Drop the kernel's cached pages of these files (only theirs: the machine is shared)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


PAGE = 4096


def loader_pages(size: int, seed: int = 7) -> list[int]:
    """Page offsets in the order a dynamic loader and the code it runs touch a shared library:
    the ELF and program headers, the section headers at the end, the dynamic symbol, string and
    relocation tables walked in order (the first tenth), the data segment relocations write
    (the last twentieth), then code pages as functions are called: 5 % of them, at random."""
    pages = size // PAGE
    text_from, data_from = pages // 10, pages - pages // 20
    order = [0, 1, *range(pages - 16, pages), *range(2, text_from), *range(data_from, pages - 16)]
    rng = random.Random(seed)
    order += [rng.randrange(text_from, data_from) for _ in range(pages // 20)]
    return [p * PAGE for p in order]


def touch_pages(path: Path, pages: list[int]) -> float:
    """Map ``path`` and read one byte of each page, in order: what page faults cost."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as view:
        t0 = time.monotonic()
        total = 0
        for offset in pages:
            total += view[offset]
        return time.monotonic() - t0


def daemon_counters(mp: Path) -> dict:
    """The daemon's counters (``zipmount stats``: an extended attribute of the mount's root)."""
    return json.loads(os.getxattr(mp, STATS_XATTR))


def wait_for_cells(mp: Path, quiet: float = 1.0, limit: float = 300.0) -> float:
    """Wait until the daemon made no decoded cell for ``quiet`` seconds (a background fill is
    over); returns how long that took, the quiet time excluded."""
    t0 = time.monotonic()
    last, since = daemon_counters(mp).get("cells_decoded"), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() - t0 < limit:
        time.sleep(0.1)
        now = daemon_counters(mp).get("cells_decoded")
        if now != last:
            last, since = now, time.monotonic()
    return since - t0


def after_the_first_pass() -> None:
    """100 random 4 KiB reads of the deflated member after a first pass, vs the stored one."""
    _, text, stored, _ = ensure_archives()
    took: dict[str, tuple[float, float, float]] = {}
    for kind, archive in (("stored", stored), ("deflated", text)):
        with fresh_cache() as cache, mount(archive, *cache) as (mp, pid):
            first = random_reads(mp / "text.txt", 1, direct=True)
            filled = wait_for_cells(mp)
            again = random_reads(mp / "text.txt", 1, direct=True)
            new = random_reads(mp / "text.txt", 2, direct=True)
            took[kind] = first, again, new
            counters = daemon_counters(mp)
            print(f"100 random 4 KiB O_DIRECT reads, {kind} 300 MB member, fresh mount and cache: "
                  f"first pass {first:.2f}s (then {filled:.2f}s until the background decode was "
                  f"over: {counters.get('cells_decoded', 0)} cells, "
                  f"{counters.get('cell_bytes_decoded', 0) / 1e6:.0f} MB decoded), the same again "
                  f"{again * 10:.2f} ms per read, 100 new offsets {new * 10:.2f} ms per read; "
                  f"peak RSS {peak_rss_mib(pid):.0f} MiB")
    (s1, s2, s3), (d1, d2, d3) = took["stored"], took["deflated"]
    print(f"after the first pass: deflated / stored = {d2 / s2:.2f}x (target <= 2x); first pass "
          f"{d1 / s1:.2f}x; new offsets {d3 / s3:.2f}x")


def loader() -> None:
    """The loader case: a big deflated member mapped and touched in loader order, vs local."""
    _, text, stored, local = ensure_archives()
    pages = loader_pages(TEXT_SIZE)
    drop_page_cache(local)
    local_cold = touch_pages(local, pages)
    local_warm = touch_pages(local, pages)
    print(f"loader order, {len(pages)} page touches of a 300 MB file: local copy {local_cold:.2f}s "
          f"cold, {local_warm:.3f}s warm")
    with fresh_cache() as cache, mount(stored, *cache) as (mp, pid):
        drop_page_cache(stored)
        stored_cold = touch_pages(mp / "text.txt", pages)
    print(f"from the mount, the same bytes stored: {stored_cold:.2f}s = "
          f"{stored_cold / local_cold:.2f}x local cold")
    with fresh_cache() as cache, mount(text, *cache) as (mp, pid):
        drop_page_cache(text)
        cold = touch_pages(mp / "text.txt", pages)
        filled = wait_for_cells(mp)
        warm = touch_pages(mp / "text.txt", pages)
        drop_page_cache(mp / "text.txt")
        daemon_warm = touch_pages(mp / "text.txt", pages)
        rss = peak_rss_mib(pid)
    print(f"from the mount (deflated member, fresh cache, page cache dropped): {cold:.2f}s = "
          f"{cold / local_cold:.2f}x local cold (target <= 1.25x), {cold / stored_cold:.2f}x "
          f"stored (the background decode went on "
          f"{filled:.2f}s after); again on the same mount "
          f"{warm:.3f}s = {warm / local_warm:.2f}x local warm (target <= 1.1x); again with the "
          f"page cache dropped {daemon_warm:.2f}s = {daemon_warm / local_cold:.2f}x local cold; "
          f"daemon peak RSS {rss:.0f} MiB (--memory 256 MiB; target <= +100 MiB)")


TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
DEFAULT_MEMORY_MIB = 256


def ensure_extracted_wheel(wheel: Path) -> Path:
    """The wheel extracted once under ``.bench/members/`` (the local copy)."""
    local = WORK / wheel.stem
    if not local.exists():
        t0 = time.monotonic()
        tmp = local.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(tmp)
        tmp.rename(local)
        print(f"extracted {wheel.name} in {time.monotonic() - t0:.1f}s")
    return local


def drop_tree_page_cache(root: Path) -> None:
    """Drop the kernel's cached pages of every file under ``root``."""
    drop_page_cache(*(Path(d, f) for d, _, files in os.walk(root) for f in files))


def import_torch(path: Path, pycache: Path) -> float:
    """Wall time of a fresh interpreter importing torch from ``path`` first on ``sys.path``
    (``-I``: the environment's own torch would be found only after it); checks which torch.
    Bytecode goes to ``pycache`` (``-X pycache_prefix``) on both sides: a mount is read-only, so
    without it every import from the mount compiles torch's sources again while the local copy
    reads the ``__pycache__`` its first import wrote."""
    code = f"import sys; sys.path.insert(0, {str(path)!r}); import torch; print(torch.__file__)"
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-I", "-X", f"pycache_prefix={pycache}", "-c", code],
                         capture_output=True, text=True, check=True).stdout.strip()
    took = time.monotonic() - t0
    if not out.startswith(str(path) + os.sep):
        raise RuntimeError(f"imported torch from {out}, not from {path}")
    return took


def _spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f}s (min {min(values):.2f}, max {max(values):.2f})"


def wheel_import(repeats: int = 3) -> None:
    """``import torch`` from the mounted wheel vs an extracted copy, cold and warm; then from a
    new mount over the disk cache the first one left (page caches dropped)."""
    if not TORCH_WHEEL.exists():
        raise SystemExit(f"no wheel at {TORCH_WHEEL}")
    local = ensure_extracted_wheel(TORCH_WHEEL)
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    runs: dict[str, list[float]] = {k: [] for k in (
        "local cold", "local warm", "mount cold", "mount warm", "daemon CPU cold", "peak RSS",
        "remount cold")}
    for run in range(repeats):
        drop_tree_page_cache(local)
        with tempfile.TemporaryDirectory(dir=WORK) as pycache:
            runs["local cold"].append(import_torch(local, Path(pycache)))
            runs["local warm"].append(import_torch(local, Path(pycache)))
        with fresh_cache() as cache:
            with (mount(TORCH_WHEEL, *cache) as (mp, pid),
                  tempfile.TemporaryDirectory(dir=WORK) as pycache):
                drop_page_cache(TORCH_WHEEL)
                cpu = cpu_seconds(pid)
                runs["mount cold"].append(import_torch(mp, Path(pycache)))
                runs["daemon CPU cold"].append(cpu_seconds(pid) - cpu)
                runs["mount warm"].append(import_torch(mp, Path(pycache)))
                runs["peak RSS"].append(peak_rss_mib(pid))
                counters = daemon_counters(mp)
            # A new daemon over the same disk cache (a restart, another mount of the wheel):
            # the decoded cells are on disk, no decode is needed; page caches dropped.
            with (mount(TORCH_WHEEL, *cache) as (mp, pid),
                  tempfile.TemporaryDirectory(dir=WORK) as pycache):
                drop_page_cache(TORCH_WHEEL)
                drop_tree_page_cache(Path(cache[1]))
                runs["remount cold"].append(import_torch(mp, Path(pycache)))
        print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in runs.items())
              + f"; counters {json.dumps(counters, sort_keys=True)}")
    cold = [m / v for m, v in zip(runs["mount cold"], runs["local cold"], strict=True)]
    warm = [m / v for m, v in zip(runs["mount warm"], runs["local warm"], strict=True)]
    again = [m / v for m, v in zip(runs["remount cold"], runs["local cold"], strict=True)]
    for name in ("local cold", "mount cold", "local warm", "mount warm", "daemon CPU cold",
                 "remount cold"):
        print(f"{name}: {_spread(runs[name])}")
    print(f"a new mount over the kept disk cache / local cold: median "
          f"{statistics.median(again):.2f}x (min {min(again):.2f}, max {max(again):.2f})")
    print(f"mount / local cold: median {statistics.median(cold):.2f}x (min {min(cold):.2f}, max "
          f"{max(cold):.2f}; target <= 1.25x); warm: median {statistics.median(warm):.2f}x (min "
          f"{min(warm):.2f}, max {max(warm):.2f}; target <= 1.1x); daemon peak RSS max "
          f"{max(runs['peak RSS']):.0f} MiB (--memory {DEFAULT_MEMORY_MIB} MiB; target <= "
          f"{DEFAULT_MEMORY_MIB + 100} MiB)")


def main() -> None:
    cases = {"cat": cat_and_checkpoints, "first-pass": after_the_first_pass, "loader": loader,
             "wheel-import": wheel_import}
    parser = argparse.ArgumentParser(prog="python -m bench.members")
    parser.add_argument("--case", choices=sorted(cases), action="append",
                        help="run only this case (repeatable; default: all)")
    for name in parser.parse_args().case or list(cases):
        cases[name]()


def cat_and_checkpoints() -> None:
    """``cat`` of the 2 GiB and 300 MB members, random reads on a fresh mount."""
    zeros, text, _, _ = ensure_archives()
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
