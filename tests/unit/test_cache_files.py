"""The file store alone: atomic files, the shared total and its cap, crash leftovers."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path

import pytest
from robust.harness import cache_usage_between_writes, dir_usage
from support.locks import stopped_holder

from zipmount.cache import FileStore


def on_disk(store: FileStore) -> int:
    return dir_usage(store.files_dir)[0]


def test_a_file_appears_whole_or_not_at_all(tmp_path):
    store = FileStore(tmp_path, 1 << 20)

    def chunks():
        yield b"x" * 1000
        raise OSError(errno.EIO, "the producer failed")

    with pytest.raises(OSError):
        store.write("aa.blob", chunks(), 2000)
    assert not store.path("aa.blob").exists()
    assert on_disk(store) == 0 and store.used == 0
    store.write("aa.blob", [b"y" * 10, memoryview(b"z" * 5)], 15)
    assert store.path("aa.blob").read_bytes() == b"y" * 10 + b"z" * 5
    assert store.used == 15


def test_more_bytes_than_announced_are_refused(tmp_path):
    store = FileStore(tmp_path, 1 << 20)
    with pytest.raises(OSError) as exc:
        store.write("bb.blob", [b"x" * 11], 10)
    assert exc.value.errno == errno.EFBIG
    assert on_disk(store) == 0 and store.used == 0
    with pytest.raises(OSError) as exc:
        store.write("bb.blob", [b"x"], 2 << 20)
    assert exc.value.errno == errno.EFBIG


def test_the_least_recently_used_files_go_first(tmp_path):
    store = FileStore(tmp_path, 10_000)
    for n in range(4):
        store.write(f"f{n}.blob", [bytes(2000)], 2000)
        time.sleep(0.01)
    assert store.touch("f0.blob")  # used again: now the newest
    store.write("f4.blob", [bytes(4000)], 4000)
    left = {f.name for f in store.files()}
    assert "f0.blob" in left and "f4.blob" in left and "f1.blob" not in left, left
    assert on_disk(store) <= 10_000 and store.used == on_disk(store)
    assert not store.touch("f1.blob")


def test_the_cap_holds_while_threads_write_at_once(tmp_path):
    cap = 256 * 1024
    store = FileStore(tmp_path, cap)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], cache_usage_between_writes(tmp_path))
            time.sleep(0.001)  # a lock held without a break is a stuck holder: writes give up

    def writer(t: int) -> None:
        for n in range(60):
            store.write(f"{t:02d}{n}.blob", [os.urandom(8192)], 8192)

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    sampler.join()
    assert peak[0] <= cap, peak[0]
    # A scan racing a rename may see a file under both names (readdir during renames) and
    # count it twice: the ledger may be ahead by a file per writer, never behind the disk;
    # the next scan makes it exact.
    assert on_disk(store) <= store.used <= on_disk(store) + 8 * 8192, (store.used, on_disk(store))
    store.prune()
    assert store.used == on_disk(store), (store.used, on_disk(store))
    assert len(store.files()) > cap // 8192 * 0.8  # evicted down to the cap, not far below


def test_two_stores_on_one_dir_hold_one_cap(tmp_path):
    cap = 100_000
    a, b = FileStore(tmp_path, cap), FileStore(tmp_path, cap)
    for n in range(30):
        (a if n % 2 else b).write(f"s{n:02d}.blob", [bytes(9000)], 9000)
    assert on_disk(a) <= cap
    assert a.used == b.used == on_disk(a)
    names = {f.name for f in b.files()}
    assert "s29.blob" in names and "s28.blob" in names  # each sees the other's newest files


def test_a_killed_writers_temporary_file_is_removed_and_a_live_ones_counted(tmp_path):
    store = FileStore(tmp_path, 1 << 20)
    shard = store.files_dir / "ab"
    shard.mkdir()
    dead = shard / ".tmp.5000.1.2.3"
    dead.write_bytes(bytes(100))
    old = time.time() - 60
    os.utime(dead, (old, old))
    live = shard / ".tmp.7000.1.2.4"
    live.write_bytes(bytes(100))
    os.utime(live, (old, old))
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held as a writer would
        store.prune()
        assert not dead.exists() and live.exists()
        assert store.used == 7000  # what it announced, not what it holds yet
    finally:
        os.close(fd)


def test_a_restart_with_a_smaller_cap_shrinks_the_store(tmp_path):
    store = FileStore(tmp_path, 1 << 20)
    for n in range(10):
        store.write(f"r{n}.blob", [bytes(50_000)], 50_000)
    store.close()
    small = FileStore(tmp_path, 200_000)
    assert on_disk(small) <= 200_000 and small.used == on_disk(small)


def test_a_lost_ledger_is_rebuilt_from_the_files(tmp_path):
    store = FileStore(tmp_path, 1 << 20)
    store.write("l1.blob", [bytes(1234)], 1234)
    store.close()
    (tmp_path / "ledger").unlink()
    again = FileStore(Path(tmp_path), 1 << 20)
    assert again.used == 1234


def test_clear_and_prune_leave_the_store_usable(tmp_path):
    store = FileStore(tmp_path, 1 << 20)
    for n in range(5):
        store.write(f"k{n}/part.blob", [bytes(1000)], 1000)  # a name with its own directory
    assert store.listing("k0")[1] == ["part.blob"]
    store.prune(2500)
    assert on_disk(store) <= 2500
    store.clear()
    assert store.files() == [] and store.used == 0
    assert store.listing("k0") is None  # the emptied directory went too
    store.write("k0/part.blob", [b"again"], 5)
    assert store.path("k0/part.blob").read_bytes() == b"again"


def _finishes(work, seconds: float = 60.0):
    """``work()``'s result, or an assertion error if it is still blocked after ``seconds``
    (a liveness bound: a wait on a stuck lock never ends)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked on a lock held by a stopped process"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("result")


