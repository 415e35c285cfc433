"""The CLI around mounting: background mode, umount, dead mounts, ls, stats, config files,
credential sources and mount options."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from support.checks import assert_one_line_error, assert_tree_matches
from support.mount import (
    cleanup,
    fusermount_exe,
    is_mounted,
    mount_fstype,
    pids_with_marker,
    run,
    wait_gone,
)


# ----- background mode and umount --------------------------------------------------------------
def test_background_mount_returns_once_mounted_then_umount(zm, samples):
    with zm.mounted_bg("s3://data/single/stored.zip") as (res, mp):
        assert res.rc == 0, res.describe()
        # no polling: the mount must answer as soon as the command has returned
        assert is_mounted(mp), f"{mp} not mounted when `zipmount mount` returned 0"
        assert (mount_fstype(mp) or "").startswith("fuse"), mount_fstype(mp)
        assert os.path.ismount(mp)
        assert set(os.listdir(mp)) == set(samples.stored.children(""))
        assert (mp / "data/small.bin").read_bytes() == samples.stored.files["data/small.bin"]
        daemons = pids_with_marker(mp)
        assert daemons, "no daemon process found for the background mount"
        r = zm.run("umount", mp)
        assert r.rc == 0, r.describe()
        assert not is_mounted(mp)
        # `zipmount umount` leaves no mount and no process (2 s for the exit to be reaped)
        assert wait_gone(daemons, 2) == [], "daemon still running 2 s after zipmount umount"
        assert os.listdir(mp) == []


def test_background_mount_does_not_hold_callers_pipes(zm):
    """`out=$(zipmount mount ...)` must return: the daemon may not keep stdout/stderr open."""
    mp = zm.mountpoint()
    cmd = [str(zm.exe), "mount", "s3://data/single/stored.zip", str(mp), *zm.storage_args(),
           "--cache-dir", str(zm.new_dir("cache-"))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=zm.env(), cwd=zm.new_dir("cwd-"))
    try:
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"`zipmount mount` (background) did not close its pipes within 60 s "
                f"(rc={proc.poll()}, mounted={is_mounted(mp)}): the daemon keeps the caller's "
                f"stdout/stderr open"
            ) from None
        assert proc.returncode == 0, err.decode(errors="replace")
        assert is_mounted(mp)
    finally:
        problems = cleanup([mp], [mp])
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert problems == []


def test_umount_foreground_daemon(zm):
    with zm.mounted("s3://data/single/stored.zip") as h:
        r = zm.run("umount", h.mountpoint)
        assert r.rc == 0, r.describe()
        assert not is_mounted(h.mountpoint)
        try:
            rc = h.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            raise AssertionError("foreground daemon still running 2 s after zipmount umount "
                                 "returned") from None
        assert rc == 0, f"daemon exit code {rc}\n{h.stderr()[-3000:]}"
        assert "Traceback" not in h.stderr(), h.stderr()[-3000:]


def test_sigkilled_daemon_leaves_dead_mount_that_umount_cleans(zm):
    with zm.mounted("s3://data/single/stored.zip") as h:
        mp = h.mountpoint
        for pid in pids_with_marker(mp):
            os.kill(pid, signal.SIGKILL)
        h.proc.wait(timeout=10)
        assert wait_gone(pids_with_marker(mp), 10) == []
        r = run(["stat", str(mp)])
        assert r.rc != 0 and "Transport endpoint is not connected" in r.stderr, r.describe()
        assert is_mounted(mp), "kernel mount vanished by itself"
        u = zm.run("umount", mp)
        assert u.rc == 0, u.describe()
        assert not is_mounted(mp)
        assert os.listdir(mp) == []


def test_remount_after_dead_mount(zm, samples):
    """A dead mount cleaned by `zipmount umount` can be mounted again at the same place."""
    with zm.mounted("s3://data/single/stored.zip") as h:
        mp = h.mountpoint
        os.kill(h.pid, signal.SIGKILL)
        h.proc.wait(timeout=10)
        assert zm.run("umount", mp).rc == 0
    with zm.mounted("s3://data/single/deflated.zip", mountpoint=mp) as h2:
        assert (h2.mountpoint / "README.txt").read_bytes() == samples.deflated.files["README.txt"]


# ----- zipmount ls / stats ----------------------------------------------------------------------
def _line_for(out: str, name: str) -> str:
    lines = [ln for ln in out.splitlines()
             if re.search(rf"(^|[\s/]){re.escape(name)}/?$", ln.rstrip())]
    assert lines, f"{name!r} not listed in:\n{out}"
    return lines[0]


def _fuse_mounts_of(source: str) -> int:
    """How many FUSE mounts of this machine serve ``source`` (by their fsname)."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return sum(1 for line in f if (right := line.partition(" - ")[2]).startswith("fuse")
                   and right.split()[1].endswith(source))


