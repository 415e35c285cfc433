"""The reference model's scenario, smaller, through a real FUSE mount of a prefix on a real S3
server process (moto, through the robust harness's proxy): random stat, listdir, open and read
at offsets (handles kept open across steps), replacements and deletions of archives on the
server and waits past the TTL, every answer checked against tests/model/model_reference.py.

Checked at every step: the bytes of a handle all come from one version of its member (never
mixed), exactly that version's bytes at the offsets read (never cut where another version's
member ends: the kernel takes an open file's size from the daemon), errors are only the
promised ones (``Reference.error_allowed``: ENOENT, ENOTDIR, EISDIR where some version lacks
the path or has the other kind, ESTALE for a changed archive, EIO never, as no faults are
injected here; and the kernel's ENOTDIR below a file; a handle's reads never ENOENT), every
call returns within ``DEADLINE``; after the TTL has passed (plus slack) the mount shows the
current version: the root lists the archives there now, every path has the current kind and
size, new opens read the current bytes. ``ZIPMOUNT_MODEL_MOUNT_EXAMPLES`` sets the sequences
(default 20), each a mount of its own prefix.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat as stat_module
import time

import hypothesis.strategies as hs
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test
from model_reference import Reference
from robust.harness import guarded, pread_aligned, stack, wait_for
from test_model import ARCHIVES, MEMBER_PATHS, MEMBERS, PATHS, build_zip

pytestmark = pytest.mark.model

TTL = 1  # --ttl
TIMEOUT = 5  # --timeout
# A call through the kernel may need a few store round trips, each bounded by --timeout; the
# slack is for a loaded 2-core machine. A call that has not returned by then is a hang.
DEADLINE = 4 * TIMEOUT + 20.0
SETTLE_WITHIN = 30.0  # seconds past the TTL for the mount to show the current version
EXAMPLES = int(os.environ.get("ZIPMOUNT_MODEL_MOUNT_EXAMPLES", "20"))

# Hypothesis starts from the first elements: members large enough for reads at most offsets.
OFFSETS = hs.sampled_from([0, 4000, 65_535, 65_536, 1, 150_000])
SIZES_READ = hs.sampled_from([4096, 65_536, 300_000, 100, 1])
SIZES = [200_000, 70_000, 5000, 100, 1, 0]
members = hs.dictionaries(
    hs.sampled_from(MEMBERS),
    hs.tuples(hs.sampled_from(SIZES), hs.integers(0, 2**16), hs.booleans()),
    min_size=len(MEMBERS) - 1, max_size=len(MEMBERS))  # most paths open: reads across changes
_prefixes = itertools.count()


def _pread(fd: int, offset: int, size: int, direct: bool) -> bytes:
    """``size`` bytes at ``offset`` of ``fd`` (fewer at its end); with ``direct`` through an
    aligned buffer (O_DIRECT: straight to the daemon, past the kernel's page cache)."""
    return pread_aligned(fd, offset, size) if direct else os.pread(fd, size, offset)


class MountModel(RuleBasedStateMachine):
    """The scenario through one mount of a prefix of its own."""

    harness = None  # the robust harness's stack, set by the test

    def __init__(self) -> None:
        super().__init__()
        self.ref = Reference()
        self.prefix = f"model-mount/{next(_prefixes)}/"
        self.exits = contextlib.ExitStack()
        # key -> (fd, path, direct, versions it may serve)
        self.handles: dict[int, tuple[int, str, bool, set[int]]] = {}
        self.next_handle = 0
        self.changed = False  # the server changed since the last settle

    @initialize(first=members, second=hs.none() | members,
                opened=hs.lists(hs.tuples(hs.sampled_from(MEMBER_PATHS), hs.booleans(), OFFSETS,
                                          SIZES_READ), min_size=1, max_size=3))
    def mount(self, first, second, opened) -> None:
        """The archives on the server, the mount, and a few handles opened (and read) on the
        first versions, for the later rules to read across changes."""
        for name, files in zip(ARCHIVES, (first, second), strict=True):
            hist = self.ref.archive(name, self.prefix + name)
            if files is not None:
                self.harness.put(hist.key, hist.record(build_zip(0, files)).data)
            else:
                hist.ever_absent = True
        handle = self.exits.enter_context(
            self.harness.mounted(self.prefix, "--ttl", str(TTL), "--timeout", str(TIMEOUT)))
        self.mountpoint = handle.mountpoint
        for path, direct, offset, size in opened:
            self.open_and_read(path, direct, [(offset, size)])

    def teardown(self) -> None:
        for fd, *_ in self.handles.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.exits.close()  # unmounts, ends the daemon
        for hist in self.ref.archives.values():
            if hist.current is not None:
                self.harness.delete(hist.key)

    # -- calls through the mount, each bounded ------------------------------------------------------

    def call(self, what: str, fn, *args):
        """``fn(*args)`` bounded by DEADLINE: (result, None) or (None, errno)."""
        out = guarded(lambda: fn(*args), DEADLINE)  # AssertionError if it hangs
        assert out.error is None or out.value is None, what
        return (None, out.error) if out.error is not None else (out.value, None)

    def error_allowed(self, op: str, path: str, code: int) -> str | None:
        """The model's rule, and POSIX's ENOTDIR for a path below what some version has as a
        file (the kernel walks the path one name at a time)."""
        hist, inner = self.ref.split(path)
        if code == errno.ENOTDIR and hist is not None and any(
                v.kind(inner[:i]) == "file" for v in hist.versions
                for i, c in enumerate(inner) if c == "/"):
            return None
        return self.ref.error_allowed(op, path, code)

    def at(self, path: str) -> str:
        return os.path.join(self.mountpoint, path) if path else str(self.mountpoint)

    def _stat(self, path: str) -> tuple[str, int]:
        st_ = os.stat(self.at(path))
        if stat_module.S_ISDIR(st_.st_mode):
            return "dir", 0
        return "file", st_.st_size

    # -- observations ---------------------------------------------------------------------------------

    @rule(path=hs.sampled_from(PATHS))
    def stat(self, path: str) -> None:
        got, code = self.call(f"stat {path!r}", self._stat, path)
        problem = self.error_allowed("stat", path, code) if code else \
            self.ref.stat_allowed(path, *got)
        assert problem is None, problem

    @rule(path=hs.sampled_from(PATHS))
    def listdir(self, path: str) -> None:
        got, code = self.call(f"listdir {path!r}", os.listdir, self.at(path))
        problem = self.error_allowed("listdir", path, code) if code else \
            self.ref.listdir_allowed(path, got)
        assert problem is None, problem

    @rule(path=hs.sampled_from(MEMBER_PATHS), direct=hs.booleans(),
          ranges=hs.lists(hs.tuples(OFFSETS, SIZES_READ), min_size=1, max_size=3))
    def open_member(self, path: str, direct: bool, ranges: list[tuple[int, int]]) -> None:
        self.open_and_read(path, direct, ranges)

    def open_and_read(self, path: str, direct: bool, ranges: list[tuple[int, int]]) -> None:
        """Open a member (through the page cache or O_DIRECT), read it at a few offsets; the
        handle stays open for later steps."""
        flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
        fd, code = self.call(f"open {path!r}", os.open, self.at(path), flags)
        if code:
            problem = self.error_allowed("open", path, code)
            assert problem is None, problem
            return
        candidates = self.ref.open_candidates(path)
        if not candidates:
            os.close(fd)
            raise AssertionError(f"open {path!r} succeeded: no version has a file there")
        key, self.next_handle = self.next_handle, self.next_handle + 1
        self.handles[key] = (fd, path, direct, candidates)
        for offset, size in ranges:
            self.read_handle(key, offset, size)

    @rule(offset=OFFSETS, size=SIZES_READ)
    def read(self, offset: int, size: int) -> None:
        """Read every open handle at ``offset``."""
        for key in sorted(self.handles):
            self.read_handle(key, offset, size)

    def read_handle(self, key: int, offset: int, size: int) -> None:
        fd, path, direct, candidates = self.handles[key]
        what = f"read {path!r} [{offset}, +{size}){' O_DIRECT' if direct else ''}"
        got, code = self.call(what, _pread, fd, offset, size, direct)
        if code:
            problem = self.ref.error_allowed("read", path, code)
            assert problem is None, f"{what}: {problem}"
            return
        matching = self.ref.read_matches(path, candidates, offset, size, got)
        assert matching, (f"{what} gave {len(got)} bytes that are no version's this handle "
                          f"could serve ({sorted(candidates)}): wrong or mixed bytes")
        self.handles[key] = (fd, path, direct, matching)

    @rule(pick=hs.integers(0, 15))
    def close(self, pick: int) -> None:
        if self.handles:
            fd, *_ = self.handles.pop(sorted(self.handles)[pick % len(self.handles)])
            os.close(fd)

    # -- changes on the server and time ---------------------------------------------------------------

    @rule(name=hs.sampled_from(ARCHIVES), files=members)
    def replace(self, name: str, files) -> None:
        """Put a new version (a new ETag; ``version.txt`` tells it apart) on the server, and
        read the handles open on the archive at once, before the mount revalidates it."""
        hist = self.ref.archives[name]
        if hist.current is None:
            hist.ever_absent = True  # absent until the mount lists it
        self.harness.put(hist.key, hist.record(build_zip(len(hist.versions), files)).data)
        hist.changes += 1
        self.changed = True
        self.read_open_on(name)

    def read_open_on(self, name: str) -> None:
        for key, (_, path, _, _) in sorted(self.handles.items()):
            if path.startswith(f"{name}/"):
                self.read_handle(key, 4000, 65_536)

    @rule(name=hs.sampled_from(ARCHIVES))
    def delete(self, name: str) -> None:
        """Delete the archive on the server; read the handles open on it at once."""
        hist = self.ref.archives[name]
        if hist.current is not None:
            self.harness.delete(hist.key)
            hist.current = None
            hist.ever_absent = True
            hist.changes += 1
            self.changed = True
            self.read_open_on(name)

    @rule()
    def settle(self) -> None:
        """The TTL passed since the last change: the mount soon shows the current version of
        every path, and new opens read its bytes."""
        if self.changed:
            time.sleep(TTL)
            self.changed = False
        assert wait_for(self.shows_current, SETTLE_WITHIN, 0.2), (
            f"{SETTLE_WITHIN:g} s past the TTL the mount still differs from the current "
            f"versions: {self.difference()}")
        for key in sorted(self.handles):  # handles opened before still serve their version
            self.read_handle(key, 0, 300_000)

    def shows_current(self) -> bool:
        return self.difference() is None

    def difference(self) -> str | None:
        """What the mount shows unlike the current versions (None: nothing)."""
        now = sorted(h.name for h in self.ref.archives.values() if h.current is not None)
        names, code = self.call("listdir ''", os.listdir, self.at(""))
        if sorted(names or []) != now:
            return f"the root lists {names or errno.errorcode.get(code)}, not {now}"
        for path in PATHS:
            want = self.ref.current_view(path)
            got, code = self.call(f"stat {path!r}", self._stat, path)
            if got != want:
                return f"{path!r} shows {got or errno.errorcode.get(code, code)}, not {want}"
            if want is not None and want[0] == "file":
                hist, inner = self.ref.split(path)
                data, code = self.call(f"read {path!r}", _read_whole, self.at(path))
                if data != hist.current.files[inner]:
                    return (f"a new open of {path!r} reads "
                            f"{errno.errorcode.get(code) if code else f'{len(data)} other bytes'}")
        return None


def _read_whole(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


@pytest.fixture(scope="module")
def st(tmp_path_factory):
    with stack(tmp_path_factory.mktemp("model-mount")) as s:
        yield s


def test_a_real_mount_of_a_prefix_on_a_real_s3_server_keeps_every_promise_of_the_model(st):
    MountModel.harness = st
    run_state_machine_as_test(MountModel, settings=settings(
        max_examples=EXAMPLES, deadline=None,
        stateful_step_count=int(os.environ.get("ZIPMOUNT_MODEL_MOUNT_STEPS", "10")),
        suppress_health_check=list(HealthCheck),
        derandomize=os.environ.get("ZIPMOUNT_MODEL_RANDOM") is None,
        phases=[Phase.explicit, Phase.reuse, Phase.generate] +
        ([Phase.shrink] if os.environ.get("ZIPMOUNT_MODEL_SHRINK") else [])))


def test_a_handle_open_on_an_archive_deleted_on_the_server_reads_its_version_or_estale(st):
    files = {"z.bin": (200_000, 2, False)}
    v0 = build_zip(0, files)
    st.put("model-mount-deleted/a.zip", v0)
    st.put("model-mount-deleted/b.zip", v0)
    with st.mounted("model-mount-deleted/", "--ttl", str(TTL), "--timeout", str(TIMEOUT)) as h:
        fd = os.open(h.mountpoint / "a.zip" / "z.bin", os.O_RDONLY)
        try:
            want = Reference().archive("a.zip", "").record(v0).files["z.bin"]
            assert os.pread(fd, 100, 0) == want[:100]
            st.delete("model-mount-deleted/a.zip")
            time.sleep(TTL)
            assert wait_for(lambda: os.listdir(h.mountpoint) == ["b.zip"], SETTLE_WITHIN, 0.2)
            out = guarded(lambda: os.pread(fd, 4096, 150_000), DEADLINE)
            assert out.error == errno.ESTALE or out.value == want[150_000:154_096], out
        finally:
            os.close(fd)


def test_a_handle_open_on_a_member_that_shrank_on_the_server_reads_its_whole_version(st):
    key = "model-mount-shrunk/a.zip"
    v0 = build_zip(0, {"z.bin": (200_000, 2, False)})
    st.put(key, v0)
    with st.mounted("model-mount-shrunk/", "--ttl", str(TTL), "--timeout", str(TIMEOUT)) as h:
        path = h.mountpoint / "a.zip" / "z.bin"
        fd = os.open(path, os.O_RDONLY)
        try:
            want = Reference().archive("a.zip", "").record(v0).files["z.bin"]
            assert os.pread(fd, 100, 0) == want[:100]
            st.put(key, build_zip(1, {"z.bin": (5000, 3, False)}))
            time.sleep(TTL)
            assert wait_for(lambda: os.stat(path).st_size == 5000, SETTLE_WITHIN, 0.2)
            out = guarded(lambda: os.pread(fd, 4096, 150_000), DEADLINE)
            assert out.error == errno.ESTALE or out.value == want[150_000:154_096], out
        finally:
            os.close(fd)