def test_a_stopped_process_holding_the_ledger_lock_blocks_no_one(tmp_path):
    first = FileStore(tmp_path, 1 << 20)
    first.write("aa.blob", [bytes(1000)], 1000)
    first.close()
    with stopped_holder(tmp_path / "ledger"):
        store = _finishes(lambda: FileStore(tmp_path, 1 << 20))  # a new process's store
        assert _finishes(lambda: store.read("aa.blob")) == bytes(1000)
        with pytest.raises(OSError) as info:  # a write cannot be counted: it is not kept
            _finishes(lambda: store.write("bb.blob", [bytes(500)], 500))
        assert info.value.errno == errno.EAGAIN
        assert not store.path("bb.blob").exists()
        _finishes(lambda: store.remove("aa.blob"))  # counted once the ledger is free again
        assert not store.path("aa.blob").exists()
    store.write("cc.blob", [bytes(300)], 300)
    assert store.used == on_disk(store) == 300


def test_a_scan_walks_the_directory_without_holding_the_ledger_lock(tmp_path, monkeypatch):
    store = FileStore(tmp_path, 1 << 20)
    for n in range(5):
        store.write(f"w{n}.blob", [bytes(1000)], 1000)
    free_during_walk = []
    real_walk = FileStore._walk

    def walk_and_try_the_ledger(self):
        fd = os.open(tmp_path / "ledger", os.O_RDWR)  # as another process would
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free_during_walk.append(True)
        except BlockingIOError:
            free_during_walk.append(False)
        finally:
            os.close(fd)
        return real_walk(self)

    monkeypatch.setattr(FileStore, "_walk", walk_and_try_the_ledger)
    store.prune(2500)
    store.clear()
    assert free_during_walk == [True, True]
    assert store.used == on_disk(store) == 0


def test_prune_gives_up_on_a_stopped_scanner_and_writes_under_the_cap_go_on(tmp_path,
                                                                            monkeypatch):
    from zipmount.cache import files

    monkeypatch.setattr(files, "SCAN_WAIT", 0.5)
    store = FileStore(tmp_path, 1 << 20)
    with stopped_holder(tmp_path / "scan.lock"):
        with pytest.raises(files.CacheBusy) as info:
            _finishes(store.clear)
        assert "\n" not in str(info.value)
        _finishes(lambda: store.write("dd.blob", [bytes(700)], 700))
    store.clear()
    assert store.files() == [] and store.used == 0
