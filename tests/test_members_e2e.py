"""Compressed and stored member reads through a real FUSE mount of local archive files.

- a bzip2 or LZMA bomb (512 MiB of zeros in a few hundred bytes) is read with the daemon's peak
  RSS (VmHWM in /proc) growing by a bounded amount, forward, backward and from a second handle;
- out-of-order and concurrent reads of a deflated member (O_DIRECT, straight to the daemon)
  return the right bytes;
- spill files that cannot be written (a full file system: ENOSPC; a read-only one: EROFS) fall
  back to decompression, never an error to read(2); a spill file deleted behind the daemon is
  made again;
- a stored member that declares more bytes than it holds is EIO, never its neighbour's bytes, and
  a big stored member with a wrong CRC-32 fails the read that completes it;
- concurrent random readers of one big deflated member (O_DIRECT reads from many handles, and
  page faults of a shared mmap) get the right bytes from its decoded cells, and an archive
  replaced on an S3 server never serves the old version's decoded cells (nor does a remount on
  the same cache directory).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import random
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from robust.harness import (
    guarded,
    peak_rss_bytes,
    read_direct,
    read_file,
    reset_peak_rss,
    stack,
    wait_for,
)
from robust.zips import RawMember, raw_zip
from support.mount import Zipmount
from unit.test_members import BZIP2, DEFLATE, LZMA, SPILL_PLAIN, bomb, member, text

from zipmount.archive.layout import WHOLE_MEMBER_MAX
from zipmount.archive.members import SPILL_MIN

MiB = 2**20
BOMB = 512 * MiB
OUT_OF_ORDER = text(11, 24 * MiB)
BIG_STORED = random.Random(12).randbytes(WHOLE_MEMBER_MAX + MiB + 7)
LIBRARY = text(16, 20 * MiB + 999)  # a big deflated member read page by page at random


@pytest.fixture(scope="module")
def zips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("member-zips")
    pad = b"\xfe\xca" + struct.pack("<H", 96) + bytes(96)  # lie by less than the local extra
    archives = {
        "bombs.zip": [bomb("bzip2.bin", BZIP2, BOMB), bomb("lzma.bin", LZMA, BOMB)],
        "order.zip": [member("text.txt", DEFLATE, OUT_OF_ORDER)],
        "library.zip": [member("lib.so", DEFLATE, LIBRARY)],
        "spill.zip": [member("m", BZIP2, SPILL_PLAIN)],
        "stored.zip": [RawMember(b"liar", b"L" * 1000, file_size=1050, compress_size=1050,
                                 extra=pad),
                       RawMember(b"neighbour", b"N" * 1000),
                       RawMember(b"big.bin", BIG_STORED),
                       RawMember(b"bad-crc.bin", BIG_STORED, crc=zlib.crc32(BIG_STORED) ^ 1)],
    }
    for name, members in archives.items():
        (root / name).write_bytes(raw_zip(members))
    return root


@pytest.fixture(scope="module")
def local(tmp_path_factory, fuse) -> Zipmount:
    return Zipmount(workdir=tmp_path_factory.mktemp("members-zm"))


def mounted(local: Zipmount, archive: Path, *opts: str):
    return local.mounted(str(archive), "--log-level", "INFO", *opts, storage=False)


def _pread(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return os.pread(f.fileno(), size, offset)


@pytest.mark.parametrize("name", ["bzip2.bin", "lzma.bin"])
def test_a_bzip2_or_lzma_bomb_keeps_the_daemon_memory_bounded(local, zips, name):
    with mounted(local, zips / "bombs.zip", "--no-disk-cache", "--memory", "32MiB") as h:
        path = h.mountpoint / name
        assert os.stat(path).st_size == BOMB
        reset_peak_rss(h.pid)
        before = peak_rss_bytes(h.pid)
        assert read_direct(path, 0, 128 * 1024) == bytes(128 * 1024)
        assert read_direct(path, 96 * MiB, MiB) == bytes(MiB)  # forward: streams on
        assert read_direct(path, 4096, 4096) == bytes(4096)  # backward, no disk cache: restarts
        with open(path, "rb") as a, open(path, "rb") as b:  # two handles at once
            assert a.read(MiB) == bytes(MiB) and b.read(MiB) == bytes(MiB)
        grew = peak_rss_bytes(h.pid) - before
    print(f"{name}: daemon peak RSS grew {grew / MiB:.0f} MiB")
    # zipfile's streams took the whole member (+512 MiB, +1 GiB for bzip2) on the first read
    assert grew < 64 * MiB, f"daemon peak RSS grew {grew / MiB:.0f} MiB reading a {name} bomb"


def test_out_of_order_and_concurrent_reads_of_a_deflated_member_are_right(local, zips):
    plain = OUT_OF_ORDER
    with mounted(local, zips / "order.zip", "--no-disk-cache") as h:
        path = h.mountpoint / "text.txt"
        blocks = list(range(0, len(plain), 128 * 1024))
        random.Random(13).shuffle(blocks)
        errors: list[str] = []

        def reader(part: list[int]) -> None:
            for offset in part:
                got = read_direct(path, offset, 128 * 1024)
                if got != plain[offset: offset + 128 * 1024]:
                    errors.append(f"wrong bytes at {offset}")

        threads = [threading.Thread(target=reader, args=(blocks[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a reader hung"
        assert not errors, errors[:5]
        assert read_file(path) == plain  # and in order, through the page cache


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def jump_back(path: Path) -> None:
    """Read past the stream's window, then step back: what makes a bzip2 member spill."""
    assert read_direct(path, SPILL_MIN, 4096) == SPILL_PLAIN[SPILL_MIN: SPILL_MIN + 4096]
    assert read_direct(path, 8192, 4096) == SPILL_PLAIN[8192: 12288]


