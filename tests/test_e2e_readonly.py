"""The mount is read-only: every write path fails with EROFS and the bucket never changes."""

from __future__ import annotations

import errno
import os

import pytest
from support.mount import run

EROFS_TEXT = "Read-only file system"


@pytest.fixture(scope="module")
def ro(zm, s3):
    before = s3.listing("data")
    with zm.mounted("s3://data/single/deflated.zip") as handle:
        yield handle.mountpoint, handle
    assert s3.listing("data") == before


@pytest.fixture
def unchanged(ro, samples, bucket_snapshot):
    """After the test: same objects with the same ETags, and the mount shows the same files."""
    mp, _ = ro
    before = bucket_snapshot()
    yield mp
    assert bucket_snapshot() == before, "bucket changed"
    for name in ("README.txt", "docs/guide/intro.md", "empty.dat", "bin/run.sh"):
        assert (mp / name).read_bytes() == samples.deflated.files[name], name
    assert set(os.listdir(mp)) == set(samples.deflated.children(""))


def _sh(cmd: str, mp):
    return run(["sh", "-c", cmd], cwd=mp)


@pytest.mark.parametrize(
    "cmd",
    [
        "touch new-file",
        "touch README.txt",
        "rm README.txt",
        "rm -f docs/guide/intro.md",
        "rm -rf docs",
        "rmdir deep/a/b/c/d/e",
        "mkdir newdir",
        "mkdir docs/guide/sub",
        "mv README.txt README2.txt",
        "mv docs docs2",
        "echo hello > new.txt",
        "echo hello > README.txt",
        "echo hello >> README.txt",
        "echo hello > docs/new.md",
        "truncate -s 0 README.txt",
        "chmod 777 README.txt",
        "ln -s README.txt link",
        "ln README.txt hardlink",
        "cp /etc/hostname docs/",
        "dd if=/dev/zero of=empty.dat bs=1 count=1 conv=notrunc",
    ],
)
def test_write_commands_fail_with_erofs(unchanged, cmd):
    r = _sh(cmd, unchanged)
    assert r.rc != 0, f"{cmd!r} succeeded on a read-only mount\n{r.describe()}"
    assert EROFS_TEXT in r.stderr, f"{cmd!r} did not fail with EROFS\n{r.describe()}"


@pytest.mark.parametrize(
    ("flags", "name"),
    [
        (os.O_WRONLY, "README.txt"),
        (os.O_RDWR, "README.txt"),
        (os.O_WRONLY | os.O_TRUNC, "README.txt"),
        (os.O_WRONLY | os.O_CREAT, "created.txt"),
        (os.O_WRONLY | os.O_APPEND, "empty.dat"),
    ],
)
def test_open_for_writing_is_erofs(unchanged, flags, name):
    with pytest.raises(OSError) as ei:
        fd = os.open(unchanged / name, flags, 0o644)
        os.close(fd)
    assert ei.value.errno == errno.EROFS, ei.value


@pytest.mark.parametrize(
    "op",
    [
        lambda mp: os.utime(mp / "README.txt", (0, 0)),
        lambda mp: os.chmod(mp / "README.txt", 0o600),
        lambda mp: os.chown(mp / "README.txt", 1, 1),
        lambda mp: os.rename(mp / "README.txt", mp / "x"),
        lambda mp: os.unlink(mp / "README.txt"),
        lambda mp: os.mkdir(mp / "d"),
        lambda mp: os.rmdir(mp / "hidden"),
        lambda mp: os.symlink("README.txt", mp / "s"),
        lambda mp: os.truncate(mp / "README.txt", 0),
        lambda mp: os.setxattr(mp / "README.txt", "user.test", b"1"),
    ],
    ids=["utime", "chmod", "chown", "rename", "unlink", "mkdir", "rmdir", "symlink", "truncate",
         "setxattr"],
)
def test_syscalls_are_erofs(unchanged, op):
    with pytest.raises(OSError) as ei:
        op(unchanged)
    assert ei.value.errno == errno.EROFS, ei.value


def test_statvfs_reports_read_only(ro):
    mp, _ = ro
    st = os.statvfs(mp)
    assert st.f_flag & os.ST_RDONLY, "mount is not flagged read-only (ST_RDONLY)"


def test_reads_still_work_after_write_attempts(ro, samples):
    mp, handle = ro
    for name, content in samples.deflated.files.items():
        assert (mp / name).read_bytes() == content, name
    assert handle.proc.poll() is None
    assert "Traceback" not in handle.stderr(), handle.stderr()[-3000:]
