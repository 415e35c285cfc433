"""The whole prefix through the fsspec filesystem against the real S3 test server: objects that
are not archives as files, ``.raw/`` for an archive's own bytes, and ``archives_only``."""

from __future__ import annotations

import pickle
import zipfile

import fsspec
import pytest

from zipmount.fsspec_fs import ZipmountFileSystem


@pytest.fixture
def zmfs(s3, tmp_path):
    opts = {"endpoint_url": s3.endpoint_url, "key": s3.access_key, "secret": s3.secret_key,
            "client_kwargs": {"verify": str(s3.ca_bundle), "region_name": s3.region}}

    def build(**options) -> ZipmountFileSystem:
        return fsspec.filesystem("zipmount", fo="s3://data/rec/", target_options=opts,
                                 cache_dir=str(tmp_path / "cache"), skip_instance_cache=True,
                                 **options)

    return build


def test_an_object_that_is_not_an_archive_is_a_file_with_the_listing_s_size_and_mtime(
        zmfs, samples, s3):
    fs = zmfs()
    head = s3.s3.head_object(Bucket="data", Key="rec/notes.txt")
    info = fs.info("notes.txt")
    assert info["type"] == "file" and info["size"] == len(samples.notes) == head["ContentLength"]
    assert abs(info["mtime"] - head["LastModified"].timestamp()) < 1
    assert {d["name"]: d["type"] for d in fs.ls("")} == {
        "a.rkns": "directory", "c.zip": "directory", "notes.txt": "file", "sub": "directory"}
    assert fs.cat("notes.txt") == samples.notes
    assert fs.cat_file("notes.txt", start=2, end=9) == samples.notes[2:9]
    with fs.open("notes.txt") as f:
        f.seek(4)
        assert f.read(3) == samples.notes[4:7]
    with pytest.raises(OSError):
        fs.open("notes.txt", "wb")


def test_an_archive_s_own_bytes_are_read_under_raw_and_open_as_a_zip_file(zmfs, samples):
    fs = zmfs()
    assert ".raw" not in fs.ls("", detail=False)
    assert fs.isdir(".raw") and fs.ls(".raw/sub", detail=False) == [".raw/sub/b.rkns"]
    for key in ("a.rkns", "sub/b.rkns", "c.zip", "notes.txt"):
        want = samples.objects()[f"rec/{key}"]
        assert fs.info(f".raw/{key}")["size"] == len(want), key
        assert fs.cat(f".raw/{key}") == want, key
    with fs.open(".raw/c.zip") as f, zipfile.ZipFile(f) as zf:
        for name, content in samples.small_c.files.items():
            assert zf.read(name) == content, name


def test_archives_only_hides_the_other_objects_and_survives_a_pickle(zmfs, samples):
    fs = zmfs(archives_only=True)
    assert fs.ls("", detail=False) == ["a.rkns", "c.zip", "sub"]
    assert not fs.exists("notes.txt")
    again = pickle.loads(pickle.dumps(fs))
    assert again.ls("", detail=False) == ["a.rkns", "c.zip", "sub"]
    assert again.cat(".raw/c.zip") == samples.small_c.data