def test_a_spill_file_on_a_full_file_system_falls_back_to_decompression(local, zips, tmp_path):
    with tmpfs(tmp_path / "small", "1m") as cache, \
            mounted(local, zips / "spill.zip", "--cache-dir", str(cache / "c"),
                    "--cache-size", "64MiB") as h:
        path = h.mountpoint / "m"
        out = guarded(lambda: jump_back(path), 120)
        assert out.ok, out
        assert read_file(path) == SPILL_PLAIN
        log = h.stderr()
    assert "cannot write the spill file" in log and "No space left" in log, log[-3000:]


def test_a_spill_file_on_a_read_only_file_system_falls_back_to_decompression(local, zips, tmp_path):
    with tmpfs(tmp_path / "ro", "64m") as cache, \
            mounted(local, zips / "spill.zip", "--cache-dir", str(cache / "c"),
                    "--cache-size", "60MiB") as h:
        files = cache / "c" / "files"
        subprocess.run(["mount", "--bind", str(files), str(files)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(files)], check=True)
            path = h.mountpoint / "m"
            out = guarded(lambda: jump_back(path), 120)
            assert out.ok, out
        finally:
            subprocess.run(["umount", "-l", str(files)], check=False)
        log = h.stderr()
    assert "cannot write the spill file" in log and "Read-only file system" in log, log[-3000:]


def test_a_spill_file_deleted_behind_the_daemon_is_made_again(local, zips, tmp_path):
    cache = tmp_path / "cache"
    with mounted(local, zips / "spill.zip", "--cache-dir", str(cache)) as h:
        path = h.mountpoint / "m"
        jump_back(path)
        (spill,) = cache.glob("files/*/*.spill")
        spill.unlink()
        jump_back(path)
        assert spill.exists() and spill.stat().st_size == len(SPILL_PLAIN)


def test_stored_members_never_serve_a_neighbours_bytes_and_big_ones_are_crc_checked(local, zips):
    with mounted(local, zips / "stored.zip", "--no-disk-cache") as h:
        mp = h.mountpoint
        assert guarded(lambda: read_file(mp / "liar"), 30).error == errno.EIO
        assert read_file(mp / "neighbour") == b"N" * 1000
        assert read_file(mp / "big.bin") == BIG_STORED
        out = guarded(lambda: read_file(mp / "bad-crc.bin"), 60)
        assert out.error == errno.EIO, out
        log = h.stderr()
    assert "runs into the next member" in log and "bad-crc.bin: CRC-32 mismatch" in log, log[-3000:]


def test_concurrent_random_readers_of_one_deflated_member_get_the_right_bytes(local, zips):
    plain = LIBRARY
    with mounted(local, zips / "library.zip") as h:  # with a disk cache: both tiers
        path = h.mountpoint / "lib.so"
        errors: list[str] = []

        def direct_reads(seed: int) -> None:  # a handle per read, straight to the daemon
            rng = random.Random(seed)
            for _ in range(60):
                offset = rng.randrange(len(plain) - 4096)
                if read_direct(path, offset, 4096) != plain[offset: offset + 4096]:
                    errors.append(f"wrong bytes at {offset} (O_DIRECT)")

        def page_faults(view: mmap.mmap, seed: int) -> None:  # one mapping, many threads
            rng = random.Random(seed)
            for _ in range(200):
                page = rng.randrange(len(plain) // 4096) * 4096
                if view[page: page + 4096] != plain[page: page + 4096]:
                    errors.append(f"wrong bytes at {page} (mmap)")

        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as view:
            threads = [threading.Thread(target=direct_reads, args=(seed,)) for seed in range(4)]
            threads += [threading.Thread(target=page_faults, args=(view, seed))
                        for seed in range(4, 8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(180)
            assert not any(t.is_alive() for t in threads), "a reader hung"
        assert not errors, errors[:5]
        assert read_file(path) == plain  # and in order


@pytest.fixture(scope="module")
def st(tmp_path_factory):
    """An S3 server, and mounts of it (the name marks the tests fuse and s3)."""
    with stack(tmp_path_factory.mktemp("members-s3")) as s:
        yield s


def test_a_replaced_archive_never_serves_its_old_decoded_bytes(st, tmp_path):
    old, new = LIBRARY, text(17, len(LIBRARY))  # same name, size and offset; other bytes
    key = "members/library.zip"
    st.put(key, raw_zip([member("lib.so", DEFLATE, old)]))
    offsets = random.Random(18).sample(range(len(old) - 4096), 30)
    cache = tmp_path / "cache"
    with st.mounted(key, "--ttl", "2", "--cache-dir", str(cache)) as h:
        path = h.mountpoint / "lib.so"
        for offset in offsets:
            assert read_direct(path, offset, 4096) == old[offset: offset + 4096]
        assert list(cache.glob("files/*/*m*.65536.*/*.run")), "no decoded cell was kept"
        st.put(key, raw_zip([member("lib.so", DEFLATE, new)]))
        assert wait_for(lambda: _reads(path, 0) == new[:4096], 20, 0.2), "never saw the new one"
        for offset in offsets:  # all were cached decoded: the new version is decoded anew
            assert read_direct(path, offset, 4096) == new[offset: offset + 4096], offset
    with st.mounted(key, "--cache-dir", str(cache)) as h:  # a remount on the same cache
        for offset in offsets:
            assert read_direct(h.mountpoint / "lib.so", offset, 4096) == \
                new[offset: offset + 4096], offset


def _reads(path: Path, offset: int) -> bytes | None:
    try:
        return read_direct(path, offset, 4096)
    except OSError:  # ESTALE until the mount revalidates
        return None
