"""The central-directory index without FUSE or S3: archives built byte by byte, parsed from memory."""

from __future__ import annotations

import bisect
import io
import json
import logging
import random
import struct
import time
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import pytest
from robust.zips import (
    HARD_LINK,
    S_BLK,
    S_CHR,
    S_DIR,
    S_FIFO,
    S_FILE,
    S_LINK,
    S_SOCK,
    RawMember,
    ext_time_extra,
    extra_field,
    hard_link,
    ntfs_extra,
    pkware_unix_extra,
    raw_zip,
)

from zipmount.archive import Archive, CachedObject
from zipmount.archive.index.central import CD_MAX_BYTES, read_central_directory
from zipmount.archive.index.naming import build_tree
from zipmount.archive.index.store import load_index, save_index
from zipmount.archive.index.table import Entry, EntryTable, SortedKeys
from zipmount.cache import BlockCache, DiskTier
from zipmount.errors import ArchiveError
from zipmount.source import Source, StorageOptions
from zipmount.stats import Stats


def index(data: bytes) -> EntryTable:
    return read_central_directory(CountedReads(data), len(data), "t.zip")


class CountedReads:
    """An object's bytes in memory, read by range, counting the reads."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.ranges: list[tuple[int, int]] = []

    def __call__(self, start: int, end: int) -> bytes:
        self.ranges.append((start, end))
        return self.data[start:end]


# -- duplicates -----------------------------------------------------------------------------------


def test_duplicate_files_are_all_reachable_the_last_under_the_plain_name(caplog):
    table = index(raw_zip([RawMember(b"d/a.txt", b"one"), RawMember(b"d/a.txt", b"two"),
                           RawMember(b"d/a.txt", b"three"), RawMember(b"d/a (1).txt", b"taken")]))
    assert sorted(table.children["d"]) == ["a (1).txt", "a (2).txt", "a (3).txt", "a.txt"]
    sizes = {n: table[f"d/{n}"].size for n in table.children["d"]}
    # archive order: the first duplicate is (2) because "a (1).txt" is a real entry
    assert sizes == {"a.txt": 5, "a (1).txt": 5, "a (2).txt": 3, "a (3).txt": 3}
    assert table["d/a (2).txt"].header_offset < table["d/a (3).txt"].header_offset
    assert "duplicate name 'd/a.txt'" in caplog.text


def test_a_file_named_like_a_directory_is_renamed_and_the_directory_keeps_the_name():
    table = index(raw_zip([RawMember(b"same", b"file"), RawMember(b"same/child", b"c"),
                           RawMember(b"x/y", b"y"), RawMember(b"x", b"file after")]))
    assert table["same"].kind == "dir" and table["x"].kind == "dir"
    assert table["same (1)"].kind == "file" and table["same (1)"].size == 4
    assert table["x (1)"].size == len(b"file after")
    assert table.children[""] == ["same", "same (1)", "x", "x (1)"]


def test_numbered_names_stay_within_name_max():
    long = b"n" * 255
    table = index(raw_zip([RawMember(long, b"1"), RawMember(long, b"2")]))
    assert all(len(n.encode()) <= 255 for n in table)
    assert len(table) == 2


# -- links ----------------------------------------------------------------------------------------


def test_hard_links_carry_the_target_data_and_count_links():
    table = index(raw_zip([RawMember(b"data.bin", b"payload" * 10), hard_link(b"link1", b"data.bin"),
                           hard_link(b"sub/link2", b"data.bin")]))
    target, one, two = table["data.bin"], table["link1"], table["sub/link2"]
    assert one.kind == two.kind == "file"
    for e in (one, two):
        assert (e.size, e.header_offset, e.crc, e.method) == \
            (target.size, target.header_offset, target.crc, target.method)
    assert target.nlink == one.nlink == two.nlink == 3


def test_hard_link_chains_resolve_and_loops_or_missing_targets_drop_only_that_entry(caplog):
    table = index(raw_zip([
        RawMember(b"real", b"abc"), hard_link(b"a", b"real"), hard_link(b"b", b"a"),
        hard_link(b"loop1", b"loop2"), hard_link(b"loop2", b"loop1"), hard_link(b"self", b"self"),
        hard_link(b"nowhere", b"missing"), RawMember(b"dir/", external_attr=S_DIR),
        hard_link(b"todir", b"dir"),
    ]))
    assert table["b"].header_offset == table["real"].header_offset and table["b"].size == 3
    assert table["real"].nlink == 3
    for dropped in ("loop1", "loop2", "self", "nowhere", "todir"):
        assert dropped not in table
        assert f"hard link {dropped!r}" in caplog.text
    assert "dir" in table.children


def test_symlinks_from_unix_modes_and_from_the_pkware_unix_field():
    table = index(raw_zip([
        RawMember(b"infozip", b"target.txt", external_attr=S_LINK),
        RawMember(b"pkware", b"", external_attr=S_LINK, extra=pkware_unix_extra(b"../x/target")),
    ]))
    assert table["infozip"].kind == "link" and table["infozip"].target == ""
    assert table["pkware"].kind == "link" and table["pkware"].target == "../x/target"
    assert table["pkware"].size == len("../x/target")


def test_pkzip_unix_modes_made_by_dos_and_hard_links_between_symlinks():
    """PKZIP for unix writes "made by DOS" with a unix mode, and flags symlinks with several
    links: one that names another symlink is that symlink; one that names a file is a symlink."""
    table = index(raw_zip([
        RawMember(b"regular", b"r" * 32, create_system=0),
        RawMember(b"symlink", b"", external_attr=S_LINK, create_system=0,
                  extra=pkware_unix_extra(b"regular")),
        RawMember(b"hlink-to-symlink", b"", external_attr=S_LINK | HARD_LINK, create_system=0,
                  extra=pkware_unix_extra(b"symlink")),
        RawMember(b"flagged-symlink", b"", external_attr=S_LINK | HARD_LINK, create_system=0,
                  extra=pkware_unix_extra(b"regular")),
        RawMember(b"hlink", b"", external_attr=S_FILE | HARD_LINK, create_system=0,
                  extra=pkware_unix_extra(b"regular")),
    ]))
    assert table["symlink"].kind == "link" and table["symlink"].target == "regular"
    link = table["hlink-to-symlink"]
    assert (link.kind, link.target, link.nlink) == ("link", "regular", 2)
    assert table["symlink"].nlink == 2
    assert (table["flagged-symlink"].kind, table["flagged-symlink"].target) == ("link", "regular")
    assert table["hlink"].size == 32 and table["regular"].nlink == 2


def test_special_files_are_skipped_with_one_log_line_and_a_fifo_with_data_is_a_file(caplog):
    with caplog.at_level(logging.INFO):
        table = index(raw_zip([
            RawMember(b"fifo", external_attr=S_FIFO), RawMember(b"tty", external_attr=S_CHR,
                                                                extra=pkware_unix_extra(b"\0" * 8)),
            RawMember(b"disk", external_attr=S_BLK), RawMember(b"sock", external_attr=S_SOCK),
            RawMember(b"piped", b"read from a pipe", external_attr=S_FIFO),
            RawMember(b"ok", b"fine")]))
    assert sorted(table) == ["ok", "piped"]
    assert table["piped"].kind == "file"
    lines = [r for r in caplog.records if "fifo, device or socket" in r.getMessage()]
    assert len(lines) == 1 and "4 fifo" in lines[0].getMessage()


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("names", "encoding"), [
    (["日本語のファイル名/テスト文書.txt", "写真/夏休み.jpg", "説明.txt"], "shift_jis"),
    (["Документы/отчёт за год.doc", "Привет мир.txt"], "cp866"),
    (["中文文件名/测试文档.txt", "图片.png"], "gbk"),
    (["Résumé/naïve café.txt", "Übersicht.doc"], "cp437"),
])
def test_names_in_a_legacy_code_page_are_readable(names, encoding):
    table = index(raw_zip([RawMember(n.encode(encoding), b"x") for n in names]
                          + [RawMember(b"ascii.txt", b"a")]))
    assert set(names) <= set(table), sorted(table)


def test_utf8_without_the_flag_the_flag_and_the_unicode_path_field():
    table = index(raw_zip([RawMember("ünï.txt".encode(), b"1"),
                           RawMember("flag-ö.txt".encode(), b"2", flags=0x800),
                           RawMember(b"caf\x82.txt", b"3", flags=0x800)]))  # invalid UTF-8
    assert "ünï.txt" in table and "flag-ö.txt" in table
    assert "caf\ufffd.txt" in table  # undecodable bytes never fail the archive


MIXED_PATHS = ["Backslash \\", "\\", "C:\\Temp\\File", "\\\\server\\share\\file", "dir\\"]


def zip_made_on(create_system: int, names: list[str], versions: int = 3) -> bytes:
    """Like mount-zip's mixed-paths.zip: each name written ``versions`` times, by zipfile, as if
    on the system ``create_system`` (3 unix, 0 MS-DOS; DOS attributes for DOS)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate names
        for v in range(versions):
            for name in names:
                info = zipfile.ZipInfo(name, date_time=(2024, 5, 17, 12, 30, 42))
                info.create_system = create_system
                info.external_attr = 0o100644 << 16 if create_system == 3 else 0x20
                zf.writestr(info, f"version {v} of {name!r}")
    return buf.getvalue()


