"""Zip fidelity through a real FUSE prefix mount over a real S3 server: what the tools that made
each archive meant (duplicates, hard and symbolic links, code pages, timestamps, special files,
overlapping members). The rules themselves are in zipmount/archive/index/__init__.py's docstring."""

from __future__ import annotations

import errno
import os
import re
import stat
import time

import pytest
from robust.harness import guarded, read_file, stack
from robust.zips import (
    S_CHR,
    S_DIR,
    S_FIFO,
    S_LINK,
    S_SOCK,
    RawMember,
    ext_time_extra,
    hard_link,
    ntfs_extra,
    pkware_unix_extra,
    random_bytes,
    raw_zip,
)

BIG = random_bytes("fidelity", 200_000)
NTFS_NS = 1_700_000_000_123_456_700
SJIS = ["日本語/テスト文書.txt", "写真/夏休み.jpg"]
CP866 = ["Документы/отчёт.doc", "Привет мир.txt"]
BACKSLASHED = ["Backslash \\", "\\", "C:\\Temp\\File", "\\\\server\\share\\file"]


def _overlap_bomb() -> bytes:
    """Three members, the first two claiming compressed sizes that cover the next one's header."""
    honest = raw_zip([RawMember(b"bomb1", b"1" * 100), RawMember(b"bomb2", b"2" * 100),
                      RawMember(b"kernel", b"k" * 100), RawMember(b"fine", b"fine\n")])
    data = bytearray(honest)
    cd = data.index(b"PK\x01\x02")
    data[cd + 20: cd + 24] = (400).to_bytes(4, "little")  # bomb1 runs over bomb2 and kernel
    cd2 = data.index(b"PK\x01\x02", cd + 1)
    data[cd2 + 20: cd2 + 24] = (250).to_bytes(4, "little")
    return bytes(data)


ARCHIVES = {
    "dups.zip": raw_zip([RawMember(b"a.txt", b"first\n"), RawMember(b"a.txt", b"second\n"),
                         RawMember(b"a.txt", b"third\n"), RawMember(b"d", b"file named d\n"),
                         RawMember(b"d/inside.txt", b"inside\n")]),
    "links.zip": raw_zip([
        RawMember(b"data.bin", BIG, method=8), hard_link(b"hard1", b"data.bin"),
        hard_link(b"sub/hard2", b"data.bin"), hard_link(b"dangling", b"nowhere"),
        hard_link(b"loop1", b"loop2"), hard_link(b"loop2", b"loop1"),
        RawMember(b"pk-symlink", b"", external_attr=S_LINK, extra=pkware_unix_extra(b"data.bin")),
        RawMember(b"iz-symlink", b"sub/hard2", external_attr=S_LINK),
    ]),
    "sjis.zip": raw_zip([RawMember(n.encode("shift_jis"), n.encode()) for n in SJIS]),
    "cp866.zip": raw_zip([RawMember(n.encode("cp866"), n.encode()) for n in CP866]),
    "times.zip": raw_zip([
        RawMember(b"ntfs", b"", extra=ext_time_extra(1_600_000_000) + ntfs_extra(NTFS_NS)),
        RawMember(b"unix", b"", extra=ext_time_extra(1_600_000_000)),
        RawMember(b"dos", b""),
    ]),
    "specials.zip": raw_zip([
        RawMember(b"fifo", external_attr=S_FIFO), RawMember(b"tty", external_attr=S_CHR),
        RawMember(b"sock", external_attr=S_SOCK), RawMember(b"dir/", external_attr=S_DIR),
        RawMember(b"dir/regular.txt", b"regular\n"),
    ]),
    "overlap.zip": _overlap_bomb(),
    # as in mount-zip's mixed-paths.zip: made on unix, where a backslash is a character
    "unix-backslash.zip": raw_zip([RawMember(n.encode(), f"{v} {n}".encode())
                                   for v in ("first", "second") for n in BACKSLASHED]),
    "dos-backslash.zip": raw_zip([RawMember(b"C:\\Temp\\File", b"dos\n", create_system=0,
                                            external_attr=0x20)]),
}


@pytest.fixture(scope="module")
def fm(tmp_path_factory):
    with stack(tmp_path_factory.mktemp("fidelity")) as s:
        for name, data in ARCHIVES.items():
            s.put(f"fidelity/{name}", data)
        with s.mounted("fidelity/", "--ttl", "3600", "--log-level", "INFO") as h:
            yield h
            log = h.stderr()
            assert "Traceback" not in log, log[-4000:]
            assert h.proc.poll() is None, "the daemon died"


