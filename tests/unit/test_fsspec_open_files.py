"""An open file of the in-process filesystem keeps the version it opened, over local zips (no S3
server): its size and ``info()`` are that version's, its bytes too, whatever the path shows
after a revalidation."""

from __future__ import annotations

import errno
import os
import random
import zipfile

import pytest
from support.forking import in_forked_child

from zipmount.fsspec_fs import ZipmountFileSystem

MEMBER = "a.zip/z.bin"


def _write(path, data: bytes, mtime: int) -> None:
    """``a.zip`` holding ``z.bin`` = ``data``, stamped ``mtime`` (a local file's identity)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("z.bin", data)
    os.utime(path, (mtime, mtime))


@pytest.fixture
def prefix(tmp_path):
    """A directory with one archive, served as a prefix; ``replace(data)`` puts a new version
    there and has the filesystem relist it, as its revalidation does once the TTL is up."""
    rng = random.Random(3)
    old, new = rng.randbytes(3000), rng.randbytes(1000)
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "a.zip", old, 1_700_000_000)
    fs = ZipmountFileSystem(fo=f"{data}/", cache_dir=str(tmp_path / "cache"),
                            skip_instance_cache=True)

    def replace() -> None:
        _write(data / "a.zip", new, 1_700_000_100)
        fs.tree.relist()

    fs.replace, fs.old, fs.new = replace, old, new
    return fs


def test_an_open_file_keeps_the_size_info_and_bytes_of_the_version_it_opened(prefix):
    fs = prefix
    assert fs.cat_file(MEMBER) == fs.old  # in the block cache: the old bytes stay readable
    with fs.open(MEMBER, "rb") as f:
        opened = f.info()
        fs.replace()
        assert fs.info(MEMBER)["size"] == len(fs.new)  # the path shows the new version
        assert f.size == opened["size"] == len(fs.old)
        assert f.info() == opened and f.info()["version"] != fs.info(MEMBER)["version"]
        assert f.read() == fs.old


@pytest.mark.parametrize("call", ["open", "cat_file"])
def test_a_revalidation_between_the_lookups_of_an_open_never_sizes_one_version_by_another(
        prefix, monkeypatch, call):
    """Open and ``cat_file`` look the path up once: the size is the version read's, even when
    the archive is revalidated while they run (simulated: just before the reader is opened)."""
    fs = prefix
    reader = fs._reader

    def revalidated_first(path):
        fs.replace()
        return reader(path)

    assert fs.info(MEMBER)["size"] == len(fs.old)
    monkeypatch.setattr(fs, "_reader", revalidated_first)
    if call == "cat_file":
        assert fs.cat_file(MEMBER, -100) == fs.new[-100:]
        return
    with fs.open(MEMBER, "rb") as f:
        assert (f.size, f.info()["size"]) == (len(fs.new), len(fs.new))
        assert f.info()["version"] == f.reader.version
        assert f.read() == fs.new


def _read_in_child(f) -> bytes | int | None:
    try:
        return f.read()
    except OSError as exc:
        return exc.errno


def test_a_file_read_in_a_forked_child_after_the_path_changed_is_stale_never_the_new_bytes(prefix):
    fs = prefix
    with fs.open(MEMBER, "rb") as f:
        fs.replace()
        got = in_forked_child(_read_in_child, f)
    assert got == errno.ESTALE
