"""A prefix's other objects as plain files, the archives-only view, and the ``.raw`` view
(through the tree layer over a local directory; the mount and S3 are in test_e2e_prefix.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from robust.zips import plain_zip

from zipmount.config import CacheConfig
from zipmount.engine import Engine
from zipmount.errors import IsADirectory, NotADirectory, NotASymlink, NotFound
from zipmount.source import ObjectInfo, StorageOptions
from zipmount.tree import PrefixTree, Reach


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    root = tmp_path / "cohort"
    (root / "sub-01").mkdir(parents=True)
    (root / "participants.tsv").write_bytes(b"participant_id\tage\nsub-01\t42\n")
    (root / "sub-01" / "sub-01_eeg.rkns").write_bytes(plain_zip({"a/b.txt": b"member"}))
    (root / "sub-01" / "sub-01_events.tsv").write_bytes(b"onset\tduration\n" * 1000)
    return root


@pytest.fixture
def engine(tmp_path: Path):
    engine = Engine(StorageOptions(), CacheConfig(dir=str(tmp_path / "cache")))
    yield engine
    engine.close()


def _read_all(tree, path: str) -> bytes:
    reader = tree.open(path)
    try:
        return reader.read(0, 1 << 30)
    finally:
        reader.close()


def test_objects_that_are_not_archives_are_plain_read_only_files_sized_and_dated_by_the_listing(
        cohort, engine):
    tree = engine.open_tree(f"{cohort}/")
    assert tree.listdir("") == [("participants.tsv", "file"), ("sub-01", "dir")]
    assert tree.listdir("sub-01") == [("sub-01_eeg.rkns", "dir"), ("sub-01_events.tsv", "file")]
    events = cohort / "sub-01" / "sub-01_events.tsv"
    node = tree.stat("sub-01/sub-01_events.tsv")
    assert (node.kind, node.size, node.mode) == ("file", events.stat().st_size, 0o644)
    assert abs(node.mtime_ns / 1e9 - events.stat().st_mtime) < 1
    assert _read_all(tree, "sub-01/sub-01_events.tsv") == events.read_bytes()
    reader = tree.open("participants.tsv")
    assert reader.read(19, 6) == b"sub-01" and reader.read(10_000, 10) == b""
    reader.close()
    assert _read_all(tree, "sub-01/sub-01_eeg.rkns/a/b.txt") == b"member"
    with pytest.raises(NotADirectory):
        tree.listdir("participants.tsv")
    with pytest.raises(NotASymlink):
        tree.readlink("participants.tsv")
    with pytest.raises(NotFound):
        tree.stat("participants.tsv/x")


def test_plain_files_open_no_archive_and_their_reads_go_through_the_block_cache(cohort, engine):
    tree = engine.open_tree(f"{cohort}/")
    first = _read_all(tree, "participants.tsv")
    requests = engine.stats.counters["requests"]
    assert _read_all(tree, "participants.tsv") == first
    assert engine.stats.counters["requests"] == requests, "a warm read fetched again"
    assert tree.open_archives() == 0


def test_the_archives_only_view_hides_every_object_that_is_not_an_archive(cohort, engine):
    tree = engine.open_tree(f"{cohort}/", archives_only=True)
    assert tree.listdir("") == [("sub-01", "dir")]
    assert tree.listdir("sub-01") == [("sub-01_eeg.rkns", "dir")]
    with pytest.raises(NotFound):
        tree.stat("participants.tsv")
    assert _read_all(tree, ".raw/sub-01/sub-01_eeg.rkns") == \
        (cohort / "sub-01" / "sub-01_eeg.rkns").read_bytes()


def test_the_raw_view_serves_every_object_s_own_bytes_and_is_not_listed_in_the_root(
        cohort, engine):
    tree = engine.open_tree(f"{cohort}/")
    assert ".raw" not in [n for n, _ in tree.listdir("")]
    assert tree.stat(".raw").kind == "dir"
    assert tree.listdir(".raw") == [("participants.tsv", "file"), ("sub-01", "dir")]
    assert tree.listdir(".raw/sub-01") == [("sub-01_eeg.rkns", "file"),
                                           ("sub-01_events.tsv", "file")]
    archive = cohort / "sub-01" / "sub-01_eeg.rkns"
    node = tree.stat(".raw/sub-01/sub-01_eeg.rkns")
    assert (node.kind, node.size, node.mode) == ("file", archive.stat().st_size, 0o644)
    assert _read_all(tree, ".raw/sub-01/sub-01_eeg.rkns") == archive.read_bytes()
    assert _read_all(tree, ".raw/participants.tsv") == (cohort / "participants.tsv").read_bytes()
    with pytest.raises(IsADirectory):
        tree.open(".raw/sub-01")
    with pytest.raises(NotFound):
        tree.stat(".raw/nothing")


def test_a_plain_object_never_hides_an_archive_and_objects_under_raw_are_not_shown(
        tmp_path, engine):
    source, path = engine.source(str(tmp_path / "pre") + "/")
    tree = PrefixTree(Reach(source, engine.cache, engine.stats, engine.indexes), path,
                      suffixes=(".zip",))
    keys = ["a", "a/b.zip",  # a file "a" where a directory holds an archive: the archive wins
            "c.zip", "c.zip/d.txt",  # below an archive: skipped
            "e/", "e/f.txt",  # a directory marker: the directory shows
            ".raw/x.txt", "g.txt"]
    tree.apply_listing([ObjectInfo(path + k.rstrip("/"), 10, f'"{i}"', 0.0)
                        for i, k in enumerate(keys)], 0.0)
    assert tree.listdir("") == [("a", "dir"), ("c.zip", "dir"), ("e", "dir"), ("g.txt", "file")]
    assert tree.listdir("a") == [("b.zip", "dir")]
    assert tree.listdir("e") == [("f.txt", "file")]
    assert tree.listdir(".raw") == [("a", "dir"), ("c.zip", "file"), ("e", "dir"),
                                    ("g.txt", "file")]