def test_backslashes_in_names_from_unix_are_characters_and_every_entry_is_reachable():
    table = index(zip_made_on(3, MIXED_PATHS))
    expected = {f"{n}{s}" for n in MIXED_PATHS for s in ("", " (1)", " (2)")}
    assert set(table) == expected, sorted(table)
    assert set(table.children[""]) == expected
    for name in MIXED_PATHS:  # the last version keeps the plain name
        assert table[name].kind == "file" and table[name].size == len(f"version 2 of {name!r}")


def test_backslashes_in_names_from_dos_or_windows_separate_directories():
    table = index(zip_made_on(0, ["C:\\Temp\\File", "\\\\server\\share\\file", "dir\\", "a\\b/c"],
                              versions=1))
    assert sorted(table) == ["C:", "C:/Temp", "C:/Temp/File", "a", "a/b", "a/b/c", "dir", "server",
                             "server/share", "server/share/file"]
    assert table["dir"].kind == "dir" and table["C:/Temp/File"].kind == "file"
    ntfs = index(zip_made_on(11, ["x\\y"], versions=1))
    assert "x/y" in ntfs


def test_undecodable_names_never_fail_the_archive():
    table = index(raw_zip([RawMember(bytes(range(128, 256)), b"x"), RawMember(b"\x81\xff\xfe", b"y")]))
    assert len(table) == 2


