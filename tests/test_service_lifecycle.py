"""Daemon life cycle as an operator sees it: background mode exit codes, a daemon killed with
SIGKILL leaving a dead mount that `zipmount umount` and the next start clean, and several mounts
of one config served by one process over one shared cache.
"""

from __future__ import annotations

import errno
import os
import signal
import time

import pytest
from service_kit import (
    Endpoint,
    assert_nothing_left,
    clean_env,
    daemon,
    fresh_dirs,
    notify_socket,
    read_uncached,
    require_fuse,
    settled_stats,
    stats,
    wait_until,
    write_config,
    zipmount,
)
from support.mount import CommandTimeout, cleanup, is_mounted, pids_with_marker, run

# these tests mount with zipmount's own commands (service_kit), not through ``zm``
pytestmark = pytest.mark.usefixtures("fuse")


def _config(tmp_path, s3, mounts, name="life.yaml", **kw):
    ep = Endpoint.of(s3)
    env_file = ep.env_file(tmp_path / f"{name}.env")
    return write_config(tmp_path / name, storage=ep.storage(env_file=env_file), mounts=mounts,
                        cache_dir=kw.pop("cache_dir", tmp_path / "cache"), **kw)


def _a_file(contents):
    return next((n, c) for n, c in sorted(contents.files.items()) if len(c) > 1000)


# --------------------------------------------------------------------------------------------
# background mode
# --------------------------------------------------------------------------------------------
def test_background_mode_exit_0_means_mounted(tmp_path, s3, samples):
    require_fuse()
    mp1, mp2 = fresh_dirs(tmp_path, "mp1", "mp2")
    cfg = _config(tmp_path, s3, [("s3://data/single/stored.zip", mp1), ("s3://data/rec/", mp2)])
    try:
        r = zipmount("mount", "--config", cfg)
        assert r.rc == 0, r.describe()
        # No waiting: exit 0 means both answer already.
        assert is_mounted(mp1) and is_mounted(mp2)
        name, content = _a_file(samples.stored)
        assert (mp1 / name).read_bytes() == content
        assert "c.zip" in os.listdir(mp2)
        pids = pids_with_marker(str(cfg))
        assert len(pids) == 1, f"one daemon process serves every mount of a config: {pids}"
        # Unmounting every mount from outside ends the daemon.
        for mp in (mp1, mp2):
            u = zipmount("umount", mp)
            assert u.rc == 0, u.describe()
        wait_until(lambda: not pids_with_marker(str(cfg)), 20, "the daemon to exit")
        assert_nothing_left(cfg, [mp1, mp2])
    finally:
        cleanup([mp1, mp2], [str(cfg)])


def test_background_mode_exit_1_means_nothing_mounted(tmp_path, s3):
    require_fuse()
    mp1, mp2 = fresh_dirs(tmp_path, "mp1", "mp2")
    cfg = _config(tmp_path, s3, [("s3://data/single/stored.zip", mp1),
                                 ("s3://data/single/nope.zip", mp2)])
    try:
        r = zipmount("mount", "--config", cfg)
        assert r.rc == 1, r.describe()
        errors = r.error_lines()
        assert len(errors) == 1 and "nope.zip" in errors[0], r.describe()
        time.sleep(0.5)
        assert_nothing_left(cfg, [mp1, mp2])
    finally:
        cleanup([mp1, mp2], [str(cfg)])


# --------------------------------------------------------------------------------------------
# SIGKILL
# --------------------------------------------------------------------------------------------
def _kill_9(d) -> None:
    d.signal(signal.SIGKILL)
    d.wait(timeout=10)
    wait_until(lambda: all(_is_dead_mount(mp) for mp in d.mountpoints), 20, "dead mounts")


def _is_dead_mount(mp) -> bool:
    try:
        r = run(["ls", str(mp)], timeout=10)
    except CommandTimeout:
        return False
    return is_mounted(mp) and r.rc != 0 and "not connected" in r.stderr


def test_sigkill_leaves_a_dead_mount_that_zipmount_umount_cleans(tmp_path, s3):
    require_fuse()
    mp1, mp2 = fresh_dirs(tmp_path, "mp1", "mp2")
    cfg = _config(tmp_path, s3, [("s3://data/single/stored.zip", mp1), ("s3://data/rec/", mp2)])
    with daemon(cfg, [mp1, mp2]) as d:
        _kill_9(d)
        assert _is_dead_mount(mp1) and _is_dead_mount(mp2)
        for mp in (mp1, mp2):
            r = zipmount("umount", mp)
            assert r.rc == 0, r.describe()
            assert not is_mounted(mp)
            assert os.listdir(mp) == []
        r = zipmount("umount", mp1)
        assert r.rc == 1 and "not mounted" in r.stderr, r.describe()
    assert_nothing_left(cfg, [mp1, mp2])