def test_ls_lists_archive_root_without_mounting(zm, samples):
    before = _fuse_mounts_of("s3://data/single/deflated.zip")
    res = zm.run("ls", "s3://data/single/deflated.zip", storage=True)
    assert res.rc == 0, res.describe()
    for name, size in samples.deflated.children("").items():
        line = _line_for(res.stdout, name)
        if size is not None:
            assert re.search(rf"(?<![\d.]){size}(?![\d.])", line), (name, size, line)
    assert "big.bin" not in res.stdout, "ls without PATH should list only the top level"
    # counted by source, not the whole table: other test sessions may mount meanwhile
    assert _fuse_mounts_of("s3://data/single/deflated.zip") == before, "zipmount ls mounted it"


def test_ls_lists_a_subdirectory(zm, samples):
    res = zm.run("ls", "s3://data/single/deflated.zip", "docs/guide", storage=True)
    assert res.rc == 0, res.describe()
    for name, size in samples.deflated.children("docs/guide").items():
        line = _line_for(res.stdout, name)
        assert re.search(rf"(?<![\d.]){size}(?![\d.])", line), (name, size, line)
    assert "README.txt" not in res.stdout


def test_ls_of_prefix_lists_archives_and_the_other_objects(zm, samples):
    res = zm.run("ls", "s3://data/rec/", storage=True)
    assert res.rc == 0, res.describe()
    for name in ("a.rkns", "c.zip"):
        _line_for(res.stdout, name)
    assert "sub" in res.stdout
    assert re.search(rf"(?<![\d.]){len(samples.notes)}(?![\d.])", _line_for(res.stdout, "notes.txt"))


def test_stats_of_a_mount(zm, samples):
    with zm.mounted("s3://data/single/deflated.zip") as h:
        assert (h.mountpoint / "data/big.txt").read_bytes() == samples.deflated.files["data/big.txt"]
        res = zm.run("stats", h.mountpoint)
        assert res.rc == 0, res.describe()
        assert res.stdout.strip(), "zipmount stats printed nothing"
        assert "Traceback" not in res.stderr
        # some counter accounts for the 2 MB just read through the mount
        numbers = [int(n) for n in re.findall(r"(?<![\d.])\d+(?![\d.])", res.stdout)]
        assert any(n >= len(samples.deflated.files["data/big.txt"]) for n in numbers), res.stdout