def _logged(h, pattern: str) -> None:
    log = h.stderr()
    assert re.search(pattern, log), f"log lacks /{pattern}/:\n{log[-3000:]}"


def test_every_duplicate_is_reachable_and_the_last_keeps_the_name(fm):
    mp = fm.mountpoint / "dups.zip"
    assert sorted(os.listdir(mp)) == ["a (1).txt", "a (2).txt", "a.txt", "d", "d (1)"]
    assert read_file(mp / "a.txt") == b"third\n"
    assert read_file(mp / "a (1).txt") == b"first\n"
    assert read_file(mp / "a (2).txt") == b"second\n"
    assert os.path.isdir(mp / "d") and read_file(mp / "d" / "inside.txt") == b"inside\n"
    assert read_file(mp / "d (1)") == b"file named d\n"


def test_hard_links_serve_the_target_bytes_with_st_nlink(fm):
    mp = fm.mountpoint / "links.zip"
    for name in ("data.bin", "hard1", "sub/hard2"):
        st = os.stat(mp / name)
        assert stat.S_ISREG(st.st_mode) and st.st_size == len(BIG), name
        assert st.st_nlink == 3, name
        assert read_file(mp / name) == BIG, name


def test_broken_hard_links_are_dropped_alone_and_logged(fm):
    mp = fm.mountpoint / "links.zip"
    names = set(os.listdir(mp))
    assert {"dangling", "loop1", "loop2"}.isdisjoint(names)
    assert {"data.bin", "hard1", "sub", "pk-symlink", "iz-symlink"} <= names
    _logged(fm, r"hard link 'dangling' -> 'nowhere' has no target")
    _logged(fm, r"hard link 'loop1' -> 'loop2' points to itself or loops")


def test_symlinks_from_the_pkware_field_and_from_unix_modes(fm):
    mp = fm.mountpoint / "links.zip"
    assert stat.S_ISLNK(os.lstat(mp / "pk-symlink").st_mode)
    assert os.readlink(mp / "pk-symlink") == "data.bin"
    assert os.lstat(mp / "pk-symlink").st_size == len("data.bin")
    assert os.readlink(mp / "iz-symlink") == "sub/hard2"
    assert read_file(mp / "pk-symlink") == BIG  # the kernel follows it, inside the mount


@pytest.mark.parametrize(("archive", "names"), [("sjis.zip", SJIS), ("cp866.zip", CP866)])
def test_names_in_legacy_code_pages_are_readable(fm, archive, names):
    mp = fm.mountpoint / archive
    for name in names:
        assert read_file(mp / name) == name.encode()


def test_backslashes_are_characters_in_a_unix_archive_and_separators_in_a_dos_one(fm):
    mp = fm.mountpoint / "unix-backslash.zip"
    assert sorted(os.listdir(mp)) == sorted(n + s for n in BACKSLASHED for s in ("", " (1)"))
    for name in BACKSLASHED:
        assert read_file(mp / name) == f"second {name}".encode()
        assert read_file(mp / f"{name} (1)") == f"first {name}".encode()
    assert read_file(fm.mountpoint / "dos-backslash.zip" / "C:" / "Temp" / "File") == b"dos\n"


def test_ntfs_time_wins_then_extended_time_then_dos_local_time(fm):
    mp = fm.mountpoint / "times.zip"
    assert os.stat(mp / "ntfs").st_mtime_ns == NTFS_NS
    assert os.stat(mp / "unix").st_mtime_ns == 1_600_000_000 * 10**9
    dos = time.mktime((2024, 5, 17, 12, 30, 42, 0, 0, -1))  # robust.zips' DOS time, local
    assert os.stat(mp / "dos").st_mtime == dos


def test_special_entries_are_skipped_and_the_rest_is_served(fm):
    mp = fm.mountpoint / "specials.zip"
    assert sorted(os.listdir(mp)) == ["dir"]
    assert read_file(mp / "dir" / "regular.txt") == b"regular\n"
    _logged(fm, r"specials\.zip: skipped 3 fifo, device or socket entries")


def test_overlapping_members_are_not_served_and_logged(fm):
    mp = fm.mountpoint / "overlap.zip"
    assert sorted(os.listdir(mp)) == ["fine", "kernel"]
    assert read_file(mp / "kernel") == b"k" * 100
    assert guarded(lambda: read_file(mp / "bomb1"), 10).error == errno.ENOENT
    _logged(fm, r"overlap\.zip: 2 members share bytes .*'bomb1', 'bomb2'")
