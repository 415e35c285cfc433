"""The tree layer without FUSE: prefix listings, the cap on loaded indexes, revalidation."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from robust.zips import plain_zip

from zipmount.config import CacheConfig
from zipmount.engine import Engine
from zipmount.errors import NotFound
from zipmount.source import ObjectInfo, StorageOptions
from zipmount.tree import PrefixTree
from zipmount.tree.indexes import IndexLRU


def _cohort(root: Path, count: int, entries: int) -> dict[str, dict[str, bytes]]:
    root.mkdir()
    contents = {}
    for i in range(count):
        files = {f"d{j % 7}/f{j}.txt": f"archive {i} file {j}\n".encode() for j in range(entries)}
        (root / f"rec{i:03d}.zip").write_bytes(plain_zip(files))
        contents[f"rec{i:03d}.zip"] = files
    return contents


def _engine(tmp_path: Path, **cache: object) -> Engine:
    return Engine(StorageOptions(), CacheConfig(dir=str(tmp_path / "cache"), **cache))


class Dropped:
    """A holder that costs ``cost`` bytes while loaded."""

    def __init__(self, cost: int = 1000) -> None:
        self.cost = cost
        self.dropped = False

    def drop_index(self) -> None:
        self.dropped = True

    def index_bytes(self) -> int:
        return 0 if self.dropped else self.cost


def test_the_index_lru_drops_the_least_recently_used_and_never_the_newest():
    lru = IndexLRU(capacity=3 * 1000)
    a, b, c, d = Dropped(), Dropped(), Dropped(), Dropped()
    lru.loaded(a)
    lru.loaded(b)
    lru.loaded(c)
    lru.used_by(a)  # b is now the oldest
    lru.loaded(d)
    assert (a.dropped, b.dropped, c.dropped, d.dropped) == (False, True, False, False)
    assert lru.used == 3 * 1000 and len(lru) == 3
    huge = Dropped(100_000)
    lru.loaded(huge)  # bigger than the cap on its own: kept, everything else dropped
    assert not huge.dropped and a.dropped and c.dropped and d.dropped and len(lru) == 1


def test_the_index_lru_charges_what_a_holder_grew_to_at_each_use():
    lru = IndexLRU(capacity=3 * 1000)
    a, b, c = Dropped(), Dropped(), Dropped()
    for holder in (a, b, c):
        lru.loaded(holder)
    c.cost = 2000  # its members were read: what it remembers of them grew
    lru.used_by(c)
    assert lru.used == 3000 and a.dropped and not b.dropped and not c.dropped
    lru.used_by(a)  # dropped meanwhile: not charged until it loads again
    assert lru.used == 3000 and len(lru) == 2


def test_a_sweep_over_a_prefix_keeps_loaded_indexes_under_the_cap_and_reloads_without_requests(
        tmp_path):
    contents = _cohort(tmp_path / "cohort", count=40, entries=50)
    cap = 5 * 50 * 200  # room for about five indexes of 50 entries
    engine = _engine(tmp_path, index_memory=cap)
    tree = engine.open_tree(str(tmp_path / "cohort") + "/")
    try:
        for name, files in contents.items():
            reader = tree.open(f"{name}/d3/f3.txt")
            assert reader.read(0, 100) == files["d3/f3.txt"]
            reader.close()
            assert tree.open_archives() <= 6
            assert engine.indexes.used <= cap + 50 * 200
        requests = engine.stats.counters["requests"]
        for name, files in contents.items():  # a second sweep: indexes reload from the disk cache
            assert tree.stat(f"{name}/d0/f0.txt").size == len(files["d0/f0.txt"])
        assert engine.stats.counters["requests"] == requests
    finally:
        engine.close()


def test_prefix_keys_with_odd_components_are_reachable_under_cleaned_names(tmp_path):
    engine = _engine(tmp_path)
    try:
        from zipmount.tree import Reach

        source, path = engine.source(str(tmp_path / "pre") + "/")
        tree = PrefixTree(Reach(source, engine.cache, engine.stats, engine.indexes), path,
                          suffixes=(".zip",))
        keys = ["a//b.zip", "./c.zip", "x/../d.zip", "e\x01.zip", "L" * 300 + ".zip",
                "a/b.zip",  # cleans to the same name as a//b.zip: skipped, never half-listed
                "f.zip", "f.zip/g.zip",  # below an archive: skipped
                "h\\i.zip"]  # an S3 key: its backslash is a character, not a separator
        tree.apply_listing([ObjectInfo(path + k, 10, f'"{i}"', 0.0) for i, k in enumerate(keys)],
                           0.0)
        listed: list[str] = []
        todo = [""]
        while todo:
            directory = todo.pop()
            for name, kind in tree.listdir(directory):
                full = f"{directory}/{name}".strip("/")
                node = tree.stat(full)  # every listed name answers, none is ENOENT
                assert node.kind == kind == "dir"
                if not full.endswith(".zip") and "L" * 20 not in full:
                    todo.append(full)
                else:
                    listed.append(full)
        # ".." components are dropped, as in archive member names (never resolved upwards)
        assert sorted(n for n in listed if "LLLL" not in n) == ["a/b.zip", "c.zip", "e_.zip",
                                                                "f.zip", "h\\i.zip", "x/d.zip"]
        long_name = next(n for n in listed if "LLLL" in n)
        assert len(long_name.encode()) <= 255
        with pytest.raises(NotFound):
            tree.stat("f.zip/g.zip")
    finally:
        engine.close()


def test_a_single_archive_with_ttl_zero_runs_at_most_one_revalidation_at_a_time(tmp_path):
    path = tmp_path / "one.zip"
    path.write_bytes(plain_zip({"a.txt": b"a"}))
    engine = _engine(tmp_path, ttl=0.0)
    tree = engine.open_tree(str(path))
    try:
        most = 0
        for i in range(300):
            if i == 100:  # replaced meanwhile: the checks in the background pick it up
                path.write_bytes(plain_zip({"a.txt": b"a", "b.txt": b"bb"}))
            tree.stat("a.txt")
            most = max(most, sum(t.name == "zipmount-revalidate" for t in threading.enumerate()))
        # One check at a time; a thread that has just finished its check may still be on its
        # way out when the next one starts, so two threads can be seen for a moment.
        assert most <= 2, f"{most} revalidations of one archive at once"
        deadline = time.monotonic() + 10
        while True:
            try:
                assert tree.stat("b.txt").size == 2
                break
            except NotFound:
                assert time.monotonic() < deadline, "the new version never showed"
                time.sleep(0.05)
    finally:
        engine.close()


def test_listing_and_stating_a_prefix_opens_no_archive_until_one_is_entered(tmp_path):
    contents = _cohort(tmp_path / "cohort", count=10, entries=5)
    engine = _engine(tmp_path)
    tree = engine.open_tree(str(tmp_path / "cohort") + "/")
    try:
        requests = engine.stats.counters["requests"]
        names = [n for n, _ in tree.listdir("")]
        assert names == sorted(contents)
        assert all(tree.stat(n).kind == "dir" for n in names)
        assert tree.open_archives() == 0 and engine.stats.counters["requests"] == requests
        assert [n for n, _ in tree.listdir(names[0])] == [f"d{j}" for j in range(5)]
        assert tree.open_archives() == 1
    finally:
        engine.close()


def test_running_out_of_file_descriptors_never_deletes_a_persisted_index_or_view(tmp_path):
    import os
    import resource

    from zipmount.archive.index.store import load_index
    from zipmount.tree.views import remembered_view

    path = tmp_path / "one.zip"
    path.write_bytes(plain_zip({"a.txt": b"a"}))
    engine = _engine(tmp_path)
    tree = engine.open_tree(str(path))
    disk = engine.cache.disk
    key = tree.slot.obj.cache_key(tree.slot.reach.source.location)
    index_name, location = f"{key}.index.json", tree.slot.reach.source.location
    assert load_index(disk, index_name) is not None
    assert remembered_view(disk, location, str(path), 60) is not None
    stored = sorted(p.name for p in (tmp_path / "cache").rglob("*.json"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass  # EMFILE: no descriptor left
        index, view = load_index(disk, index_name), remembered_view(disk, location, str(path), 60)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert index is None and view is None  # a miss now...
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.json")) == stored  # ...kept
    assert load_index(disk, index_name) is not None
    engine.close()
