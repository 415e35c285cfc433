"""Network faults between a live mount and its S3 endpoint, injected by a real proxy.

The daemon talks to a real moto S3 server through :class:`robust.faultproxy.FaultProxy`: the
proxy stops listening (endpoint down), black-holes requests, answers 503 SlowDown / 500, resets
connections in the middle of a body, or trickles bytes. Every read goes through the kernel
(real FUSE mount); nothing is mocked. ``--timeout 5`` bounds every remote operation.
"""

from __future__ import annotations

import errno
import os
import stat
import time

import pytest
from robust.faultproxy import Hang, ResetMidBody, Status, Trickle, always, first_n
from robust.harness import guarded, read_file, stack
from robust.zips import plain_zip, random_files

TIMEOUT = 5.0
SLACK = 3.0  # scheduling, FUSE round trips, the kernel's own retry of ESTALE lookups
FAIL = (errno.EIO, errno.ETIMEDOUT)

FILES = random_files("faults", 6, 200 * 1024)
PREFIX_A = random_files("pfx-a", 4, 50 * 1024, prefix="a")
PREFIX_B = random_files("pfx-b", 4, 50 * 1024, prefix="b")
# One archive per test (same members): the daemon's read-ahead across the members of one
# archive must not have fetched what a test reads under a fault.
CASES = ["down", "blackhole", "s503", "s500", "throttle1", "throttle2", "throttle3", "reset",
         "trickle"]


@pytest.fixture(scope="module")
def st(tmp_path_factory):
    with stack(tmp_path_factory.mktemp("faults")) as s:
        for case in CASES:
            s.put(f"faults/t/{case}.zip", plain_zip(FILES))
        s.put("faults/data.zip", plain_zip(FILES))
        s.put("pfx/a.zip", plain_zip(PREFIX_A))
        s.put("pfx/b.zip", plain_zip(PREFIX_B))
        yield s


@pytest.fixture(scope="module")
def mnt(st):
    """One prefix mount (an archive per test) for the module; the TTL is long so that no
    revalidation request mixes into the faults under test."""
    with st.mounted("faults/t/", "--timeout", str(TIMEOUT), "--ttl", "3600") as h:
        yield h


def _archive(mnt, case: str):
    """The test's own archive, its index read before any fault is injected."""
    path = mnt.mountpoint / f"{case}.zip"
    assert sorted(os.listdir(path)) == sorted(FILES)
    return path


@pytest.fixture(autouse=True)
def _proxy_healthy(st):
    """Every test starts and ends with a listening proxy that forwards everything."""
    if not st.proxy.listening:
        st.proxy.up()
    st.proxy.rule = None
    yield
    st.proxy.rule = None
    if not st.proxy.listening:
        st.proxy.up()


def _read(path, timeout=TIMEOUT + SLACK + 10):
    return guarded(lambda: read_file(path), timeout)


def _assert_alive(h):
    assert h.proc.poll() is None, f"daemon exited:\n{h.stderr()[-3000:]}"
    assert os.path.ismount(h.mountpoint)
    os.stat(h.mountpoint)


def test_endpoint_down_eio_within_timeout_then_recovers(st, mnt):
    mp = _archive(mnt, "down")
    assert _read(mp / "f000.bin").value == FILES["f000.bin"]
    st.proxy.down()
    out = _read(mp / "f001.bin")
    assert out.error in FAIL, out
    assert out.elapsed <= TIMEOUT + SLACK, out
    _assert_alive(mnt)
    # the directory was listed before: it still lists, and stat of known names still works
    assert sorted(os.listdir(mp)) == sorted(FILES)
    assert os.stat(mp / "f002.bin").st_size == len(FILES["f002.bin"])
    st.proxy.up()
    out = _read(mp / "f001.bin")
    assert out.value == FILES["f001.bin"], f"{out}: no recovery without a remount"


def test_blackholed_endpoint_times_out_not_hangs(st, mnt):
    mp = _archive(mnt, "blackhole")
    with st.proxy.fault(always(Hang())):
        out = _read(mp / "f003.bin")
    assert out.error in FAIL, out
    assert TIMEOUT * 0.8 <= out.elapsed <= TIMEOUT + SLACK, out
    _assert_alive(mnt)
    assert _read(mp / "f003.bin").value == FILES["f003.bin"]


def _retried_ranges(gets, failed_status):
    """Every failed range GET was sent again later and then succeeded; returns the ranges."""
    failed = [(i, r.header("Range")) for i, r in enumerate(gets) if r.status == failed_status]
    for i, rng in failed:
        assert any(r.header("Range") == rng and r.status == 206 for r in gets[i + 1:]), \
            f"{rng} failed and was not retried to success: {[(r.action, r.status) for r in gets]}"
    return failed


@pytest.mark.parametrize(("code", "s3_code", "case"), [(503, "SlowDown", "s503"),
                                                       (500, "InternalError", "s500")])
def test_server_errors_are_retried(st, mnt, code, s3_code, case):
    mp = _archive(mnt, case)
    with st.proxy.fault(first_n(3, Status(code, s3_code))) as proxy:
        out = _read(mp / "f004.bin")
        gets = proxy.log(lambda r: r.is_range_get)
    assert out.value == FILES["f004.bin"], out
    failed = _retried_ranges(gets, code)
    assert len(failed) == 3, [(r.action, r.status) for r in gets]
    first = [r for r in gets if r.header("Range") == failed[0][1]]
    gaps = [b.t - a.t for a, b in zip(first, first[1:], strict=False)]
    assert all(g <= 0.1 * 2 ** (i + 1) + 0.5 for i, g in enumerate(gaps)), gaps