def _start_and_kill_9(cfg, mps) -> None:
    """A daemon of CFG (background mode) killed with SIGKILL: its mounts stay, dead."""
    r = zipmount("mount", "--config", cfg)
    assert r.rc == 0, r.describe()
    for mp in mps:
        os.stat(mp)  # the kernel now caches the root's attributes (ttl 60 s)
    (pid,) = pids_with_marker(str(cfg))
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pids_with_marker(str(cfg)), 10, "the killed daemon to go")
    # The leader is a zombie before its last thread is gone and /dev/fuse is closed.
    wait_until(lambda: all(_is_dead_mount(mp) for mp in mps), 20, "dead mounts")


def test_sigkill_then_restart_cleans_the_dead_mounts_and_serves_again(tmp_path, s3, samples):
    """The next start (systemd's Restart=on-failure) cleans the dead mounts itself — right away,
    while the kernel still answers stat() of the dead root from its attribute cache."""
    require_fuse()
    mp1, mp2 = fresh_dirs(tmp_path, "mp1", "mp2")
    cfg = _config(tmp_path, s3, [("s3://data/single/stored.zip", mp1), ("s3://data/rec/", mp2)])
    try:
        _start_and_kill_9(cfg, [mp1, mp2])
        # The dead mounts still "answer" stat() from the cache: wait for READY=1 instead.
        with notify_socket() as listener, daemon(
                cfg, [mp1, mp2], env=clean_env(NOTIFY_SOCKET=listener.address),
                wait=False) as d2:
            listener.wait_for("READY=1", timeout=60, daemon=d2)
            name, content = _a_file(samples.stored)
            assert (mp1 / name).read_bytes() == content
            assert "c.zip" in os.listdir(mp2)
            assert d2.stderr().count("cleaning a stale mount") == 2, d2.stderr()
            d2.signal(signal.SIGTERM)
            assert d2.wait(timeout=30) == 0
    finally:
        cleanup([mp1, mp2], [str(cfg)])
    assert_nothing_left(cfg, [mp1, mp2])


def test_sigkill_then_background_start_cleans_too(tmp_path, s3):
    require_fuse()
    (mp,) = fresh_dirs(tmp_path, "mp")
    cfg = _config(tmp_path, s3, [("s3://data/rec/", mp)])
    try:
        _start_and_kill_9(cfg, [mp])
        r = zipmount("mount", "--config", cfg)
        assert r.rc == 0, r.describe()
        assert "c.zip" in os.listdir(mp)
    finally:
        cleanup([mp], [str(cfg)])
    assert_nothing_left(cfg, [mp])


# --------------------------------------------------------------------------------------------
# several mounts, one daemon, one cache
# --------------------------------------------------------------------------------------------
def test_mounts_of_one_config_share_one_process_and_one_cache(tmp_path, s3, samples):
    require_fuse()
    mp1, mp2, mp3 = fresh_dirs(tmp_path, "mp1", "mp2", "mp3")
    cfg = _config(tmp_path, s3, [("s3://data/single/stored.zip", mp1),
                                 ("s3://data/single/stored.zip", mp2),
                                 ("s3://data/single/", mp3)])
    with daemon(cfg, [mp1, mp2, mp3]) as d:
        assert pids_with_marker(str(cfg)) == [d.proc.pid]
        s = stats(mp1)
        assert s["mounts"] == 3
        name, content = _a_file(samples.stored)

        r = read_uncached(mp1 / name)
        assert r.rc == 0 and r.stdout_bytes == content, r.describe()
        after_first = settled_stats(mp2)  # the counters are the daemon's, whichever root
        assert after_first["requests"] > s["requests"]
        assert after_first["bytes_read"] >= s["bytes_read"] + len(content)

        # The same member through the other mounts: served from the shared cache.
        for path in (mp2 / name, mp3 / "stored.zip" / name):
            r = read_uncached(path)
            assert r.rc == 0 and r.stdout_bytes == content, r.describe()
        after_all = stats(mp3)
        assert after_all["requests"] == after_first["requests"], \
            "a block fetched for one mount was fetched again for another"
        assert after_all["memory_hits"] > after_first["memory_hits"]
        assert after_all["bytes_read"] >= after_first["bytes_read"] + 2 * len(content)
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0
    assert_nothing_left(cfg, [mp1, mp2, mp3])


def test_a_dead_mount_gives_enotconn_not_a_hang(tmp_path, s3):
    """What users see between a crash and the restart: errors, never a hang."""
    require_fuse()
    (mp,) = fresh_dirs(tmp_path, "mp")
    cfg = _config(tmp_path, s3, [("s3://data/single/stored.zip", mp)])
    with daemon(cfg, [mp]) as d:
        _kill_9(d)
        t0 = time.monotonic()
        r = read_uncached(mp / "anything", timeout=20)
        assert r.rc == 3 and f"errno={errno.ENOTCONN}" in r.stderr, r.describe()
        assert time.monotonic() - t0 < 20
