"""Objects that change under a live mount: replaced (new ETag) or deleted.

Contract (README "Consistency"): a mount serves one version of each archive at a time. Every
range GET carries ``If-Match: <ETag of that version>``, so bytes of two versions are never
mixed: a read needing bytes the cache does not hold fails with ESTALE (or EIO) once the object
was replaced. The old version is served until revalidation, ``--ttl`` seconds (default 60) after
the last check; then the new version appears (new opens) and a deleted object is ENOENT. The
kernel's attribute/entry caches use the same TTL.

The tests use ``--ttl 2``; reads that must reach the daemon (not the kernel page cache) use
O_DIRECT.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from collections.abc import Callable

import pytest
from robust.harness import BUCKET, guarded, read_direct, read_file, stack, wait_for
from robust.zips import plain_zip, random_files

TTL = 2.0
STALE = (errno.ESTALE, errno.EIO)


def _versions(tag: str, n: int = 3) -> list[dict[str, bytes]]:
    """``n`` versions of one archive's files: same names, new bytes; some sizes change."""
    out = []
    for v in range(n):
        files = random_files(f"{tag}-v{v}", 6, 96 * 1024)
        files["grows.bin"] = random.Random(f"{tag}{v}").randbytes(40_000 + 30_000 * v)
        out.append(files)
    return out


@pytest.fixture(scope="module")
def st(tmp_path_factory):
    with stack(tmp_path_factory.mktemp("changes")) as s:
        yield s


def _mount(st, key, *extra):
    return st.mounted(key, "--ttl", str(TTL), "--timeout", "5", *extra)


def _classify(data: bytes, name: str, versions: list[dict[str, bytes]], offset: int = 0) -> int:
    """Which version ``data`` (read at ``offset`` of ``name``) comes from; AssertionError if
    none (bytes mixed from two versions, or garbage)."""
    hits = [i for i, v in enumerate(versions) if v[name][offset:offset + len(data)] == data]
    assert hits, f"{name}@{offset}+{len(data)}: bytes match no single version (mixed/corrupt)"
    return hits[0]


def _shows(mp, files: dict[str, bytes], read=read_direct) -> Callable[[], bool]:
    """A condition for ``wait_for``: new reads of every file under ``mp`` give ``files``."""
    def check() -> bool:
        try:
            return all(read(mp / n, 0, 1 << 20) == data for n, data in files.items())
        except OSError:
            return False
    return check


def test_replaced_object_old_version_then_new(st):
    v1, v2 = _versions("replace", 2)
    key = "changes/replace.zip"
    st.put(key, plain_zip(v1))
    with _mount(st, key) as h:
        mp = h.mountpoint
        warm = ["f000.bin", "f001.bin", "grows.bin"]
        for name in warm:
            assert read_direct(mp / name, 0, 1 << 20) == v1[name]
        st.proxy.clear()
        st.put(key, plain_zip(v2))
        t_replaced = time.monotonic()
        # Until revalidation: the cached part of v1 is served, consistently; anything that
        # would need new bytes fails with ESTALE/EIO (the If-Match GET answers 412).
        for name in warm:
            out = guarded(lambda n=name: read_direct(mp / n, 0, 1 << 20), 20)
            if time.monotonic() - t_replaced < TTL * 0.8:
                assert out.error in STALE or out.value == v1[name], (name, out)
        out = guarded(lambda: read_direct(mp / "f004.bin", 0, 1 << 20), 20)
        if time.monotonic() - t_replaced < TTL * 0.8:
            assert out.error in STALE, f"uncached member after the change: {out}"
            assert "ESTALE" in h.stderr() or "changed" in h.stderr(), h.stderr()[-2000:]
        # After revalidation the new version appears, through the page cache too.
        assert wait_for(_shows(mp, v2, lambda p, *_: read_file(p)), TTL * 3 + 5, 0.2), \
            "v2 never appeared"
        # The kernel's attribute cache catches up within the TTL.
        assert wait_for(lambda: os.stat(mp / "grows.bin").st_size == len(v2["grows.bin"]),
                        TTL * 2 + 1, 0.2)
        assert h.proc.poll() is None


