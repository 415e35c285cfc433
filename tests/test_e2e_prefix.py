"""Prefix mounts: every archive under s3://data/rec/ becomes a directory named like its object."""

from __future__ import annotations

import errno
import os

import pytest
from support.checks import assert_tree_matches, find_tree
from support.mount import run

PREFIX = "s3://data/rec/"


@pytest.fixture(scope="module")
def rec(zm):
    with zm.mounted(PREFIX) as handle:
        yield handle.mountpoint


def test_archives_appear_as_directories(rec):
    assert sorted(os.listdir(rec)) == ["a.rkns", "c.zip", "sub"]
    assert sorted(os.listdir(rec / "sub")) == ["b.rkns"]
    for d in ("a.rkns", "c.zip", "sub", "sub/b.rkns"):
        assert (rec / d).is_dir(), d
        assert oct(os.stat(rec / d).st_mode & 0o7777) == oct(0o755), d


def test_non_archive_objects_are_hidden(rec):
    with pytest.raises(OSError) as ei:
        os.stat(rec / "notes.txt")
    assert ei.value.errno == errno.ENOENT
    r = run(["find", str(rec), "-name", "notes.txt"])
    assert r.rc == 0 and r.stdout == "", r.describe()


def test_each_archive_has_its_contents(rec, samples):
    assert_tree_matches(rec / "a.rkns", samples.rkns_a)
    assert_tree_matches(rec / "sub/b.rkns", samples.rkns_b)
    assert_tree_matches(rec / "c.zip", samples.small_c)


def test_whole_tree_with_find(rec, samples):
    tree = find_tree(rec)
    want = {"a.rkns", "c.zip", "sub", "sub/b.rkns"}
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
    ("suffixes", "top", "sub"),
    [
        ([".rkns"], ["a.rkns", "sub"], ["b.rkns"]),
        ([".zip"], ["c.zip"], None),
        ([".zip", ".rkns"], ["a.rkns", "c.zip", "sub"], ["b.rkns"]),
    ],
)
def test_suffix_option(zm, samples, suffixes, top, sub):
    opts = [x for s in suffixes for x in ("--suffix", s)]
    with zm.mounted(PREFIX, *opts) as h:
        mp = h.mountpoint
        listed = sorted(os.listdir(mp))
        if sub is None:
            # a directory holding no matching archive may be hidden or shown empty
            assert listed in (top, sorted([*top, "sub"])), listed
            if "sub" in listed:
                assert os.listdir(mp / "sub") == []
        else:
            assert listed == top
            assert sorted(os.listdir(mp / "sub")) == sub
        if ".zip" in suffixes:
            assert_tree_matches(mp / "c.zip", samples.small_c)
        if ".rkns" in suffixes:
            assert (mp / "a.rkns/.zgroup").read_bytes() == samples.rkns_a.files[".zgroup"]
        assert not (mp / "notes.txt").exists()


def test_root_option_on_prefix(zm, samples):
    """--root signals serves each archive's signals/ directory as the archive's directory."""
    with zm.mounted(PREFIX, "--root", "signals", "--suffix", ".rkns") as h:
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
