"""The kernel's caches through libfuse 3 (real mounts, real S3 server): pages are kept across
opens while a member's version is unchanged, dropped once the archive is replaced, and kept
again for the new version; a listing answers the lookups of its entries (readdirplus)."""

from __future__ import annotations

import json
import os
import random
import time

from robust.zips import plain_zip

from zipmount.stats import STATS_XATTR

TTL = 2
SETTLE = 20.0


def _stats(root) -> dict:
    return json.loads(os.getxattr(root, STATS_XATTR))


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_a_file_read_again_through_new_opens_comes_from_the_page_cache(zm, s3):
    data = random.Random("kc-reopen").randbytes(300_000)
    s3.put_bytes("data", "kc/reopen.zip", plain_zip({"a.bin": data, "b.txt": b"b\n"}))
    with zm.mounted("s3://data/kc/reopen.zip") as h:
        mp = h.mountpoint
        assert _read(mp / "a.bin") == data
        served = _stats(mp)["bytes_read"]
        assert served >= len(data)
        for _ in range(3):
            assert _read(mp / "a.bin") == data
        assert _stats(mp)["bytes_read"] == served, "a re-read went to the daemon, not the page cache"


def test_replaced_archive_drops_old_pages_then_keeps_the_new_ones(zm, s3):
    rnd = random.Random("kc-replace")
    old = {"a.bin": rnd.randbytes(200_000), "same.bin": rnd.randbytes(100_000)}
    new = {"a.bin": rnd.randbytes(250_000), "same.bin": rnd.randbytes(100_000)}
    key = "kc/replace/v.zip"
    s3.put_bytes("data", key, plain_zip(old))
    with zm.mounted(f"s3://data/{key}", "--ttl", str(TTL)) as h:
        mp = h.mountpoint
        for name in old:
            assert _read(mp / name) == old[name]
        s3.put_bytes("data", key, plain_zip(new))
        deadline = time.monotonic() + SETTLE
        pending = set(new)
        while pending:
            assert time.monotonic() < deadline, f"{sorted(pending)} still old {SETTLE}s after the change"
            for name in sorted(pending):
                try:
                    got = _read(mp / name)
                except OSError:  # ESTALE/EIO while the mount switches
                    continue
                assert got in (old[name], new[name]), f"{name}: bytes of neither version"
                if got == new[name]:
                    pending.discard(name)
            time.sleep(0.1)
        served = _stats(mp)["bytes_read"]
        for _ in range(3):
            for name in new:
                assert _read(mp / name) == new[name]
        assert _stats(mp)["bytes_read"] == served, "the new version's pages were not kept"


def test_listing_a_big_directory_gives_the_kernel_every_entrys_right_attributes(zm, s3):
    files = {f"d/f{i:03d}.txt": f"file {i}\n".encode() for i in range(200)}
    s3.put_bytes("data", "kc/listing.zip", plain_zip(files))
    with zm.mounted("s3://data/kc/listing.zip") as h:
        mp = h.mountpoint
        with os.scandir(mp / "d") as it:  # READDIRPLUS in several replies, resumed by offset
            sizes = {e.name: e.stat().st_size for e in it}
        assert sizes == {name[2:]: len(data) for name, data in files.items()}


def test_a_directory_listed_with_attributes_lists_the_new_version_once_the_archive_is_replaced(
        zm, s3):
    old = {f"d/f{i:03d}.txt": b"o" * (i + 1) for i in range(120)}
    new = {f"d/g{i:03d}.txt": b"n" * (2 * i + 3) for i in range(90)} | {"d/f000.txt": b"new size"}
    key = "kc/relist.zip"
    s3.put_bytes("data", key, plain_zip(old))

    def sizes(files: dict[str, bytes]) -> dict[str, int]:
        return {name[2:]: len(data) for name, data in files.items()}

    with zm.mounted(f"s3://data/{key}", "--ttl", str(TTL)) as h:
        mp = h.mountpoint

        def listing() -> dict[str, int]:
            with os.scandir(mp / "d") as it:  # READDIRPLUS once its entries were looked up
                return {e.name: e.stat().st_size for e in it}

        for _ in range(2):  # the second time from the listing kept for this version
            assert listing() == sizes(old)
        s3.put_bytes("data", key, plain_zip(new))
        deadline = time.monotonic() + SETTLE
        while True:
            try:
                if listing() == sizes(new):
                    break
            except OSError:  # ESTALE while the mount switches
                pass
            assert time.monotonic() < deadline, f"the old listing still shows {SETTLE}s after"
            time.sleep(0.1)
        for _ in range(2):
            assert listing() == sizes(new)
        assert {name: os.stat(mp / "d" / name).st_size for name in sizes(new)} == sizes(new)