def test_every_range_get_is_pinned_with_if_match(st):
    v1, v2 = _versions("ifmatch", 2)
    key = "changes/ifmatch.zip"
    etag1 = st.put(key, plain_zip(v1))
    st.put("changes/pfx/one.zip", plain_zip(v1))
    for source in (key, "changes/pfx/"):
        with _mount(st, source) as h:
            st.proxy.clear()
            base = h.mountpoint if source == key else h.mountpoint / "one.zip"
            for name in v1:
                assert read_direct(base / name, 0, 1 << 20) == v1[name]
            gets = st.proxy.log(lambda r: r.is_range_get)
            assert gets, "no range GET seen by the proxy"
            missing = [r.path for r in gets if not r.header("If-Match")]
            assert not missing, f"range GETs without If-Match: {missing}"
            if source == key:
                assert {r.header("If-Match") for r in gets} == {etag1}
    del v2


def test_uncached_read_after_replace_is_estale_then_revalidates(st):
    v1, v2 = _versions("estale", 2)
    key = "changes/estale.zip"
    st.put(key, plain_zip(v1))
    with _mount(st, key, "--ttl", "3600") as h:  # no revalidation by the TTL in this test
        mp = h.mountpoint
        assert sorted(os.listdir(mp)) == sorted(v1)
        fd = os.open(mp / "f003.bin", os.O_RDONLY | os.O_DIRECT)  # opened on v1
        try:
            st.put(key, plain_zip(v2))
            # f002 was never fetched: its range GET carries v1's ETag, the store answers 412.
            out = guarded(lambda: read_direct(mp / "f002.bin", 0, 1 << 20), 20)
            assert out.error in STALE, out
            log = h.stderr()
            assert "changed on the server" in log or "ETag" in log, log[-2000:]
            # The handle opened on v1 never gets v2's bytes: v1's (cached) or ESTALE.
            out = guarded(lambda: _pread_direct(fd, 0, 1 << 20), 20)
            assert out.error in STALE or out.value == v1["f003.bin"], out
        finally:
            os.close(fd)

        # The 412 made the mount revalidate at once, not after the hour-long TTL: new opens
        # see v2.
        assert wait_for(_shows(mp, v2), 15, 0.2), "v2 never appeared"
        assert h.proc.poll() is None


def test_remount_within_ttl_needs_no_request_and_recovers_from_a_change(st):
    """A remount with the same cache dir within the TTL of the last check trusts the remembered
    identity and persisted index: one HEAD only (the mount's live check of the endpoint). If
    the object changed meanwhile, the first read that needs the server gets ESTALE and the
    mount switches to the new version."""
    v1, v2 = _versions("remount", 2)
    key = "changes/remount.zip"
    st.put(key, plain_zip(v1))
    cache = st.workdir / "remount-cache"
    opts = ("--ttl", "600", "--cache-dir", str(cache))
    with _mount(st, key, *opts) as h:
        assert read_file(h.mountpoint / "f000.bin") == v1["f000.bin"]
    st.proxy.clear()
    with _mount(st, key, *opts) as h:
        mp = h.mountpoint
        assert sorted(os.listdir(mp)) == sorted(v1)
        assert read_file(mp / "f000.bin") == v1["f000.bin"]
        assert [(r.method, r.path) for r in st.proxy.log()] == [
            ("HEAD", f"/{BUCKET}/{key}")], "a remount within the TTL made requests beyond " \
            "its live check"
        st.put(key, plain_zip(v2))
        # f003.bin sits in the middle of the archive: neither the first mount's reads (f000 and
        # what was fetched ahead of it) nor the tail read for the index cached its blocks.
        out = guarded(lambda: read_direct(mp / "f003.bin", 0, 1 << 20), 20)
        assert out.error in STALE, out
        assert wait_for(_shows(mp, v2), 15, 0.2), "v2 never appeared"
    st.proxy.clear()
    with _mount(st, key, "--ttl", "0", "--cache-dir", str(cache)) as h:
        assert read_file(h.mountpoint / "f001.bin") == v2["f001.bin"]
        assert st.proxy.log(), "--ttl 0: the remount must check the object"
    # Replaced again, and of the remembered version only the identity is left in the cache
    # (its index and blocks were evicted): the mount finds out while opening it, and serves
    # the new version.
    (v3,) = _versions("remount-v3", 1)
    st.put(key, plain_zip(v3))
    for kept in [*cache.rglob("*.index.json"), *cache.rglob("*.run")]:
        kept.unlink()
    with _mount(st, key, *opts) as h:
        assert read_file(h.mountpoint / "f002.bin") == v3["f002.bin"]


