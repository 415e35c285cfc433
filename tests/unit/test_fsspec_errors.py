"""Errors of the in-process filesystem, over a local zip (no S3 server): builtin exceptions whose
message names the path asked for and the archive it was asked in."""

from __future__ import annotations

import zipfile

import pytest

from zipmount.fsspec_fs import ZipmountFileSystem


def test_a_missing_member_is_file_not_found_naming_the_member_and_the_archive(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.txt", "hi")
    fs = ZipmountFileSystem(fo=str(path), cache_dir=str(tmp_path / "cache"), skip_instance_cache=True)
    for call in (lambda: fs.info("nope.txt"), lambda: fs.open("nope.txt"),
                 lambda: fs.cat_file("x.txt/y")):
        with pytest.raises(FileNotFoundError) as ei:
            call()
        assert str(path) in str(ei.value) and ("nope.txt" in str(ei.value) or "x.txt/y" in str(ei.value))
    assert fs.cat_file("x.txt") == b"hi"
