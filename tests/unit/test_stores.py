"""The test stores (tests/support/stores.py) keep the store contract, inject the faults they
name, and plug into the engine's trees in place of the s3fs source."""

from __future__ import annotations

import contextlib
import errno
import threading
import time
import zipfile

import pytest
from robust.zips import plain_zip, random_files
from support.stores import (
    ChangedETag,
    Delay,
    Fail,
    FaultyStore,
    Hang,
    MemoryStore,
    ShortBody,
    always,
    first_n,
)

from zipmount.config import CacheConfig
from zipmount.engine import Engine
from zipmount.errors import ObjectChanged, ObjectNotFound, SourceError, ZipmountError
from zipmount.source import Source, StorageOptions
from zipmount.stats import Stats

FILES = {"a.txt": b"alpha\n" * 1000, "d/b.bin": bytes(range(256)) * 300, "d/e/c.txt": b"c"}
BIG = random_files("stores", 1, 3 << 20)["f000.bin"]
NEW = {"a.txt": b"ALPHA, the second version\n" * 900, "d/b.bin": b"B" * 70_000}


def test_a_memory_store_answers_stat_list_and_pinned_reads_like_s3():
    store = MemoryStore()
    v1 = store.put("bkt/dir/x.zip", b"0123456789")
    store.put("bkt/dir/sub/y.zip", b"yy")
    assert store.stat("bkt/dir/x.zip") == v1 and v1.size == 10 and v1.etag.startswith('"')
    assert store.stat("bkt/dir") is None and store.stat("bkt/dir/") is None  # a prefix
    with pytest.raises(ObjectNotFound) as missing:
        store.stat("bkt/nope.zip")
    assert missing.value.errno == errno.ENOENT
    assert [o.path for o in store.list_objects("bkt/dir/")] == ["bkt/dir/sub/y.zip", "bkt/dir/x.zip"]
    assert store.list_objects("bkt/other/") == []
    assert store.exists("bkt") and store.exists("bkt/dir") and not store.exists("bkt/other")
    assert store.read(v1, 2, 5) == b"234" and store.read(v1, 8, 100) == b"89"


def test_a_memory_store_refuses_reads_pinned_to_a_replaced_or_deleted_version():
    store = MemoryStore()
    v1 = store.put("bkt/x.zip", b"first")
    v2 = store.replace("bkt/x.zip", b"second!")
    assert v2.etag != v1.etag and v2.mtime > v1.mtime
    with pytest.raises(ObjectChanged) as stale:
        store.read(v1, 0, 5)
    assert stale.value.errno == errno.ESTALE
    assert store.read(v2, 0, 7) == b"second!"
    store.delete("bkt/x.zip")
    with pytest.raises(ObjectChanged):  # as the source: a pinned read of a deleted object
        store.read(v2, 0, 7)
    with pytest.raises(ObjectNotFound):
        store.stat("bkt/x.zip")
    with pytest.raises(KeyError):
        store.replace("bkt/x.zip", b"nothing to replace")


def test_a_fault_rule_fails_the_first_n_matching_calls_then_forwards():
    inner = MemoryStore()
    obj = inner.put("bkt/x.zip", b"abcdef")
    store = FaultyStore(inner, timeout=5)
    with store.fault(first_n(2, Fail())):
        for _ in range(2):
            with pytest.raises(SourceError) as failed:
                store.read(obj, 0, 3)
            assert failed.value.errno == errno.EIO
        assert store.stat("bkt/x.zip") == obj  # stats do not match the default rule
        assert store.read(obj, 0, 3) == b"abc"
    assert [c.action for c in store.log(lambda c: c.is_read)] == ["Fail", "Fail", "forward"]


def test_a_delay_answers_late_and_one_past_the_timeout_fails_as_the_deadline_does():
    inner = MemoryStore()
    obj = inner.put("bkt/x.zip", b"abcdef")
    store = FaultyStore(inner, timeout=0.5)
    with store.fault(always(Delay(0.1))):
        t0 = time.monotonic()
        assert store.read(obj, 1, 4) == b"bcd"
        assert time.monotonic() - t0 >= 0.1
    with store.fault(always(Delay(5.0))), pytest.raises(SourceError, match="timed out after 0.5 s"):
        store.read(obj, 0, 1)


