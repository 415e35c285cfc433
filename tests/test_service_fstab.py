"""fstab integration through util-linux mount(8) itself: for type `fuse.zipmount` mount(8) runs
/sbin/mount.fuse.zipmount SOURCE MOUNTPOINT -o OPTIONS, which is the `mount.fuse.zipmount`
entry point installed with the package (docs/SERVICE.md: `ln -s` it into /sbin).

The test links /sbin/mount.fuse.zipmount to this venv's helper for its duration and puts back
whatever was there before (removes the link if it created it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from service_kit import (
    HELPER,
    Endpoint,
    assert_nothing_left,
    clean_env,
    fresh_dirs,
    require_fuse,
    wait_until,
    write_config,
)
from support.mount import cleanup, is_mounted, mount_fstype, pids_with_marker, run

# these tests mount with zipmount's own commands (service_kit), not through ``zm``
pytestmark = pytest.mark.usefixtures("fuse")

LINK = Path("/sbin/mount.fuse.zipmount")


@pytest.fixture
def helper_link():
    require_fuse()
    if os.geteuid() != 0:
        pytest.fail("mount(8) with a helper in /sbin needs root", pytrace=False)
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.fail("mount(8)/umount(8) missing: apt-get install mount", pytrace=False)
    if LINK.exists() and not LINK.is_symlink():
        pytest.fail(f"{LINK} is a regular file (installed by someone else?): not replacing it",
                    pytrace=False)
    previous = os.readlink(LINK) if LINK.is_symlink() else None
    if previous != str(HELPER):
        tmp = LINK.with_name(f".{LINK.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(HELPER)
        os.replace(tmp, LINK)
    try:
        yield LINK
    finally:
        if previous is None:
            LINK.unlink(missing_ok=True)
        elif previous != str(HELPER):
            tmp = LINK.with_name(f".{LINK.name}.{os.getpid()}")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(previous)
            os.replace(tmp, LINK)


@pytest.fixture
def service_config(tmp_path, s3):
    """A config with storage and cache only (fstab names source and mountpoint); credentials in
    a chmod-600 env file, as /etc/zipmount/NAME.yaml would have them."""
    ep = Endpoint.of(s3)
    (cache,) = fresh_dirs(tmp_path, "cache")
    return write_config(tmp_path / "fstab.yaml",
                        storage=ep.storage(env_file=ep.env_file(tmp_path / "creds.env")),
                        mounts=[], cache_dir=cache)


def _a_file(contents):
    return next((n, c) for n, c in sorted(contents.files.items()) if len(c) > 1000)


def _umount_and_check(mp: Path, cfg: Path) -> None:
    r = run(["umount", str(mp)], timeout=60)
    assert r.rc == 0, r.describe()
    assert not is_mounted(mp)
    # The daemon notices its mount is gone and exits by itself.
    wait_until(lambda: not pids_with_marker(str(cfg)), 20, "the daemon to exit after umount")
    assert_nothing_left(cfg, [mp])


def test_mount_t_fuse_zipmount(helper_link, tmp_path, service_config, samples):
    (mp,) = fresh_dirs(tmp_path, "mp")
    try:
        r = run(["mount", "-t", "fuse.zipmount", "s3://data/single/stored.zip", str(mp),
                 "-o", f"config={service_config},allow_other,_netdev"],
                env=clean_env(), timeout=90)
        assert r.rc == 0, r.describe()
        # mount(8) returned: the mount answers now, no waiting.
        assert is_mounted(mp) and mount_fstype(mp) == "fuse.zipmount"
        name, content = _a_file(samples.stored)
        assert (mp / name).read_bytes() == content
        opts = run(["findmnt", "-n", "-o", "OPTIONS,SOURCE", str(mp)], timeout=10).stdout
        assert "allow_other" in opts and "ro" in opts.split(",")
        assert "zipmount:s3://data/single/stored.zip" in opts
        _umount_and_check(mp, service_config)
    finally:
        cleanup([mp], [str(service_config)])


def test_mount_from_an_fstab_line(helper_link, tmp_path, service_config, samples):
    """The documented fstab line, read by `mount --fstab FILE MOUNTPOINT` (same parser as
    /etc/fstab; `noauto` and `x-systemd.*` options are for systemd and are ignored here)."""
    (mp,) = fresh_dirs(tmp_path, "mp")
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# zipmount test fstab\n"
        f"s3://data/rec/  {mp}  fuse.zipmount  _netdev,noauto,x-systemd.automount,"
        f"x-systemd.mount-timeout=90,config={service_config},allow_other  0 0\n")
    try:
        r = run(["mount", "--fstab", str(fstab), str(mp)], env=clean_env(), timeout=90)
        assert r.rc == 0, r.describe()
        assert is_mounted(mp) and mount_fstype(mp) == "fuse.zipmount"
        assert sorted(os.listdir(mp)) == ["a.rkns", "c.zip", "notes.txt", "sub"]
        name, content = _a_file(samples.small_c)
        assert (mp / "c.zip" / name).read_bytes() == content
        # `mount -a` skips noauto lines: nothing is mounted twice.
        r = run(["mount", "-a", "--fstab", str(fstab)], env=clean_env(), timeout=60)
        assert r.rc == 0, r.describe()
        assert len(pids_with_marker(str(service_config))) == 1
        _umount_and_check(mp, service_config)
    finally:
        cleanup([mp], [str(service_config)])


def test_mount_failure_is_reported_by_mount_and_leaves_nothing(helper_link, tmp_path,
                                                               service_config):
    (mp,) = fresh_dirs(tmp_path, "mp")
    try:
        r = run(["mount", "-t", "fuse.zipmount", "s3://data/single/missing.zip", str(mp),
                 "-o", f"config={service_config}"], env=clean_env(), timeout=90)
        assert r.rc != 0, r.describe()
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("zipmount: error:")]
        assert len(errors) == 1 and "missing.zip" in errors[0], r.describe()
        assert not is_mounted(mp)
        assert_nothing_left(service_config, [mp])
    finally:
        cleanup([mp], [str(service_config)])


def test_unknown_mount_option_is_refused(helper_link, tmp_path, service_config):
    (mp,) = fresh_dirs(tmp_path, "mp")
    try:
        r = run(["mount", "-t", "fuse.zipmount", "s3://data/single/stored.zip", str(mp),
                 "-o", f"config={service_config},frobnicate=1"], env=clean_env(), timeout=60)
        assert r.rc != 0, r.describe()
        assert "unknown mount option 'frobnicate'" in r.stderr, r.describe()
        assert not is_mounted(mp)
    finally:
        cleanup([mp], [str(service_config)])