# ----- config file -----------------------------------------------------------------------------
def _config(zm, mounts, **storage_extra):
    cfg_dir = zm.new_dir("cfg-")
    doc = {
        "storage": {
            "endpoint_url": zm.endpoint_url,
            "ca_bundle": str(zm.ca_bundle),
            "verify_tls": True,
            "region": "us-east-1",
            "timeout": 30,
            "retries": 2,
            **storage_extra,
        },
        "cache": {"memory": "64MiB", "dir": str(cfg_dir / "cache"), "size": "1GiB", "ttl": 60},
        "logging": {"level": "INFO", "file": str(cfg_dir / "zipmount.log")},
        "mounts": mounts,
    }
    path = cfg_dir / "zipmount.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def test_config_file_with_two_mounts(zm, samples):
    mp1, mp2 = zm.mountpoint(), zm.mountpoint()
    cfg = _config(zm, [
        {"source": "s3://data/single/deflated.zip", "mountpoint": str(mp1)},
        {"source": "s3://data/rec/", "mountpoint": str(mp2), "suffixes": [".rkns"],
         "archives_only": True, "root": None, "options": {"allow_other": False, "uid": None, "gid": None,
                                   "umask": None}},
    ])
    try:
        res = zm.run("mount", "--config", cfg, timeout=90)
        assert res.rc == 0, res.describe()
        assert is_mounted(mp1) and is_mounted(mp2), res.describe()
        assert_tree_matches(mp1, samples.deflated)
        assert sorted(os.listdir(mp2)) == ["a.rkns", "sub"]
        assert_tree_matches(mp2 / "sub/b.rkns", samples.rkns_b)
        for mp in (mp1, mp2):
            r = zm.run("umount", mp)
            assert r.rc == 0, r.describe()
            assert not is_mounted(mp)
        deadline = time.monotonic() + 2
        while pids_with_marker(cfg) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pids_with_marker(cfg) == [], "daemon still running 2 s after both umounts"
    finally:
        problems = cleanup([mp1, mp2], [cfg, mp1, mp2])
    assert problems == []


def test_config_file_foreground(zm, samples):
    mp1, mp2 = zm.mountpoint(), zm.mountpoint()
    cfg = _config(zm, [
        {"source": "s3://data/single/stored.zip", "mountpoint": str(mp1), "root": "docs"},
        {"source": "s3://data/v3/group.zip", "mountpoint": str(mp2)},
    ])
    with zm.mounted(None, "--config", cfg, mountpoint=mp1, extra_mountpoints=[mp2],
                    storage=False, cache=False, markers=[cfg]):
        assert_tree_matches(mp1, samples.stored.subtree("docs"))
        assert_tree_matches(mp2, samples.v3)


# ----- credential sources -------------------------------------------------------------------------
def _env_file(zm, access_key: str, secret_key: str):
    """A private .env file with these keys and the test endpoint."""
    env_file = zm.new_dir("envfile-") / "storage.env"
    env_file.write_text(f"STORAGE_ACCESS_KEY={access_key}\nSTORAGE_SECRET_KEY={secret_key}\n"
                        f"ENDPOINT_FULL={zm.endpoint_url}\n")
    env_file.chmod(0o600)
    return env_file


def test_env_file_credentials_and_endpoint(zm, samples):
    env_file = _env_file(zm, zm.access_key, zm.secret_key)
    env = zm.env(access_key=None, secret_key=None)
    with zm.mounted("s3://data/single/stored.zip", "--env-file", env_file,
                    "--ca-bundle", zm.ca_bundle, env=env, storage=False) as h:
        assert (h.mountpoint / "README.txt").read_bytes() == samples.stored.files["README.txt"]


def test_env_file_with_wrong_keys_fails(zm):
    env_file = _env_file(zm, "AKIAWRONGWRONGWRONG0", "x")
    env = zm.env(access_key=None, secret_key=None)
    with zm.mounted_bg("s3://data/single/stored.zip", "--env-file", env_file,
                       "--ca-bundle", zm.ca_bundle, env=env, storage=False) as (res, mp):
        assert_one_line_error(res, r"credential|access denied")
        assert not is_mounted(mp)


def test_profile_credentials(zm, samples):
    d = zm.new_dir("aws-")
    creds = d / "credentials"
    creds.write_text(
        f"[zmtest]\naws_access_key_id = {zm.access_key}\n"
        f"aws_secret_access_key = {zm.secret_key}\n"
    )
    env = zm.env(access_key=None, secret_key=None, AWS_SHARED_CREDENTIALS_FILE=str(creds))
    with zm.mounted("s3://data/single/stored.zip", "--profile", "zmtest", env=env) as h:
        assert (h.mountpoint / "empty.dat").read_bytes() == b""
        assert (h.mountpoint / "README.txt").read_bytes() == samples.stored.files["README.txt"]