def test_prefix_remount_within_ttl_needs_no_listing(st):
    """A prefix mount remembers its listing too: a remount within the TTL (``--offline``: not
    even the live check) lists and reads what it read before without any request; a new
    archive shows once the listing is older than the TTL."""
    (v1,) = _versions("premount", 1)
    st.put("changes/premount/a.zip", plain_zip(v1))
    st.put("changes/premount/sub/b.zip", plain_zip(v1))
    cache = st.workdir / "premount-cache"
    opts = ("--cache-dir", str(cache))

    def walk(mp):
        assert sorted(os.listdir(mp)) == ["a.zip", "sub"]
        assert os.listdir(mp / "sub") == ["b.zip"]
        for archive in (mp / "a.zip", mp / "sub" / "b.zip"):
            assert read_file(archive / "f000.bin") == v1["f000.bin"]

    with _mount(st, "changes/premount/", "--ttl", "600", *opts) as h:
        walk(h.mountpoint)
    st.proxy.clear()
    with _mount(st, "changes/premount/", "--ttl", "600", "--offline", *opts) as h:
        walk(h.mountpoint)
        assert st.proxy.log() == [], "a remount within the TTL made requests"
    st.put("changes/premount/c.zip", plain_zip(v1))
    with _mount(st, "changes/premount/", "--ttl", str(TTL), *opts) as h:
        assert wait_for(lambda: "c.zip" in os.listdir(h.mountpoint), TTL * 3 + 5, 0.2)
        assert read_file(h.mountpoint / "c.zip" / "f001.bin") == v1["f001.bin"]


def test_server_ignoring_if_match_still_never_mixes_versions(st):
    """Some S3-compatible stores and caching proxies ignore If-Match. The response's own ETag
    then tells that the bytes belong to another version: still ESTALE, never mixed bytes."""
    big = 17 * 2**20  # bigger than what is CRC-checked whole on open
    v1 = {"big.bin": random.Random("nomatch1").randbytes(big), "small.bin": b"1" * 5000}
    v2 = {"big.bin": random.Random("nomatch2").randbytes(big), "small.bin": b"2" * 5000}
    key = "changes/nomatch.zip"
    st.put(key, plain_zip(v1))
    with _mount(st, key, "--ttl", "3600") as h:
        mp = h.mountpoint
        assert read_direct(mp / "big.bin", 0, 65536) == v1["big.bin"][:65536]
        st.proxy.drop_headers = {"if-match"}
        try:
            st.put(key, plain_zip(v2))  # same layout, other bytes
            # small.bin came with the tail read for the index: it may still be served, as v1
            for name, offset in (("big.bin", 9 * 2**20), ("small.bin", 0)):
                out = guarded(lambda n=name, o=offset: read_direct(mp / n, o, 65536), 20)
                old, new = (v[name][offset:offset + 65536] for v in (v1, v2))
                assert out.error in STALE or (name == "small.bin" and out.value == old), (
                    f"{name}: {out}: "
                    + ("bytes of the new version" if out.value == new else "wrong bytes"))
        finally:
            st.proxy.drop_headers = set()


def test_deleted_object_enoent_after_revalidation(st):
    (v1,) = _versions("deleted", 1)
    key = "changes/deleted.zip"
    st.put(key, plain_zip(v1))
    with _mount(st, key) as h:
        mp = h.mountpoint
        assert read_file(mp / "f000.bin") == v1["f000.bin"]
        st.delete(key)

        def gone() -> bool:
            try:
                os.stat(mp / "f001.bin")
            except FileNotFoundError:
                return True
            return False
        assert wait_for(gone, TTL * 3 + 5, 0.2), "deleted archive still visible"
        with pytest.raises(FileNotFoundError):
            read_file(mp / "f005.bin")
        assert h.proc.poll() is None


def test_deleted_archive_in_prefix_mount(st):
    (v1,) = _versions("pdel", 1)
    st.put("changes/pdel/keep.zip", plain_zip(v1))
    st.put("changes/pdel/gone.zip", plain_zip(v1))
    with _mount(st, "changes/pdel/") as h:
        mp = h.mountpoint
        assert sorted(os.listdir(mp)) == ["gone.zip", "keep.zip"]
        assert read_file(mp / "gone.zip" / "f000.bin") == v1["f000.bin"]
        st.delete("changes/pdel/gone.zip")
        assert wait_for(lambda: sorted(os.listdir(mp)) == ["keep.zip"], TTL * 3 + 5, 0.2)

        def gone() -> bool:
            try:
                os.stat(mp / "gone.zip" / "f001.bin")
            except FileNotFoundError:
                return True
            return False
        assert wait_for(gone, TTL * 3 + 5, 0.2)
        assert read_file(mp / "keep.zip" / "f001.bin") == v1["f001.bin"]


