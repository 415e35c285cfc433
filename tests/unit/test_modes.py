"""Permission bits of the index's entries, from archives built byte by byte (no FUSE, no S3)."""

from __future__ import annotations

import stat

from hypothesis import given, settings
from hypothesis import strategies as st
from robust.zips import S_DIR, S_FILE, S_LINK, RawMember, hard_link, raw_zip

from zipmount.archive.index.central import read_central_directory
from zipmount.archive.index.table import EntryTable


def modes(members: list[RawMember]) -> dict[str, int]:
    data = raw_zip(members)
    table: EntryTable = read_central_directory(lambda start, end: data[start:end], len(data), "t.zip")
    return {name: table[name].mode for name in table}


def unix(mode: int) -> int:
    return mode << 16


def test_unix_entries_keep_their_stored_bits_but_setuid_and_setgid():
    got = modes([
        RawMember(b"private", external_attr=unix(stat.S_IFREG | 0o600)),
        RawMember(b"group", external_attr=unix(stat.S_IFREG | 0o664)),
        RawMember(b"run", external_attr=unix(stat.S_IFREG | 0o755)),
        RawMember(b"none", external_attr=unix(stat.S_IFREG | 0o000)),
        RawMember(b"setuid", external_attr=unix(stat.S_IFREG | 0o4755)),
        RawMember(b"setgid", external_attr=unix(stat.S_IFREG | 0o2750)),
        RawMember(b"closed/", external_attr=unix(stat.S_IFDIR | 0o700) | 0x10),
        RawMember(b"sticky/", external_attr=unix(stat.S_IFDIR | 0o1777) | 0x10),
        RawMember(b"link", b"run", external_attr=S_LINK),
        RawMember(b"bits-only", external_attr=unix(0o640)),  # zipfile: no file type bits
    ])
    assert got == {"private": 0o600, "group": 0o664, "run": 0o755, "none": 0o000,
                   "setuid": 0o755, "setgid": 0o750, "closed": 0o700, "sticky": 0o1777,
                   "link": 0o777, "bits-only": 0o640}


def test_entries_without_a_unix_mode_are_0644_and_directories_0755():
    dos = {"create_system": 0}
    got = modes([
        RawMember(b"dir/", external_attr=0x10, **dos),
        RawMember(b"dir/file", external_attr=0x20, **dos),
        RawMember(b"dir/readonly", external_attr=0x21, **dos),
        RawMember(b"implied/deeper/file", external_attr=0, **dos),
        RawMember(b"ntfs", external_attr=0x20, create_system=10),
        RawMember(b"zero-unix-mode", external_attr=0),  # made on unix, no mode stored
        RawMember(b"zero-unix-dir/", external_attr=0x10),
        # zipfile with create_system 0: 0o600 in the high half, but no unix type, so not a mode
        RawMember(b"python-dos", external_attr=unix(0o600), **dos),
    ])
    assert got == {"dir": 0o755, "dir/file": 0o644, "dir/readonly": 0o444, "implied": 0o755,
                   "implied/deeper": 0o755, "implied/deeper/file": 0o644, "ntfs": 0o644,
                   "zero-unix-mode": 0o644, "zero-unix-dir": 0o755, "python-dos": 0o644}


def test_pkzip_made_by_dos_with_a_unix_mode_keeps_it_and_hard_links_share_their_targets():
    got = modes([
        RawMember(b"pk-file", external_attr=S_FILE & ~unix(0o077) | 0x20, create_system=0),
        RawMember(b"pk-dir/", external_attr=S_DIR & ~unix(0o027), create_system=0),
        RawMember(b"target", external_attr=unix(stat.S_IFREG | 0o640)),
        hard_link(b"hard", b"target"),
    ])
    assert got == {"pk-file": 0o600, "pk-dir": 0o750, "target": 0o640, "hard": 0o640}


@settings(max_examples=300, deadline=None)
@given(attrs=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.sampled_from([0, 3, 10, 19])),
                      min_size=1, max_size=6))
def test_no_entry_ever_shows_setuid_setgid_or_a_file_type_in_its_mode(attrs):
    members = [RawMember(f"m{i}".encode(), b"x", external_attr=attr, create_system=system)
               for i, (attr, system) in enumerate(attrs)]
    for name, mode in modes(members).items():
        assert mode & ~0o1777 == 0, (name, oct(mode))