# ----- mount options -----------------------------------------------------------------------------
def test_uid_gid_options(zm):
    with zm.mounted("s3://data/single/stored.zip", "-o", "uid=1234,gid=2345") as h:
        r = run(["stat", "-c", "%u:%g", str(h.mountpoint), str(h.mountpoint / "README.txt"),
                 str(h.mountpoint / "docs/guide")])
        assert r.rc == 0, r.describe()
        assert r.stdout.split() == ["1234:2345"] * 3, r.stdout


def test_no_disk_cache_and_ttl_options(zm, samples):
    with zm.mounted("s3://data/single/deflated.zip", "--no-disk-cache", "--ttl", "1",
                    "--log-level", "DEBUG") as h:
        assert_tree_matches(h.mountpoint, samples.deflated)
        assert (h.mountpoint / "data/big.bin").read_bytes() == samples.deflated.files["data/big.bin"]


def test_disk_cache_dir_is_used(zm, samples):
    cache = zm.new_dir("cache-")
    with zm.mounted("s3://data/single/deflated.zip", "--cache-dir", cache) as h:
        assert (h.mountpoint / "data/big.txt").read_bytes() == samples.deflated.files["data/big.txt"]
    used = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    assert used > 0, "--cache-dir given, a 2 MB member read, nothing written to the cache dir"


# ----- external unmount ----------------------------------------------------------------------------
def test_external_fusermount_ends_foreground_daemon_cleanly(zm):
    """`fusermount -u` (what umount(8) and desktop tools do) must end a -f daemon with exit 0,
    promptly and without an error message."""
    with zm.mounted("s3://data/single/stored.zip") as h:
        assert (h.mountpoint / "empty.dat").read_bytes() == b""
        time.sleep(0.5)  # let the daemon finish its own start-up checks
        r = run([fusermount_exe(), "-u", str(h.mountpoint)])
        assert r.rc == 0, r.describe()
        t0 = time.monotonic()
        try:
            rc = h.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("daemon still running 10 s after fusermount -u") from None
        took = time.monotonic() - t0
        assert rc == 0 and "zipmount: error" not in h.stderr(), (
            f"daemon exit code {rc} after an external unmount\n{h.stderr()[-2000:]}"
        )
        assert took < 6.0, f"daemon needed {took:.1f} s to notice the unmount"


@pytest.mark.parametrize("allow_other", [False, True], ids=["default", "allow_other"])
def test_allow_other_option(zm, samples, allow_other):
    """Without allow_other only the mounting user may enter the mount; with it, others can read
    (and still not write)."""
    base = Path(tempfile.mkdtemp(prefix="zipmount-e2e-ao-", dir="/tmp"))  # traversable by nobody
    base.chmod(0o755)
    mp = base / "mp"
    mp.mkdir()
    mp.chmod(0o755)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    opts = ["-o", "allow_other"] if allow_other else []
    try:
        with zm.mounted("s3://data/single/stored.zip", *opts, mountpoint=mp) as h:
            r = run([*nobody, "cat", str(h.mountpoint / "README.txt")])
            if allow_other:
                assert r.rc == 0, r.describe()
                assert r.stdout_bytes == samples.stored.files["README.txt"]
                w = run([*nobody, "touch", str(h.mountpoint / "x")])
                assert w.rc != 0 and "Read-only file system" in w.stderr, w.describe()
            else:
                assert r.rc != 0 and "Permission denied" in r.stderr, r.describe()
            # the mounting user (root) reads either way
            assert (h.mountpoint / "README.txt").read_bytes() == samples.stored.files["README.txt"]
    finally:
        cleanup([mp], [mp])
        shutil.rmtree(base, ignore_errors=True)