def test_a_hang_ends_at_the_timeout_or_when_the_fault_is_lifted():
    inner = MemoryStore()
    obj = inner.put("bkt/x.zip", b"abcdef")
    store = FaultyStore(inner, timeout=0.3)
    with store.fault(always(Hang())), pytest.raises(SourceError, match="timed out"):
        store.stat("bkt/x.zip")
    store = FaultyStore(inner, timeout=60)
    outcome: list[BaseException] = []

    def hung_read() -> None:
        try:
            store.read(obj, 0, 3)
        except ZipmountError as exc:
            outcome.append(exc)

    with store.fault(always(Hang())):
        reader = threading.Thread(target=hung_read)
        reader.start()
        while not store.log():
            time.sleep(0.01)
        assert reader.is_alive()  # hung until the fault is lifted
    reader.join(10)
    assert not reader.is_alive() and isinstance(outcome[0], SourceError)


def test_a_short_body_answers_part_of_the_range():
    inner = MemoryStore()
    obj = inner.put("bkt/x.zip", bytes(range(100)))
    store = FaultyStore(inner)
    with store.fault(first_n(1, ShortBody(0.25))):
        assert store.read(obj, 0, 40) == bytes(range(10))
        assert store.read(obj, 0, 40) == bytes(range(40))


def test_a_changed_etag_is_a_reupload_old_pins_fail_and_the_new_identity_reads_the_same_bytes():
    inner = MemoryStore()
    v1 = inner.put("bkt/x.zip", b"same bytes")
    store = FaultyStore(inner)
    with store.fault(first_n(1, ChangedETag(), match=lambda c: c.op == "stat")):
        v2 = store.stat("bkt/x.zip")
    assert v2 is not None and v2.etag != v1.etag and v2.size == v1.size
    assert store.stat("bkt/x.zip") == v2 and store.list_objects("bkt/") == [v2]  # from now on
    with pytest.raises(ObjectChanged):
        store.read(v1, 0, 4)
    assert store.read(v2, 0, 4) == b"same"
    with store.fault(first_n(1, ChangedETag())), pytest.raises(ObjectChanged):
        store.read(v2, 0, 4)  # a read meeting a re-upload: 412
    v3 = store.stat("bkt/x.zip")
    assert v3 is not None and v3.etag not in (v1.etag, v2.etag) and store.read(v3, 5, 10) == b"bytes"


def _engine(tmp_path, timeout: float = 5.0, **cache: object) -> Engine:
    return Engine(StorageOptions(timeout=timeout),
                  CacheConfig(memory=8 << 20, dir=str(tmp_path / "cache"), **cache))


def _read(tree, path: str) -> bytes:
    reader = tree.open(path)
    try:
        return reader.read(0, 1 << 30)
    finally:
        reader.close()


def test_a_tree_over_a_memory_store_serves_what_zipfile_reads_from_the_same_bytes(tmp_path):
    store = MemoryStore()
    store.put("bkt/rec/a.zip", plain_zip(FILES, zipfile.ZIP_DEFLATED))
    store.put("bkt/rec/notes.txt", b"not an archive")
    engine = _engine(tmp_path)
    try:
        single = engine.tree_for(store, "bkt/rec/a.zip")
        assert [n for n, _ in single.listdir("/")] == ["a.txt", "d"]
        for name, data in FILES.items():
            assert single.stat(name).size == len(data) and _read(single, name) == data
        prefix = engine.tree_for(store, "bkt/rec/")
        assert prefix.listdir("/") == [("a.zip", "dir"), ("notes.txt", "file")]
        assert _read(prefix, "a.zip/d/e/c.txt") == b"c"
        assert _read(prefix, "notes.txt") == b"not an archive"
    finally:
        engine.close()


