"""The FUSE operations called directly (no mount): the kernel-cache bookkeeping stays bounded,
and what it forgets never lets the kernel mix versions; a handle keeps its version's attributes."""

from __future__ import annotations

import errno
import io
import random
import time
import zipfile
from types import SimpleNamespace

import pytest
from support.fuseinfo import file_info
from support.stores import MemoryStore

from zipmount.config import CacheConfig
from zipmount.engine import Engine
from zipmount.fuse.operations import FuseError, ZipOperations
from zipmount.fuse.policy import KernelCachePolicy
from zipmount.source import StorageOptions


def _fi():
    return file_info()


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(1200):
            zf.writestr(f"d{i // 100:02d}/f{i:04d}.txt", f"file {i}\n")
    engine = Engine(StorageOptions(), CacheConfig(memory=8 << 20))
    yield engine
    engine.close()


def _ops(engine: Engine, path: str, ttl: float, max_tracked_paths: int = 65536) -> ZipOperations:
    return ZipOperations(engine.open_tree(path), engine.stats, ttl=ttl,
                         policy=KernelCachePolicy(ttl, max_tracked_paths=max_tracked_paths))


def _names() -> list[str]:
    return [f"/d{i // 100:02d}/f{i:04d}.txt" for i in range(1200)]


def test_bookkeeping_stays_bounded_after_stating_many_paths(archive, tmp_path):
    ops = _ops(archive, str(tmp_path / "many.zip"), ttl=60, max_tracked_paths=500)
    for name in _names():
        ops.getattr(name)
    for d in range(12):
        ops.opendir(f"/d{d:02d}", _fi())
    assert ops.policy.tracked_paths() <= 2 * 500
    assert ops.policy.tracked()["attributes"] == 500


def test_readdirplus_entries_count_as_stated_and_stay_bounded(archive, tmp_path):
    ops = _ops(archive, str(tmp_path / "many.zip"), ttl=60, max_tracked_paths=150)
    for d in range(12):
        entries = list(ops.readdir_plus(f"/d{d:02d}", 0))
        assert [e[0] for e in entries[:2]] == [".", ".."] and len(entries) == 102
        assert all(complete for _, _, complete in entries[2:])
    assert ops.policy.tracked()["attributes"] == 150


def test_a_path_forgotten_within_the_attr_timeout_is_read_past_the_page_cache(archive, tmp_path):
    """The kernel may still hold attributes of a version the bookkeeping no longer knows: without
    a session to invalidate them through, the handle reads past the page cache."""
    ops = _ops(archive, str(tmp_path / "many.zip"), ttl=60, max_tracked_paths=100)
    names = _names()
    for name in names:
        ops.getattr(name)
    fi = _fi()
    ops.open(names[0], fi)  # evicted long ago, but not 60 s ago
    assert fi.direct_io == 1 and fi.keep_cache == 0
    ops.release(names[0], fi)
    fi = _fi()
    ops.open(names[-1], fi)  # still known: first open drops old pages, the next keeps them
    assert fi.direct_io == 0 and fi.keep_cache == 0
    ops.release(names[-1], fi)
    fi = _fi()
    ops.open(names[-1], fi)
    assert fi.direct_io == 0 and fi.keep_cache == 1
    ops.release(names[-1], fi)


def test_bookkeeping_older_than_the_attr_timeout_is_dropped_unless_a_handle_is_open(archive, tmp_path):
    ops = _ops(archive, str(tmp_path / "many.zip"), ttl=0.05)
    names = _names()
    held = _fi()
    ops.getattr(names[0])
    ops.open(names[0], held)
    for name in names[1:500]:
        ops.getattr(name)
    time.sleep(0.1)
    ops.getattr(names[-1])
    assert ops.policy.tracked()["attributes"] == 2
    assert ops.policy.remembers(names[0]) and ops.policy.remembers(names[-1])
    fi = _fi()
    ops.open(names[1], fi)  # the kernel's attributes expired with the entry: pages are dropped
    assert fi.direct_io == 0 and fi.keep_cache == 0
    ops.release(names[1], fi)
    ops.release(names[0], held)
    assert ops.policy.tracked()["open_paths"] == 0 and ops.open_handles() == 0


def test_a_directory_keeps_its_cached_entries_while_its_listing_is_unchanged(archive, tmp_path):
    ops = _ops(archive, str(tmp_path / "many.zip"), ttl=60)
    first, again, other = _fi(), _fi(), _fi()
    ops.opendir("/d00", first)
    ops.opendir("/d00", again)
    ops.opendir("/d01", other)
    assert (first.cache_readdir, first.keep_cache) == (1, 0)
    assert (again.cache_readdir, again.keep_cache) == (1, 1)
    assert (other.cache_readdir, other.keep_cache) == (1, 0)


def test_listings_carry_attributes_only_where_entries_were_looked_up_and_that_memory_is_bounded(
        archive, tmp_path):
    ops = _ops(archive, str(tmp_path / "many.zip"), ttl=60, max_tracked_paths=5)
    assert not ops.wants_plus("/d00")
    ops.getattr("/d00/f0001.txt")
    assert ops.wants_plus("/d00") and not ops.wants_plus("/d01")
    ops.getattr("/d00")
    assert ops.wants_plus("/")
    for d in range(1, 12):
        ops.getattr(f"/d{d:02d}/f{d * 100:04d}.txt")
    assert ops.policy.tracked()["looked_up_dirs"] == 5
    assert not ops.wants_plus("/d00") and ops.wants_plus("/d11")