def test_broken_archive_replaced_by_a_good_one(st):
    """A prefix mount shows a broken archive as an empty directory; once the object is
    replaced by a readable archive, its contents appear after the TTL, without a remount."""
    (v1,) = _versions("fixed", 1)
    key = "changes/fixed/x.zip"
    st.put(key, b"not a zip yet " * 100)
    st.put("changes/fixed/ok.zip", plain_zip(v1))
    with _mount(st, "changes/fixed/") as h:
        mp = h.mountpoint
        assert os.listdir(mp / "x.zip") == []
        st.put(key, plain_zip(v1))

        def fixed() -> bool:
            try:
                return sorted(os.listdir(mp / "x.zip")) == sorted(v1)
            except OSError:
                return False
        assert wait_for(fixed, TTL * 3 + 5, 0.2), "the repaired archive never appeared"
        assert read_file(mp / "x.zip" / "f001.bin") == v1["f001.bin"]
        assert read_file(mp / "ok.zip" / "f001.bin") == v1["f001.bin"]


def test_concurrent_readers_never_see_mixed_versions(st):
    """8 threads open, read in 3 pieces (O_DIRECT: each piece is its own FUSE read) and close
    members while the object is replaced twice, then deleted. Each piece must come from one
    version and all pieces of one open file from the same version; failures may only be
    ESTALE/EIO (and ENOENT once deleted). Every reader sees the last version after the TTL, and
    ENOENT after the deletion."""
    versions = _versions("concurrent", 3)
    key = "changes/concurrent.zip"
    st.put(key, plain_zip(versions[0]))
    names = sorted(versions[0])
    stop, deleted = threading.Event(), threading.Event()
    problems: list[str] = []
    seen: dict[int, int] = {}

    def allowed(exc: OSError) -> bool:
        return exc.errno in STALE or (deleted.is_set() and exc.errno == errno.ENOENT)
    lock = threading.Lock()

    def reader(seed: int, mp) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            name = rng.choice(names)
            size = min(len(v[name]) for v in versions)
            cuts = sorted(rng.sample(range(1, size), 2))
            try:
                fd = os.open(mp / name, os.O_RDONLY | os.O_DIRECT)
            except OSError as exc:
                if not allowed(exc):
                    problems.append(f"open {name}: {exc}")
                continue
            try:
                got = set()
                for a, b in ((0, cuts[0]), (cuts[0], cuts[1]), (cuts[1], size)):
                    data = _pread_direct(fd, a, b - a)
                    got.add(_classify(data, name, versions, a))
                if len(got) != 1:
                    problems.append(f"{name}: one open file served versions {sorted(got)}")
                version = got.pop()
                with lock:
                    seen[version] = seen.get(version, 0) + 1
            except AssertionError as exc:
                problems.append(str(exc))
            except OSError as exc:
                if not allowed(exc):
                    problems.append(f"read {name}: {exc}")
            finally:
                os.close(fd)

    with _mount(st, key) as h:
        mp = h.mountpoint
        threads = [threading.Thread(target=reader, args=(i, mp), daemon=True) for i in range(8)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.5)
            st.put(key, plain_zip(versions[1]))
            time.sleep(TTL + 1.5)
            st.put(key, plain_zip(versions[2]))

            def latest() -> bool:
                try:
                    return all(read_direct(mp / n, 0, 1 << 20) == versions[2][n] for n in names)
                except OSError:
                    return False
            assert wait_for(latest, TTL * 3 + 5, 0.2), "the last version never appeared"
            time.sleep(0.5)
            deleted.set()
            st.delete(key)

            def gone() -> bool:
                try:
                    os.stat(mp / names[0])
                except FileNotFoundError:
                    return True
                return False
            assert wait_for(gone, TTL * 3 + 5, 0.2), "the deleted archive stayed visible"
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not any(t.is_alive() for t in threads), "a reader hung"
        assert not problems, problems[:10]
        assert len(seen) == 3, f"readers saw only versions {seen}: not every change was exercised"
        assert h.proc.poll() is None


def _pread_direct(fd: int, offset: int, size: int) -> bytes:
    """O_DIRECT pread of an unaligned range: read the aligned span, then slice."""
    import mmap

    start = offset // 4096 * 4096
    end = offset + size
    span = (end - start + 4095) // 4096 * 4096
    buf = mmap.mmap(-1, span)
    try:
        n = os.preadv(fd, [buf], start)
        return bytes(buf[offset - start: min(n, end - start)])
    finally:
        buf.close()
