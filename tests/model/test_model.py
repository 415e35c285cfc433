"""One scenario, three doors: random stat, listdir, open/read at offsets, replace, delete, faults
and TTL expiry on a prefix of archives in an in-memory store, every answer checked against the
reference model (tests/model/model_reference.py) — through the ``Tree``, the FUSE operations
called directly and the fsspec filesystem.

Checked at every step: bytes equal to the version the reader pinned, never two versions in one
handle; only promised errors; every call returns within its deadline (``DEADLINE``); after the
faults are lifted and the TTL has passed, every path shows the current version.

``ZIPMOUNT_MODEL_EXAMPLES`` sets the sequences per door and tree (default 30), ``ZIPMOUNT_MODEL_STEPS``
the most steps in one (default 20), ``ZIPMOUNT_MODEL_RANDOM=1`` new sequences on each run (default:
the same ones), ``ZIPMOUNT_MODEL_SHRINK=1`` shrinks a failure; ``make fuzz`` runs many more.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import io
import os
import random
import shutil
import tempfile
import time
import zipfile

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from model_doors import DOORS
from model_reference import Reference
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
from zipmount.errors import ZipmountError
from zipmount.source import StorageOptions

TIMEOUT = 0.25  # the store's and the block cache's deadline (--timeout)
TTL = 0.1
# A call may make a few store calls one after another (listing, index, local header, data),
# each ending within TIMEOUT; the slack is for a loaded 2-core machine. A call that has not
# returned by then waits without a deadline.
DEADLINE = 4 * TIMEOUT + 20.0
SETTLE_WITHIN = 30.0  # seconds for a revalidation in the background to show the current version
pytestmark = pytest.mark.model  # ~2 min: run by `make test`, not by the fast `make unit`
EXAMPLES = int(os.environ.get("ZIPMOUNT_MODEL_EXAMPLES", "30"))

PREFIX = "bkt/m/"
ARCHIVES = ["a.zip", "b.zip"]
MEMBERS = ["a.txt", "d/b.bin", "d/e/c.txt", "z.bin"]
SIZES = [0, 1, 100, 5000, 70_000, 200_000]
PATHS = ["", "a.zip", "b.zip", "c.zip", "a.zip/d", "a.zip/d/e", "b.zip/d", "a.zip/nope",
         "a.zip/a.txt/x", "x/y"] + [f"{a}/{m}" for a in ARCHIVES for m in [*MEMBERS, "version.txt"]]

MEMBER_PATHS = [f"{a}/{m}" for a in ARCHIVES for m in [*MEMBERS, "version.txt"]]
OFFSETS = st.sampled_from([0, 1, 4000, 65_535, 65_536, 150_000, 199_990])
SIZES_READ = st.sampled_from([1, 100, 4096, 65_536, 300_000])

members = st.dictionaries(
    st.sampled_from(MEMBERS),
    st.tuples(st.sampled_from(SIZES), st.integers(0, 2**16), st.booleans()),  # size, seed, deflated
    min_size=1, max_size=len(MEMBERS))


def build_zip(version: int, files: dict[str, tuple[int, int, bool]]) -> bytes:
    """An archive of ``files``, with ``version.txt`` whose size tells the version apart."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo("version.txt", (2024, 5, 17, 12, 30, 42)), b"v" * (10 + version))
        for name, (size, seed, deflated) in sorted(files.items()):
            rng = random.Random(seed)
            data = rng.randbytes(size) if not deflated else \
                bytes(rng.choice(b"abc\n") for _ in range(min(size, 512))) * (size // 512 + 1)
            info = zipfile.ZipInfo(name, (2024, 5, 17, 12, 30, 42))
            info.compress_type = zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED
            info.external_attr = 0o100644 << 16
            zf.writestr(info, data[:size])
    return buf.getvalue()


FAULTS = st.sampled_from(["fail", "delay", "hang", "short", "etag"])


class Model(RuleBasedStateMachine):
    """The scenario; subclasses pick the door (``door``) and what the tree serves: the prefix
    (``single`` False: every archive below it, as directories) or the archive a.zip alone."""

    door = "tree"
    single = False

    def __init__(self) -> None:
        super().__init__()
        self.ref = Reference()
        self.store = FaultyStore(MemoryStore(), timeout=TIMEOUT)
        # key -> (the door it was opened through, handle, path, versions it may serve)
        self.handles: dict[int, tuple[object, object, str, set[int]]] = {}
        self.next_handle = 0
        self.cache_dir = tempfile.mkdtemp(prefix="zipmount-model-")
        self.engines: list[Engine] = []  # a remount adds one; handles keep theirs
        self.calls = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model-call")

    # -- set-up and tear-down -----------------------------------------------------------------------

    @initialize(first=members, second=st.none() | members,
                opened=st.lists(st.tuples(st.sampled_from(MEMBER_PATHS), OFFSETS, SIZES_READ),
                                min_size=1, max_size=3))
    def make_tree(self, first, second, opened) -> None:
        """The store, the tree over it, and a few handles opened (and read) on the first
        versions, for the later rules to read across changes and faults."""
        for name, files in zip(ARCHIVES, (first, second), strict=True):
            hist = self.ref.archive(name, PREFIX + name)
            if files is not None:
                self.store.inner.put(hist.key, hist.record(build_zip(0, files)).data)
            else:
                hist.ever_absent = True
        self.mount("")
        for path, offset, size in opened:
            self.open_and_read(path, [(offset, size)])

    def teardown(self) -> None:
        self.store.lift()
        for door, handle, _, _ in self.handles.values():
            with contextlib.suppress(OSError):
                door.close(handle)
        self.calls.shutdown(wait=True)
        for engine in self.engines:
            engine.close()
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def mount(self, _: str) -> None:
        """A new engine over the same cache directory (another process, or a remount) and its
        tree behind the door; what it serves within the TTL may come from the cache alone."""
        engine = Engine(StorageOptions(timeout=TIMEOUT),
                        CacheConfig(memory=16 << 20, dir=self.cache_dir, ttl=TTL))
        self.engines.append(engine)
        try:
            tree = engine.tree_for(self.store, PREFIX + ARCHIVES[0] if self.single else PREFIX,
                                   ttl=TTL)
        except ZipmountError as exc:
            raise OSError(exc.errno, str(exc)) from None
        self.doorway = DOORS[self.door](tree, engine.stats, TTL)

    @rule()
    def remount(self) -> None:
        """Serve through a new engine on the same cache directory (a second process)."""
        _, code = self.call("remount", self.mount, "")
        if code:  # the door in use stays the old one
            if code == errno.ENOENT and all(h.current is None for h in self.ref.archives.values()):
                return  # nothing left to mount: a prefix without objects does not exist
            path = ARCHIVES[0] if self.single else ""
            problem = self.ref.error_allowed("stat", path, code)
            assert problem is None, f"remount: {problem}"

    def scoped(self, path: str) -> str | None:
        """``path`` as this scenario uses it: with a.zip alone, b.zip's paths stand for a.zip's
        and paths outside the archives are skipped (None)."""
        if not self.single:
            return path
        first, sep, rest = path.partition("/")
        return f"{ARCHIVES[0]}{sep}{rest}" if first in ARCHIVES else None

    # -- calls through the door, each bounded --------------------------------------------------------

    def call(self, what: str, fn, path: str, *args):
        """``fn(path, *args)`` on a thread of its own, ``path`` as the door names it: (result,
        None) or (None, errno). Fails the test if it does not return within DEADLINE or raises
        anything but an OSError."""
        if self.single:  # the door's root is the archive a.zip
            path = path.removeprefix(ARCHIVES[0]).lstrip("/")
        future = self.calls.submit(fn, path, *args)
        op, t0 = what.split(" ", 1)[0], time.monotonic()
        try:
            result = future.result(timeout=DEADLINE)
            event(f"{op}: answered")
            return result, None
        except concurrent.futures.TimeoutError:
            self.store.lift()  # let the stuck call go, then report it
            raise AssertionError(f"{what} did not return within {DEADLINE:g} s") from None
        except OSError as exc:
            assert exc.errno is not None, f"{what} raised {exc!r} without an errno"
            event(f"{op}: {errno.errorcode.get(exc.errno, exc.errno)}")
            return None, exc.errno
        finally:
            took = (time.monotonic() - t0) / TIMEOUT
            if took > 1:
                event(f"a call took {'over 4' if took > 4 else '2-4' if took > 2 else '1-2'} x timeout")

    # -- observations ---------------------------------------------------------------------------------

    @rule(path=st.sampled_from(PATHS))
    def stat(self, path: str) -> None:
        path = self.scoped(path)
        if path is None:
            return
        got, code = self.call(f"stat {path!r}", self.doorway.stat, path)
        problem = self.ref.error_allowed("stat", path, code) if code else \
            self.ref.stat_allowed(path, *got)
        assert problem is None, problem

    @rule(path=st.sampled_from(PATHS))
    def listdir(self, path: str) -> None:
        path = self.scoped(path)
        if path is None:
            return
        got, code = self.call(f"listdir {path!r}", self.doorway.listdir, path)
        problem = self.ref.error_allowed("listdir", path, code) if code else \
            self.ref.listdir_allowed(path, got)
        assert problem is None, problem

    @rule(path=st.sampled_from(PATHS))
    def open(self, path: str) -> None:
        self.open_handle(path)

    def open_handle(self, path: str) -> int | None:
        """Open ``path``; the handle's key if it opened."""
        path = self.scoped(path)
        if path is None:
            return None
        handle, code = self.call(f"open {path!r}", self.doorway.open, path)
        if code:
            problem = self.ref.error_allowed("open", path, code)
            assert problem is None, problem
            return None
        candidates = self.ref.open_candidates(path)
        if not candidates:
            self.doorway.close(handle)
            raise AssertionError(f"open {path!r} succeeded: no version has a file there")
        self.handles[self.next_handle] = (self.doorway, handle, path, candidates)
        self.next_handle += 1
        return self.next_handle - 1

    @rule(path=st.sampled_from(MEMBER_PATHS),
          ranges=st.lists(st.tuples(OFFSETS, SIZES_READ), min_size=1, max_size=4))
    def open_and_read(self, path: str, ranges: list[tuple[int, int]]) -> None:
        """Open a member and read it at a few offsets; the handle stays open for later reads."""
        key = self.open_handle(path)
        for offset, size in ranges if key is not None else ():
            self.read_handle(key, offset, size)

    # Which handles are open depends on what the tree answered (faults, timing): rules on them
    # are always enabled and pick one by a number, so that hypothesis replays the same draws.
    @rule(pick=st.integers(0, 15), offset=OFFSETS, size=SIZES_READ)
    def read(self, pick: int, offset: int, size: int) -> None:
        if self.handles:
            self.read_handle(sorted(self.handles)[pick % len(self.handles)], offset, size)

    def read_handle(self, key: int, offset: int, size: int) -> None:
        door, handle, path, candidates = self.handles[key]
        got, code = self.call(f"read {path!r} [{offset}, +{size})", self._read, "", door,
                              handle, offset, size)
        if code:
            problem = self.ref.error_allowed("read", path, code)
            assert problem is None, problem
            return
        matching = self.ref.read_matches(path, candidates, offset, size, got)
        assert matching, (f"read {path!r} [{offset}, +{size}) gave {len(got)} bytes that are no "
                          f"version's this handle could serve ({sorted(candidates)}): "
                          "wrong or mixed bytes")
        self.handles[key] = (door, handle, path, matching)

    @staticmethod
    def _read(_: str, door, handle: object, offset: int, size: int) -> bytes:
        return door.read(handle, offset, size)

    @rule(pick=st.integers(0, 15))
    def close(self, pick: int) -> None:
        if self.handles:
            door, handle, _, _ = self.handles.pop(sorted(self.handles)[pick % len(self.handles)])
            door.close(handle)

    # -- changes on the server --------------------------------------------------------------------------

    @rule(name=st.sampled_from(ARCHIVES), files=members)
    def replace(self, name: str, files) -> None:
        hist = self.ref.archives[name]
        if hist.current is None:
            hist.ever_absent = True  # absent until the tree lists it
        version = hist.record(build_zip(len(hist.versions), files))
        self.store.inner.put(hist.key, version.data)
        hist.changes += 1

    @rule(name=st.sampled_from(ARCHIVES))
    def delete(self, name: str) -> None:
        hist = self.ref.archives[name]
        if hist.current is not None:
            self.store.inner.delete(hist.key)
            hist.current = None
            hist.ever_absent = True
            hist.changes += 1

    # -- faults and time -----------------------------------------------------------------------------------

    @rule(kind=FAULTS, count=st.integers(1, 3), reads_only=st.booleans(),
          seconds=st.sampled_from([0.01, 0.05, 2 * TIMEOUT]))
    def inject_fault(self, kind: str, count: int, reads_only: bool, seconds: float) -> None:
        action = {"fail": Fail(), "delay": Delay(seconds), "hang": Hang(),
                  "short": ShortBody(0.5), "etag": ChangedETag()}[kind]
        if kind == "etag":
            for hist in self.ref.archives.values():
                hist.changes += 1  # whichever the fault meets is re-uploaded
        self.ref.faulted = True
        match = (lambda c: c.is_read) if reads_only else (lambda c: True)
        self.store.start(first_n(count, action, match) if kind != "delay" else always(action, match))

    @rule()
    def lift_faults(self) -> None:
        self.store.lift()

    @rule()
    def expire_ttl(self) -> None:
        time.sleep(TTL)

    @rule()
    def settle(self) -> None:
        """Faults lifted and the TTL passed: every path soon shows its current version."""
        self.store.lift()
        time.sleep(TTL)
        deadline = time.monotonic() + SETTLE_WITHIN
        for path in PATHS:
            if self.single and not path.startswith(ARCHIVES[0]):
                continue
            want = self.ref.current_view(path)
            while True:
                got, code = self.call(f"stat {path!r}", self.doorway.stat, path)
                seen = got if code is None else None
                if seen == want or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert seen == want, (f"{path!r} shows {seen or errno.errorcode.get(code, code)} "
                                  f"{SETTLE_WITHIN:g} s after the faults were lifted and the TTL "
                                  f"passed; the current version has {want}")
        self.ref.faulted = False

    @invariant()
    def nothing_stuck(self) -> None:
        assert not self.calls._work_queue.qsize(), "a call is still queued"


def _settings() -> settings:
    return settings(max_examples=EXAMPLES, deadline=None,
                    stateful_step_count=int(os.environ.get("ZIPMOUNT_MODEL_STEPS", "20")),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                    derandomize=os.environ.get("ZIPMOUNT_MODEL_RANDOM") is None,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate] +
                    ([Phase.shrink] if os.environ.get("ZIPMOUNT_MODEL_SHRINK") else []))


class TreeModel(Model):
    door = "tree"


class OperationsModel(Model):
    door = "operations"


class FsspecModel(Model):
    door = "fsspec"


class SingleTreeModel(Model):
    door, single = "tree", True


class SingleOperationsModel(Model):
    door, single = "operations", True


class SingleFsspecModel(Model):
    door, single = "fsspec", True


TestTheTreeKeepsEveryPromiseOfTheModel = TreeModel.TestCase
TestTheFuseOperationsKeepEveryPromiseOfTheModel = OperationsModel.TestCase
TestTheFsspecFilesystemKeepsEveryPromiseOfTheModel = FsspecModel.TestCase
TestTheTreeOfOneArchiveKeepsEveryPromiseOfTheModel = SingleTreeModel.TestCase
TestTheFuseOperationsOfOneArchiveKeepEveryPromiseOfTheModel = SingleOperationsModel.TestCase
TestTheFsspecFilesystemOfOneArchiveKeepsEveryPromiseOfTheModel = SingleFsspecModel.TestCase
for _machine in (TreeModel, OperationsModel, FsspecModel, SingleTreeModel, SingleOperationsModel,
                 SingleFsspecModel):
    _machine.TestCase.settings = _settings()
