"""Directory listings kept per archive version (zipmount/tree/listings.py): they answer what the
index answers, change with the archive version, stay correct under concurrent calls and are
bounded and charged with the index."""

from __future__ import annotations

import contextlib
import gc
import threading
import time
import tracemalloc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robust.zips import plain_zip

from zipmount.config import CacheConfig
from zipmount.engine import Engine
from zipmount.errors import NotFound
from zipmount.source import StorageOptions
from zipmount.tree import ArchiveTree, DirEntry
from zipmount.tree.listings import ENTRY_BYTES, Listings


def _engine(tmp_path: Path, **cache: object) -> Engine:
    return Engine(StorageOptions(), CacheConfig(dir=str(tmp_path / "cache"), **cache))


@contextlib.contextmanager
def _tree(tmp_path: Path, url: str, **cache: object) -> Iterator[Any]:
    """The tree of ``url`` from an engine of its own (closed afterwards)."""
    engine = _engine(tmp_path, **cache)
    try:
        yield engine.open_tree(url)
    finally:
        engine.close()


def _version(tag: str, count: int) -> bytes:
    """An archive whose names and sizes all tell ``tag``."""
    return plain_zip({f"pkg/{tag}{i:03d}.py": tag.encode() * (i + 1) for i in range(count)}
                     | {f"pkg/sub{tag}/x.py": b"x"})