# -- timestamps -----------------------------------------------------------------------------------


def test_ntfs_time_wins_over_extended_time_which_wins_over_dos_time():
    ns = 1_700_000_000_123_456_700
    table = index(raw_zip([
        RawMember(b"ntfs", b"", extra=ext_time_extra(1_600_000_000) + ntfs_extra(ns)),
        RawMember(b"ext", b"", extra=ext_time_extra(1_600_000_000) + pkware_unix_extra(mtime=1_500_000_000)),
        RawMember(b"pkware", b"", extra=pkware_unix_extra(mtime=1_500_000_000)),
        RawMember(b"dos", b""),
    ]))
    assert table["ntfs"].mtime_ns == ns
    assert table["ext"].mtime_ns == 1_600_000_000 * 10**9
    assert table["pkware"].mtime_ns == 1_500_000_000 * 10**9
    assert table["dos"].mtime_ns == int(time.mktime((2024, 5, 17, 12, 30, 42, 0, 0, -1))) * 10**9


# -- hostile structure ----------------------------------------------------------------------------


def test_overlapping_members_are_dropped_and_logged_but_hard_links_are_not(caplog):
    honest = raw_zip([RawMember(b"a", b"A" * 100), RawMember(b"b", b"B" * 100)])
    cd = honest.index(b"PK\x01\x02")
    second_cd = honest.index(b"PK\x01\x02", cd + 1)
    # a's central record claims 160 bytes: its data covers b's local header
    bomb = bytearray(honest)
    struct.pack_into("<I", bomb, cd + 20, 160)
    table = index(bytes(bomb))
    assert "a" not in table and "b" in table
    assert "1 members share bytes" in caplog.text
    # a second central record pointing at b's header again
    rec_b = honest[second_cd: honest.index(b"PK\x05\x06")]
    dup = honest[:honest.index(b"PK\x05\x06")] + rec_b.replace(b"b", b"c", 1)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 3, 3, len(dup) - cd, cd, 0)
    table = index(dup + end)
    assert "c" not in table and "a" in table and "b" in table
    caplog.clear()
    table = index(raw_zip([RawMember(b"t", b"T" * 50), hard_link(b"l", b"t")]))
    assert "l" in table and "share bytes" not in caplog.text


