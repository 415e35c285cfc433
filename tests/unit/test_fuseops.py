"""The FUSE operations' kernel-cache bookkeeping, called directly (no mount): it stays bounded,
and what it forgets never lets the kernel mix versions."""

from __future__ import annotations

import time
import zipfile

import pytest
from support.fuseinfo import file_info

from zipmount.config import CacheConfig
from zipmount.engine import Engine
from zipmount.fuse.operations import ZipOperations
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