def test_a_readdirplus_from_any_offset_answers_each_entry_as_its_lookup_does(archive, tmp_path):
    ops = _ops(archive, str(tmp_path / "many.zip"), ttl=60)
    names = [".", "..", *(f"f{i:04d}.txt" for i in range(100, 200))]
    for offset in (0, 1, 2, 57, 101, 102, 500):
        for _ in range(2):  # the second time from the listing kept for this archive version
            entries = list(ops.readdir_plus("/d01", offset))
            assert [name for name, _, _ in entries] == names[offset:]
            for name, attrs, complete in entries:
                assert complete == (name not in (".", ".."))
                if complete:
                    assert attrs == ops.getattr(f"/d01/{name}")
    root = list(ops.readdir_plus("/", 0))
    assert [(n, a) for n, a, _ in root[2:]] == [(f"d{d:02d}", ops.getattr(f"/d{d:02d}"))
                                                 for d in range(12)]


def _zip(members: dict[str, bytes], year: int) -> bytes:
    """A zip of stored ``members``, each dated ``year`` (versions told apart by their mtimes too)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, (year, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


@pytest.fixture
def replaced(tmp_path):
    """A prefix in memory holding an archive and a plain object; ``swap()`` replaces both on the
    store (the archive's member shrinks, another member goes, the object shrinks) and has the
    tree relist, as its revalidation does once the TTL is up."""
    rng = random.Random(7)
    old = {"z.bin": rng.randbytes(200_000), "gone.txt": b"only in the first version\n"}
    new = {"z.bin": rng.randbytes(5000)}
    store = MemoryStore()
    store.put("bucket/p/a.zip", _zip(old, 2001))
    store.put("bucket/p/notes.txt", old["z.bin"][:70_000])
    engine = Engine(StorageOptions(), CacheConfig(memory=16 << 20))
    tree = engine.tree_for(store, "bucket/p/", ttl=60)

    def swap() -> None:
        store.replace("bucket/p/a.zip", _zip(new, 2002))
        store.replace("bucket/p/notes.txt", new["z.bin"][:100])
        tree.relist()

    yield SimpleNamespace(ops=ZipOperations(tree, engine.stats, ttl=60), old=old, swap=swap)
    engine.close()


def test_getattr_with_a_handle_answers_the_version_that_handle_reads_after_a_replacement(replaced):
    """The kernel asks GETATTR with the handle before reads, and takes the open file's size from
    it: a handle opened before the archive was replaced keeps its version's attributes (never
    the new, shorter size, nor ENOENT for a member the new version lacks)."""
    ops = replaced.ops
    paths = {"/a.zip/z.bin": 200_000, "/a.zip/gone.txt": len(replaced.old["gone.txt"]),
             "/notes.txt": 70_000}
    before = {path: ops.getattr(path) for path in paths}
    handles = {path: _fi() for path in paths}
    for path, fi in handles.items():
        ops.open(path, fi)
    replaced.swap()
    assert ops.getattr("/a.zip/z.bin")["st_size"] == 5000  # the path shows the new version
    assert ops.getattr("/notes.txt")["st_size"] == 100
    with pytest.raises(FuseError) as gone:
        ops.getattr("/a.zip/gone.txt")
    assert gone.value.errno == errno.ENOENT
    for path, size in paths.items():
        attrs = ops.getattr(path, handles[path])
        assert attrs == before[path] and attrs["st_size"] == size, path
    # Reads through the handle: the first version's bytes, whole, or ESTALE (gone from the store).
    try:
        assert ops.read("/a.zip/z.bin", 4096, 150_000, handles["/a.zip/z.bin"]) == \
            replaced.old["z.bin"][150_000:154_096]
    except FuseError as exc:
        assert exc.errno == errno.ESTALE
    for path, fi in handles.items():
        ops.release(path, fi)
    assert ops.open_handles() == 0


def test_path_attributes_of_another_version_than_an_open_handle_reads_are_dropped_at_once(replaced):
    """The kernel keeps one size per path: while a handle on the first version is open, attributes
    of the new version answered by path are invalidated as soon as they are sent (so the
    handle's next read asks again, with the handle); its own attributes, and those answered
    once it is closed, stay."""
    ops = replaced.ops
    dropped: list[str] = []
    ops.invalidate = lambda path: dropped.append(path) or True
    held = _fi()
    ops.open("/a.zip/z.bin", held)
    ops.getattr("/a.zip/z.bin")  # the same version as the handle's
    assert dropped == []
    replaced.swap()
    ops.getattr("/a.zip/z.bin")
    assert dropped == ["/a.zip/z.bin"]
    ops.getattr("/a.zip/z.bin", held)
    assert dropped == ["/a.zip/z.bin"]
    ops.release("/a.zip/z.bin", held)
    ops.getattr("/a.zip/z.bin")
    assert dropped == ["/a.zip/z.bin"]