def test_a_huge_claimed_central_directory_is_refused_before_it_is_read(tmp_path: Path):
    """A sparse 256 MiB file whose end record claims a 256 MiB central directory."""
    path = tmp_path / "sparse.zip"
    size = 256 * 2**20
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, size - 22, 0, 0)
    with path.open("wb") as f:
        f.truncate(size - 22)
        f.seek(size - 22)
        f.write(end)
    def read(start: int, end: int) -> bytes:
        f.seek(start)
        return f.read(end - start)

    tracemalloc.start()
    with path.open("rb") as f, pytest.raises(ArchiveError, match="over the limit") as err:
        read_central_directory(read, size, "sparse.zip")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "\n" not in str(err.value)
    assert peak < 1 * 2**20, peak
    assert size - 22 > CD_MAX_BYTES


def test_a_huge_claimed_central_directory_costs_no_memory_through_the_block_cache(tmp_path: Path):
    """The same sparse file opened as the daemon opens it: local source, 8 MiB block cache."""
    path = tmp_path / "sparse.zip"
    size = 256 * 2**20
    with path.open("wb") as f:
        f.truncate(size - 22)
        f.seek(size - 22)
        f.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, size - 22, 0, 0))
    stats = Stats()
    source, inner = Source.for_url(str(path), StorageOptions(timeout=5, retries=0), stats)
    cache = BlockCache(8 << 20, None, stats)
    try:
        tracemalloc.start()
        with pytest.raises(ArchiveError, match="over the limit"):
            Archive.open(CachedObject(source, source.stat(inner), cache), None)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        cache.close()
    assert peak < 8 * 2**20, peak  # the cache cap; reading the claimed directory took 256 MiB+