def _wait_for(tree: ArchiveTree, name: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            tree.stat(name)
            return
        except NotFound:
            assert time.monotonic() < deadline, f"{name} never showed"
            time.sleep(0.02)


def test_every_listed_entry_answers_what_stat_of_it_answers(tmp_path):
    path = tmp_path / "one.zip"
    path.write_bytes(plain_zip({"a/b/c.txt": b"c" * 10, "a/d.txt": b"dd", "a/b/e/f": b"",
                                "top.txt": b"t"}))
    with _tree(tmp_path, str(path)) as tree:
        todo = [""]
        seen = 0
        while todo:
            directory = todo.pop()
            entries = tree.scandir(directory)
            assert [(e.name, e.kind) for e in entries] == tree.listdir(directory)
            for again in range(2):  # the second time from the kept listing
                for entry in tree.scandir(directory):
                    child = f"{directory}/{entry.name}".strip("/")
                    assert entry.node() == tree.stat(child)
                    if entry.kind == "dir" and again:
                        todo.append(child)
                    seen += again
        assert seen == 7


def test_a_kept_listing_changes_when_the_archive_is_replaced(tmp_path):
    path = tmp_path / "one.zip"
    path.write_bytes(_version("a", 5))
    with _tree(tmp_path, str(path), ttl=0.0) as tree:
        old = tree.scandir("pkg")
        assert [e.name for e in old] == [f"a{i:03d}.py" for i in range(5)] + ["suba"]
        assert [e.node().size for e in old[:5]] == [1, 2, 3, 4, 5]
        path.write_bytes(_version("b", 3))
        _wait_for(tree, "pkg/b000.py")  # revalidated in the background (ttl 0)
        new = tree.scandir("pkg")
        assert [e.name for e in new] == ["b000.py", "b001.py", "b002.py", "subb"]
        assert [e.node().size for e in new[:3]] == [1, 2, 3]
        assert {e.node().version for e in new[:3]}.isdisjoint(e.node().version for e in old[:5])
        assert [e.node() for e in new] == [tree.stat(f"pkg/{e.name}") for e in new]


def test_concurrent_listings_and_stats_each_see_one_whole_version_while_it_is_replaced(tmp_path):
    path = tmp_path / "one.zip"
    versions = {"a": 40, "b": 25}
    path.write_bytes(_version("a", versions["a"]))
    engine = _engine(tmp_path, ttl=0.0)
    tree = engine.open_tree(str(path))
    errors: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def lister() -> None:
        while not stop.is_set():
            try:
                entries = tree.scandir("pkg")
            except NotFound:
                continue
            tags = {e.name[0] if e.kind == "file" else e.name[-1] for e in entries}
            if len(tags) != 1:
                errors.append(f"a listing mixes versions: {sorted(tags)}")
                continue
            tag = tags.pop()
            seen.add(tag)
            files = [e for e in entries if e.kind == "file"]
            if len(files) != versions[tag]:
                errors.append(f"version {tag}: {len(files)} files listed")
            for i, entry in enumerate(files):
                node = entry.node()
                if entry.name != f"{tag}{i:03d}.py" or node.size != i + 1:
                    errors.append(f"{entry.name}: size {node.size}")

    threads = [threading.Thread(target=lister) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.2)
        path.write_bytes(_version("b", versions["b"]))
        _wait_for(tree, "pkg/b000.py")
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
        engine.close()
    assert errors == [] and seen == {"a", "b"}


def test_kept_listings_are_bounded_and_a_bigger_directory_is_still_listed_whole():
    listings = Listings(archive=object(), max_entries=10)

    def listing(n: int) -> list[DirEntry]:
        return [DirEntry(f"f{i}", "file", lambda name: NotImplemented) for i in range(n)]

    listings.put("a", listing(4))
    listings.put("b", listing(4))
    assert listings.get("a") is not None  # a is now the most recent
    listings.put("c", listing(4))  # over the cap: b, the least recent, goes
    assert listings.get("b") is None and listings.get("a") is not None
    assert listings.entries == 8 and listings.memory_bytes() == 8 * ENTRY_BYTES
    listings.put("huge", listing(11))  # never kept
    assert listings.get("huge") is None and listings.entries == 8


def test_a_directory_over_the_cap_is_listed_right_on_every_call(tmp_path, monkeypatch):
    monkeypatch.setattr("zipmount.tree.listings.MAX_ENTRIES", 3)
    path = tmp_path / "one.zip"
    path.write_bytes(_version("a", 5))
    with _tree(tmp_path, str(path)) as tree:
        for _ in range(2):
            assert [e.name for e in tree.scandir("pkg")] == [f"a{i:03d}.py" for i in range(5)] \
                + ["suba"]
        assert tree.slot.index_bytes() == tree.slot.archive().memory_bytes()  # nothing kept


def test_kept_listings_are_charged_with_the_index_and_dropped_with_it(tmp_path):
    path = tmp_path / "one.zip"
    path.write_bytes(_version("a", 30))
    with _tree(tmp_path, str(path)) as tree:
        slot = tree.slot
        archive = slot.archive()
        assert archive is not None
        assert slot.index_bytes() == archive.memory_bytes()
        tree.scandir("pkg")
        assert slot.index_bytes() == archive.memory_bytes() + 31 * ENTRY_BYTES
        reader = tree.open("pkg/a003.py")  # what the archive remembers of its members grows
        assert reader.read(0, 10) == b"aaaa"
        reader.close()
        assert slot.index_bytes() == archive.memory_bytes() + 31 * ENTRY_BYTES
        slot.drop_index()
        assert slot.index_bytes() == 0
        assert [e.name for e in tree.scandir("pkg")][-1] == "suba"  # listed again from a reload


def test_a_kept_entry_costs_at_most_its_estimate(tmp_path):
    """ENTRY_BYTES, measured: a kept listing of short names with every node asked."""
    count = 2000
    path = tmp_path / "one.zip"
    path.write_bytes(plain_zip({f"pkg/module_{i:05d}.py": b"x" for i in range(count)}))
    engine = _engine(tmp_path)
    tree = engine.open_tree(str(path))
    try:
        tree.stat("pkg")
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for entry in tree.scandir("pkg"):
            entry.node()
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
        engine.close()
    assert ENTRY_BYTES / 2 <= per_entry <= ENTRY_BYTES


def test_a_prefix_listing_answers_each_nodes_stat_and_opens_no_archive_until_entered(tmp_path):
    cohort = tmp_path / "cohort"
    (cohort / "sub").mkdir(parents=True)
    for name in ("r1.zip", "r2.zip", "sub/r3.zip"):
        (cohort / name).write_bytes(_version("a", 3))
    (cohort / "notes.txt").write_bytes(b"notes")
    with _tree(tmp_path, str(cohort) + "/") as tree:
        entries = tree.scandir("")
        assert [(e.name, e.kind) for e in entries] == tree.listdir("")
        assert [e.node() for e in entries] == [tree.stat(e.name) for e in entries]
        assert tree.open_archives() == 0
        inside = tree.scandir("r1.zip/pkg")
        assert [e.node() for e in inside] == [tree.stat(f"r1.zip/pkg/{e.name}") for e in inside]
        assert tree.open_archives() == 1
        # an archive's node is asked afresh: once opened it counts its subdirectories
        assert [e.node() for e in tree.scandir("")] == [tree.stat(e.name) for e in entries]
        assert [e.name for e in tree.scandir("sub")] == ["r3.zip"]


def test_a_listing_made_while_its_index_is_dropped_does_not_keep_the_dropped_index(tmp_path):
    path = tmp_path / "one.zip"
    path.write_bytes(_version("a", 30))
    with _tree(tmp_path, str(path)) as tree:
        slot = tree.slot
        archive = slot.archive()
        assert archive is not None
        dropped = weakref.ref(archive)
        slot.drop_index()  # the LRU's eviction, racing with a listing of this archive
        listings = slot.listings(archive)  # what a listing of it gets meanwhile
        listings.put("pkg", [DirEntry("x", "file", lambda name: NotImplemented)])
        del listings
        assert slot.index_bytes() == 0
        del archive
        gc.collect()
        assert dropped() is None
        assert [e.name for e in tree.scandir("pkg")][-1] == "suba"  # from the reloaded index