def test_persistent_throttling_is_bounded_with_jittered_backoff(st, mnt):
    """Always 503: at most 1 + retries (4) attempts per request, EIO inside the deadline, and
    the waits between attempts differ from read to read (full jitter, no lock-step)."""
    schedules = []
    for case in ("throttle1", "throttle2", "throttle3"):
        mp = _archive(mnt, case)
        with st.proxy.fault(always(Status(503, "SlowDown"))) as proxy:
            out = _read(mp / "f001.bin")
            gets = proxy.log(lambda r: r.is_range_get)
        assert out.error in FAIL, out
        assert out.elapsed <= TIMEOUT + SLACK, out
        by_range: dict[str, list] = {}
        for r in gets:
            by_range.setdefault(r.header("Range"), []).append(r)
        for rng, attempts in by_range.items():
            assert 2 <= len(attempts) <= 5, f"{len(attempts)} attempts for {rng}"
        attempts = max(by_range.values(), key=len)
        schedules.append([b.t - a.t for a, b in zip(attempts, attempts[1:], strict=False)])
    firsts = [s[0] for s in schedules]
    assert max(firsts) - min(firsts) > 0.002, f"identical backoff, no jitter: {schedules}"
    _assert_alive(mnt)


def test_connection_reset_mid_body_is_retried(st, mnt):
    mp = _archive(mnt, "reset")
    with st.proxy.fault(first_n(2, ResetMidBody(0.5))) as proxy:
        out = _read(mp / "f002.bin")
        gets = proxy.log(lambda r: r.is_range_get)
    assert out.value == FILES["f002.bin"], out
    resets = [(i, r.header("Range")) for i, r in enumerate(gets) if r.action == "reset"]
    assert len(resets) == 2, [(r.action, r.status) for r in gets]
    for i, rng in resets:
        assert any(r.header("Range") == rng and r.status == 206 for r in gets[i + 1:]), rng


def test_trickling_server_times_out(st, mnt):
    mp = _archive(mnt, "trickle")
    with st.proxy.fault(always(Trickle(chunk=64, interval=0.4), lambda r: r.is_range_get)):
        out = _read(mp / "f005.bin")
    assert out.error in FAIL, out
    assert TIMEOUT * 0.8 <= out.elapsed <= TIMEOUT + SLACK, out
    _assert_alive(mnt)
    assert _read(mp / "f005.bin").value == FILES["f005.bin"]


@pytest.mark.parametrize("kind", ["single", "prefix"])
def test_listing_keeps_working_while_endpoint_down(st, kind):
    """Directories listed before the outage keep listing (the last good view), also when the
    TTL expires during the outage and revalidation fails."""
    key = "faults/data.zip" if kind == "single" else "pfx/"
    with st.mounted(key, "--timeout", str(TIMEOUT), "--ttl", "1") as h:
        mp = h.mountpoint
        top = sorted(os.listdir(mp))
        inner = sorted(os.listdir(mp / "a.zip")) if kind == "prefix" else None
        st.proxy.down()
        t_end = time.monotonic() + 3.5
        while time.monotonic() < t_end:
            out = guarded(lambda: sorted(os.listdir(mp)), TIMEOUT + SLACK + 10)
            assert out.value == top, out
            assert out.elapsed <= TIMEOUT + SLACK, out
            if kind == "prefix":
                out = guarded(lambda: sorted(os.listdir(mp / "a.zip")), TIMEOUT + SLACK + 10)
                assert out.value == inner, out
            time.sleep(0.5)
        _assert_alive(h)
        st.proxy.up()
        name = "f003.bin" if kind == "single" else "a.zip/a001.bin"
        want = FILES.get(name) or PREFIX_A["a001.bin"]
        assert _read(mp / name).value == want


def test_archive_first_opened_during_outage_recovers(st):
    """An archive of a prefix mount first touched while the endpoint is down must not stay
    'broken' (an empty directory) once the endpoint is back."""
    with st.mounted("pfx/", "--timeout", str(TIMEOUT), "--ttl", "1") as h:
        mp = h.mountpoint
        assert sorted(os.listdir(mp)) == ["a.zip", "b.zip"]
        st.proxy.down()
        # `ls -l` of the listed directory still works: an archive is a directory even when
        # its index cannot be fetched now
        out = guarded(lambda: [os.stat(mp / n).st_mode for n in os.listdir(mp)], TIMEOUT + SLACK)
        assert out.ok and all(stat.S_ISDIR(m) for m in out.value), out
        out = guarded(lambda: os.listdir(mp / "b.zip"), TIMEOUT + SLACK + 10)
        assert out.error in FAIL, f"{out}: an unreachable archive must be EIO, not empty"
        assert out.elapsed <= TIMEOUT + SLACK, out
        st.proxy.up()
        time.sleep(1.2)  # past --ttl: the kernel forgets what it was told during the outage
        out = guarded(lambda: sorted(os.listdir(mp / "b.zip")), TIMEOUT + SLACK + 10)
        assert out.value == sorted(PREFIX_B), f"{out}: archive stayed broken after the outage"
        assert _read(mp / "b.zip" / "b002.bin").value == PREFIX_B["b002.bin"]
        _assert_alive(h)