def test_a_tree_over_a_memory_store_sees_replacement_and_deletion_after_the_ttl(tmp_path):
    store = MemoryStore()
    store.put("bkt/a.zip", plain_zip(FILES))
    engine = _engine(tmp_path, ttl=0.2)
    try:
        tree = engine.tree_for(store, "bkt/a.zip")
        assert _read(tree, "a.txt") == FILES["a.txt"]
        store.replace("bkt/a.zip", plain_zip(NEW))
        with contextlib.suppress(ObjectChanged):  # before the revalidation: ESTALE, or the old
            assert _read(tree, "d/b.bin") == FILES["d/b.bin"]  # version's bytes read ahead
        deadline = time.monotonic() + 30
        while tree.stat("a.txt").size != len(NEW["a.txt"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _read(tree, "a.txt") == NEW["a.txt"] and _read(tree, "d/b.bin") == NEW["d/b.bin"]
        store.delete("bkt/a.zip")
        time.sleep(0.25)
        deadline = time.monotonic() + 30
        with pytest.raises(ZipmountError) as gone:
            while time.monotonic() < deadline:
                tree.stat("a.txt")
                time.sleep(0.05)
        assert gone.value.errno == errno.ENOENT
    finally:
        engine.close()


def test_a_tree_over_a_hanging_store_fails_with_eio_within_the_timeout(tmp_path):
    store = FaultyStore(MemoryStore(), timeout=0.5)
    store.inner.put("bkt/a.zip", plain_zip({**FILES, "big.bin": BIG}))
    engine = _engine(tmp_path, timeout=0.5)
    try:
        tree = engine.tree_for(store, "bkt/a.zip")  # reads the end: a.txt's bytes are not cached
        with store.fault(always(Hang())):
            with pytest.raises(SourceError) as failed:
                _read(tree, "a.txt")
            assert failed.value.errno == errno.EIO
        assert _read(tree, "a.txt") == FILES["a.txt"]  # the store is back: so are reads
    finally:
        engine.close()


def test_the_source_answers_a_pinned_read_of_a_deleted_object_as_stale_not_missing(tmp_path):
    path = tmp_path / "x.zip"
    path.write_bytes(b"0123456789")
    source, key = Source.for_url(str(path), StorageOptions(timeout=5), Stats())
    obj = source.stat(key)
    assert obj is not None and source.read(obj, 2, 5) == b"234"
    path.unlink()
    with pytest.raises(ObjectChanged) as stale:  # ESTALE: the pinned version is gone
        source.read(obj, 0, 5)
    assert stale.value.errno == errno.ESTALE
    with pytest.raises(ObjectNotFound):  # a stat still says ENOENT
        source.stat(key)


def test_an_archive_deleted_before_its_first_open_in_a_prefix_is_stale_then_gone_never_empty(
        tmp_path):
    """Found by the model (tests/model): a prefix tree showed an archive deleted before its first
    open as an empty directory (listdir gave []), a view no version ever had."""
    store = MemoryStore()
    store.put("bkt/rec/a.zip", plain_zip(FILES))
    store.put("bkt/rec/b.zip", plain_zip(NEW))
    engine = _engine(tmp_path, ttl=0.2)
    try:
        tree = engine.tree_for(store, "bkt/rec/")
        assert [n for n, _ in tree.listdir("/")] == ["a.zip", "b.zip"]
        store.delete("bkt/rec/a.zip")
        with pytest.raises(ZipmountError) as stale:
            tree.listdir("a.zip")
        assert stale.value.errno == errno.ESTALE
        deadline = time.monotonic() + 30
        while [n for n, _ in tree.listdir("/")] != ["b.zip"] and time.monotonic() < deadline:
            time.sleep(0.05)  # the failed read made the tree relist at once
        assert [n for n, _ in tree.listdir("/")] == ["b.zip"]
        with pytest.raises(ZipmountError) as gone:
            tree.listdir("a.zip")
        assert gone.value.errno == errno.ENOENT
    finally:
        engine.close()