def test_parsing_peak_memory_is_a_small_multiple_of_the_central_directory():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(5_000):
            zf.writestr(zipfile.ZipInfo(f"g{i % 50:02d}/signal/{i}.0"), b"")
    data = buf.getvalue()
    cd_size = len(data) - data.index(b"PK\x01\x02")
    tracemalloc.start()
    table = index(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(table) == 5_000 + 50 + 50  # files, g.., g../signal
    print(f"central directory {cd_size} B, parse peak {peak} B ({peak / cd_size:.1f}x)")
    assert peak < 20 * cd_size


# -- the table and its persistence ----------------------------------------------------------------


def test_the_table_answers_like_a_dict_and_loads_back_identical(tmp_path: Path):
    data = raw_zip([RawMember(b"a/b/c.txt", b"c"), RawMember(b"a/d.txt", b"dd"),
                    RawMember(b"e/", external_attr=S_DIR),
                    RawMember(b"p", external_attr=S_LINK, extra=pkware_unix_extra(b"a/d.txt"))])
    table = index(data)
    entries = dict(table.items())
    assert set(entries) == {"a", "a/b", "a/b/c.txt", "a/d.txt", "e", "p"}
    assert table.get("nope") is None and "a/b" in table and len(table) == 6
    assert dict(table.children) == {"": ["a", "e", "p"], "a": ["b", "d.txt"], "a/b": ["c.txt"],
                                    "e": []}
    assert "a/d.txt" not in table.children and "" in table.children
    disk = DiskTier(tmp_path, 1 << 20)
    try:
        save_index(disk, "k.index.json", table)
        again = load_index(disk, "k.index.json")
    finally:
        disk.close()
    assert again is not None and dict(again.items()) == entries
    assert again["p"].target == "a/d.txt"


def test_build_tree_of_plain_entries_matches_the_table_of_an_archive():
    entries = [Entry(name="x/y", kind="file", size=1, mtime_ns=5, mode=0o444),
               Entry(name="x/y", kind="file", size=2, mtime_ns=6, mode=0o444)]
    by_name, children = build_tree(entries)
    assert by_name["x/y"].size == 2 and by_name["x/y (1)"].size == 1
    assert children["x"] == ["y", "y (1)"] and by_name["x"].mtime_ns == 6


def test_many_duplicates_cost_linear_time_and_a_bounded_log(caplog):
    start = time.process_time()
    table = index(raw_zip([RawMember(b"same.txt", b"x") for _ in range(20_000)]))
    assert time.process_time() - start < 10
    assert len(table) == 20_000 and "same (19999).txt" in table
    assert len(caplog.records) <= 10
    assert "19994 more duplicate names" in caplog.text


def test_a_long_hard_link_chain_resolves_in_linear_time():
    n = 20_000
    members = [RawMember(b"real", b"data")]
    # the last link first: resolving it walks the whole chain
    members += [hard_link(b"l%d" % i, b"real" if i == 0 else b"l%d" % (i - 1))
                for i in reversed(range(n))]
    start = time.process_time()
    table = index(raw_zip(members))
    assert time.process_time() - start < 10
    assert table[f"l{n - 1}"].size == 4 and table["real"].nlink == n + 1


def test_zip64_records_and_data_prepended_to_the_archive_are_read_as_zipfile_reads_them():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in ("a.txt", "dir/b.bin"):
            with zf.open(name, "w", force_zip64=True) as f:
                f.write(name.encode() * 100)
    data = b"#!/bin/sh\nexit 0\n" * 10 + buf.getvalue()  # a self-extractor's stub in front
    table = index(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            entry = table[info.filename]
            assert (entry.size, entry.compress_size, entry.header_offset, entry.crc) == \
                (info.file_size, info.compress_size, info.header_offset, info.CRC)
    zip64 = extra_field(0x0001, struct.pack("<QQ", 4, 4))  # file size, then compressed size
    entry = index(raw_zip([RawMember(b"z", b"data", file_size=2**32 - 1, compress_size=2**32 - 1,
                                     extra=zip64)]))["z"]
    assert (entry.size, entry.compress_size) == (4, 4)


@pytest.mark.parametrize("damage", [
    lambda doc: doc["columns"].__setitem__("size", "!!"),
    lambda doc: doc["columns"].__setitem__("size", "AAAA"),  # 3 bytes: not whole int64s
    lambda doc: doc.__setitem__("byteorder", "middle"),
    lambda doc: doc.pop("keys"),
    lambda doc: doc.__setitem__("keys", doc["keys"][:-1]),  # shorter than its starts say
])
def test_a_damaged_persisted_index_is_dropped_not_served(tmp_path: Path, damage):
    table = index(raw_zip([RawMember(b"a/b", b"x")]))
    disk = DiskTier(tmp_path, 1 << 20)
    try:
        save_index(disk, "k.index.json", table)
        doc = json.loads(disk.path("k.index.json").read_bytes())
        damage(doc)
        data = json.dumps(doc).encode()
        disk.write("k.index.json", [data], len(data))
        assert load_index(disk, "k.index.json") is None
        assert not disk.touch("k.index.json")
    finally:
        disk.close()


# -- reads ----------------------------------------------------------------------------------------


def zip_of(members: int, member_bytes: int, name_len: int = 20) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(members):
            zf.writestr(f"{i:0{name_len}d}", bytes(member_bytes))
    return buf.getvalue()


@pytest.mark.parametrize(("members", "member_bytes"), [(300, 1000), (300, 100_000), (5, 0)])
def test_the_end_records_and_a_small_central_directory_come_from_one_read(members, member_bytes):
    data = zip_of(members, member_bytes)
    reads = CountedReads(data)
    table = read_central_directory(reads, len(data), "t.zip")
    assert len(table) == members
    assert len(reads.ranges) == 1 and reads.ranges[0][1] == len(data), reads.ranges


def test_a_central_directory_bigger_than_the_tail_costs_one_more_read_of_what_the_tail_lacks():
    data = zip_of(20_000, 0, name_len=40)  # ~1.7 MB of central directory, nothing else
    cd_start = data.index(b"PK\x01\x02")
    reads = CountedReads(data)
    table = read_central_directory(reads, len(data), "t.zip")
    assert len(table) == 20_000
    (tail_start, tail_end), (start, end) = reads.ranges
    assert tail_end == len(data) and (start, end) == (cd_start, tail_start), reads.ranges


def test_the_central_directory_start_is_kept_in_the_index_and_persisted(tmp_path: Path):
    stub = b"#!/bin/sh\nexit 0\n" * 10  # a self-extractor's stub in front
    data = stub + zip_of(3, 10)
    table = index(data)
    assert table.cd_start == data.index(b"PK\x01\x02")
    disk = DiskTier(tmp_path, 1 << 20)
    try:
        save_index(disk, "k.index.json", table)
        again = load_index(disk, "k.index.json")
    finally:
        disk.close()
    assert again is not None and again.cd_start == table.cd_start
    assert build_tree([Entry(name="x", kind="file", size=1, mtime_ns=0, mode=0o444)])[0].cd_start is None


def test_opening_an_archive_through_the_block_cache_costs_one_request(tmp_path: Path):
    path = tmp_path / "a.zip"
    path.write_bytes(zip_of(300, 1000))
    stats = Stats()
    source, inner = Source.for_url(str(path), StorageOptions(timeout=5, retries=0), stats)
    cache = BlockCache(8 << 20, None, stats)
    try:
        archive = Archive.open(CachedObject(source, source.stat(inner), cache), None)
        assert len(archive.entries) == 300
        assert stats.counters["requests"] == 1
    finally:
        cache.close()


@pytest.mark.parametrize("name_len", [10, 40, 200])
def test_the_table_knows_its_size_in_memory(name_len):
    data = zip_of(3_000, 0, name_len=name_len)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = index(data)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(f"{name_len}-character names: {held / len(table):.0f} B/entry measured, "
          f"{table.memory_bytes() / len(table):.0f} estimated")
    assert 0.85 * held <= table.memory_bytes() <= 1.15 * held


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 100, 1000])
def test_sorted_keys_search_like_bisect_on_a_list(count):
    rng = random.Random(count)
    keys = sorted({"".join(rng.choices("ab\0/é", k=rng.randint(0, 6))) for _ in range(count * 2)})
    stored = SortedKeys.of(keys)
    assert list(stored) == keys and len(stored) == len(keys)
    probes = keys + ["".join(rng.choices("ab\0/é\x01", k=rng.randint(0, 7))) for _ in range(300)]
    for probe in probes:
        lo = rng.randint(0, len(keys))
        assert stored.bisect_left(probe) == bisect.bisect_left(keys, probe), probe
        assert stored.bisect_left(probe, lo) == bisect.bisect_left(keys, probe, lo), (probe, lo)
