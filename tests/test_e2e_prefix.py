"""Prefix mounts: every archive under s3://data/rec/ becomes a directory named like its object,
every other object a plain read-only file; ``.raw/`` holds each object's own bytes."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import zipfile

import pytest
from support.checks import assert_tree_matches, find_tree
from support.mount import run

PREFIX = "s3://data/rec/"


@pytest.fixture(scope="module")
def rec(zm):
    with zm.mounted(PREFIX) as handle:
        yield handle.mountpoint


def test_archives_appear_as_directories_and_other_objects_as_files(rec):
    assert sorted(os.listdir(rec)) == ["a.rkns", "c.zip", "notes.txt", "sub"]
    assert sorted(os.listdir(rec / "sub")) == ["b.rkns"]
    for d in ("a.rkns", "c.zip", "sub", "sub/b.rkns"):
        assert (rec / d).is_dir(), d
        assert oct(os.stat(rec / d).st_mode & 0o7777) == oct(0o755), d
    st = os.stat(rec / "notes.txt")
    assert stat.S_ISREG(st.st_mode) and oct(st.st_mode & 0o7777) == oct(0o644)


def test_an_object_that_is_not_an_archive_is_a_read_only_file_sized_and_dated_by_the_listing(
        rec, samples, s3):
    head = s3.s3.head_object(Bucket="data", Key="rec/notes.txt")
    st = os.stat(rec / "notes.txt")
    assert st.st_size == len(samples.notes) == head["ContentLength"]
    assert abs(st.st_mtime - head["LastModified"].timestamp()) < 1
    assert (rec / "notes.txt").read_bytes() == samples.notes
    with open(rec / "notes.txt", "rb") as f:
        f.seek(3)
        assert f.read(5) == samples.notes[3:8]
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC):
        with pytest.raises(OSError) as ei:
            os.open(rec / "notes.txt", flags)
        assert ei.value.errno == errno.EROFS
    r = run(["find", str(rec), "-name", "notes.txt", "-type", "f"])
    assert r.rc == 0 and r.stdout.strip() == str(rec / "notes.txt"), r.describe()


def test_an_archive_s_own_bytes_are_read_from_the_hidden_raw_view(rec, samples):
    assert ".raw" not in os.listdir(rec), "the raw view must not be listed (find, du, cp -r)"
    assert (rec / ".raw").is_dir()
    assert sorted(os.listdir(rec / ".raw")) == ["a.rkns", "c.zip", "notes.txt", "sub"]
    assert os.listdir(rec / ".raw" / "sub") == ["b.rkns"]
    for key in ("a.rkns", "sub/b.rkns", "c.zip"):
        want = samples.objects()[f"rec/{key}"]
        raw = rec / ".raw" / key
        st = os.stat(raw)
        assert stat.S_ISREG(st.st_mode) and st.st_size == len(want), key
        r = run(["sha256sum", str(raw)])
        assert r.rc == 0 and r.stdout.split()[0] == hashlib.sha256(want).hexdigest(), r.describe()
    with zipfile.ZipFile(rec / ".raw" / "c.zip") as zf:  # a zip tool opens it as any zip file
        assert {n.rstrip("/") for n in zf.namelist()} >= set(samples.small_c.files)
        for name, content in samples.small_c.files.items():
            assert zf.read(name) == content, name
    assert (rec / ".raw" / "notes.txt").read_bytes() == samples.notes
    with pytest.raises(OSError) as ei:
        os.stat(rec / ".raw" / "missing.zip")
    assert ei.value.errno == errno.ENOENT


def test_the_archives_only_option_hides_the_objects_that_are_not_archives(zm, samples):
    with zm.mounted(PREFIX, "--archives-only") as h:
        mp = h.mountpoint
        assert sorted(os.listdir(mp)) == ["a.rkns", "c.zip", "sub"]
        with pytest.raises(OSError) as ei:
            os.stat(mp / "notes.txt")
        assert ei.value.errno == errno.ENOENT
        r = run(["find", str(mp), "-name", "notes.txt"])
        assert r.rc == 0 and r.stdout == "", r.describe()
        assert (mp / ".raw" / "a.rkns").read_bytes() == samples.rkns_a.data
        assert sorted(os.listdir(mp / ".raw")) == ["a.rkns", "c.zip", "sub"]


def test_each_archive_has_its_contents(rec, samples):
    assert_tree_matches(rec / "a.rkns", samples.rkns_a)
    assert_tree_matches(rec / "sub/b.rkns", samples.rkns_b)
    assert_tree_matches(rec / "c.zip", samples.small_c)


def test_whole_tree_with_find(rec, samples):
    tree = find_tree(rec)
    want = {"a.rkns", "c.zip", "notes.txt", "sub", "sub/b.rkns"}
    for top, arc in (("a.rkns", samples.rkns_a), ("sub/b.rkns", samples.rkns_b),
                     ("c.zip", samples.small_c)):
        want |= {f"{top}/{p}" for p in arc.files} | {f"{top}/{d}" for d in arc.dirs}
    assert set(tree) == want, sorted(set(tree) ^ want)[:20]


def test_cat_members_across_archives(rec, samples):
    for top, arc in (("a.rkns", samples.rkns_a), ("sub/b.rkns", samples.rkns_b),
                     ("c.zip", samples.small_c)):
        for name, content in arc.files.items():
            assert (rec / top / name).read_bytes() == content, f"{top}/{name}"


@pytest.mark.parametrize(
    ("suffixes", "dirs", "files"),
    [
        ([".rkns"], ["a.rkns", "sub", "sub/b.rkns"], ["c.zip", "notes.txt"]),
        ([".zip"], ["c.zip", "sub"], ["a.rkns", "notes.txt", "sub/b.rkns"]),
        ([".zip", ".rkns"], ["a.rkns", "c.zip", "sub", "sub/b.rkns"], ["notes.txt"]),
    ],
)
def test_suffix_option(zm, samples, suffixes, dirs, files):
    """Objects with a listed suffix are archives (directories); the others are files."""
    opts = [x for s in suffixes for x in ("--suffix", s)]
    with zm.mounted(PREFIX, *opts) as h:
        mp = h.mountpoint
        assert sorted(os.listdir(mp)) == sorted(n for n in dirs + files if "/" not in n)
        assert os.listdir(mp / "sub") == ["b.rkns"]
        assert all((mp / d).is_dir() for d in dirs), dirs
        for name in files:
            assert (mp / name).is_file(), name
            assert (mp / name).read_bytes() == samples.objects()[f"rec/{name}"], name
        if ".zip" in suffixes:
            assert_tree_matches(mp / "c.zip", samples.small_c)
        if ".rkns" in suffixes:
            assert (mp / "a.rkns/.zgroup").read_bytes() == samples.rkns_a.files[".zgroup"]


def test_root_option_on_prefix(zm, samples):
    """--root signals serves each archive's signals/ directory as the archive's directory."""
    with zm.mounted(PREFIX, "--root", "signals", "--suffix", ".rkns", "--archives-only") as h:
        mp = h.mountpoint
        assert sorted(os.listdir(mp)) == ["a.rkns", "sub"]
        assert_tree_matches(mp / "a.rkns", samples.rkns_a.subtree("signals"))
        assert_tree_matches(mp / "sub/b.rkns", samples.rkns_b.subtree("signals"))
        sub = samples.rkns_a.subtree("signals")
        for name in ("eeg/data/.zarray", "eeg/data/0.0", ".zattrs"):
            assert (mp / "a.rkns" / name).read_bytes() == sub.files[name], name


def test_root_option_on_single_archive(zm, samples):
    with zm.mounted("s3://data/single/deflated.zip", "--root", "docs") as h:
        want = samples.deflated.subtree("docs")
        assert_tree_matches(h.mountpoint, want)
        for name, content in want.files.items():
            assert (h.mountpoint / name).read_bytes() == content
