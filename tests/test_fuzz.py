"""Property-based fuzzing (hypothesis) of the archive index and name handling.

Targets: ``zipmount.archive.clean_name``, ``build_tree``, and whole archives read through the real
layers over a local file (``Source.for_url(path, StorageOptions(), Stats())`` -> ``CachedObject``
-> ``Archive.open`` -> member readers), with archives generated field by field (lying sizes, CRCs,
flags, methods, extra fields, hostile names) or mutated from valid ones byte by byte.

Invariants:
- nothing but :class:`zipmount.errors.ZipmountError` subclasses ever escapes;
- every cleaned name is relative, has no empty, ``.`` or ``..`` component, no NUL or control
  character, and no component longer than 255 bytes;
- the tree is consistent: every entry's parent is a directory listed in ``children`` and lists
  the entry exactly once; every directory has a ``children`` list; nothing else is listed;
- an index saved to the disk cache loads back identical.

``make test`` runs a short, derandomised pass (well under 20 s). ``ZIPMOUNT_FUZZ_EXAMPLES=N``
sets the example count of every test (``make fuzz`` uses 20000, randomised).
"""

from __future__ import annotations

import atexit
import bz2
import lzma
import os
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from robust.zips import (
    S_DIR,
    S_EXEC,
    S_FILE,
    S_LINK,
    RawMember,
    deflate,
    extra_field,
    plain_zip,
    raw_zip,
)

from zipmount.archive import NAME_MAX, Archive, CachedObject, Entry, build_tree, clean_name
from zipmount.cache import BlockCache, DiskTier
from zipmount.errors import ArchiveError, ZipmountError
from zipmount.source import Source, StorageOptions
from zipmount.stats import Stats

_ENV = os.environ.get("ZIPMOUNT_FUZZ_EXAMPLES")


def _settings(default: int) -> settings:
    return settings(max_examples=int(_ENV) if _ENV else default, deadline=None, database=None,
                    derandomize=not _ENV, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# -- names ------------------------------------------------------------------------------------

NASTY = ["", "/", "//", ".", "..", "../", "./", "a/..", "../../etc/passwd", "/abs", "\\",
         "a\\..\\..\\b", "C:\\win", "a//b", "a/./b", "\0", "a\0b", "\x01\x1f\x7f", "\x1b[31m",
         "~", "-", " ", "é", "日本", "\u202e", "\ufeff", "L" * 300, "é" * 200, "a/" * 100]


def _name_strategy() -> st.SearchStrategy[str]:
    part = st.one_of(st.sampled_from(NASTY), st.text(max_size=20),
                     st.text(alphabet="./\\\0 a", max_size=12), st.text(min_size=250, max_size=600))
    return st.one_of(st.lists(part, max_size=6).map("".join),
                     st.lists(part, max_size=6).map("/".join),
                     st.binary(max_size=80).map(lambda b: b.decode("cp437")),
                     st.binary(max_size=80).map(lambda b: b.decode("utf-8", "replace")))


def check_clean(name: str | None) -> None:
    if name is None:
        return
    assert isinstance(name, str) and name, repr(name)
    assert not name.startswith("/") and not name.endswith("/"), repr(name)
    for part in name.split("/"):
        assert part not in ("", ".", ".."), repr(name)
        assert not any(ord(c) < 32 or ord(c) == 127 for c in part), repr(name)
        assert len(part.encode("utf-8", "surrogateescape")) <= NAME_MAX, repr(name)
    # a backslash left in a name is a character of it (a name made on unix)
    assert clean_name(name, backslash_separates=False) == name, f"not idempotent: {name!r}"


@_settings(1500)
@given(_name_strategy())
def test_clean_name_is_always_safe(raw):
    cleaned = clean_name(raw)
    check_clean(cleaned)
    assert cleaned is None or "\\" not in cleaned, repr(cleaned)  # DOS: a separator
    check_clean(clean_name(raw, backslash_separates=False))


@_settings(300)
@given(st.lists(st.text(alphabet="ab/", max_size=6), max_size=6))
def test_clean_name_keeps_plain_relative_paths(parts):
    """A name made only of ordinary components comes back unchanged."""
    parts = [p for p in "/".join(parts).split("/") if p]
    name = "/".join(parts)
    assert clean_name(name) == (name or None)


# -- the tree -----------------------------------------------------------------------------------


def check_tree(by_name: dict[str, Entry], children: dict[str, list[str]]) -> None:
    assert "" in children and "" not in by_name
    for name, entry in by_name.items():
        check_clean(name)
        assert entry.name == name
        assert entry.kind in ("file", "dir", "link")
        parent, _, base = name.rpartition("/")
        assert parent in children, f"{name!r}: parent {parent!r} is not a directory"
        assert parent == "" or by_name[parent].kind == "dir", name
        assert children[parent].count(base) == 1, f"{name!r} listed {children[parent].count(base)}x"
        if entry.kind == "dir":
            assert name in children, f"directory {name!r} has no children list"
        else:
            assert name not in children, f"{entry.kind} {name!r} has a children list"
    for parent, names in children.items():
        assert parent == "" or by_name[parent].kind == "dir"
        assert names == sorted(names)
        for base in names:
            assert (f"{parent}/{base}" if parent else base) in by_name


_entries = st.lists(
    st.builds(lambda n, kind: (clean_name(n), kind),
              st.text(alphabet="ab/.\\", max_size=8), st.sampled_from(["file", "dir", "link"])),
    max_size=25,
)


@_settings(800)
@given(_entries)
def test_build_tree_is_consistent(pairs):
    entries = [Entry(name=n, kind=k, size=0 if k == "dir" else 3, mtime_ns=i, mode=0o444)
               for i, (n, k) in enumerate(pairs) if n is not None]
    by_name, children = build_tree(entries)
    check_tree(by_name, children)
    for e in entries:  # every name (or a directory in its place) is reachable
        assert e.name in by_name


# -- whole archives through the real layers -------------------------------------------------------


def _extra() -> st.SearchStrategy[bytes]:
    ts = st.builds(lambda f, t: extra_field(0x5455, bytes([f]) + struct.pack("<i", t)),
                   st.integers(0, 255), st.integers(-(2**31), 2**31 - 1))
    upath = st.builds(lambda v, crc, n: extra_field(0x7075, bytes([v]) + struct.pack("<I", crc)
                                                    + n.encode("utf-8", "replace")),
                      st.sampled_from([1, 0, 2]), st.integers(0, 2**32 - 1), _name_strategy())
    zip64 = st.builds(lambda vals: extra_field(0x0001, b"".join(struct.pack("<Q", v)
                                                                 for v in vals)),
                      st.lists(st.integers(0, 2**64 - 1), max_size=3))
    junk = st.builds(extra_field, st.integers(0, 0xFFFF), st.binary(max_size=12))
    return st.lists(st.one_of(ts, upath, zip64, junk, st.binary(max_size=6)), max_size=3).map(
        b"".join)


@st.composite
def _member(draw) -> RawMember:
    """One member, honest (readable) half of the time, lying in any field otherwise."""
    honest = draw(st.booleans())
    name = draw(st.one_of(_name_strategy().map(lambda s: s.encode("utf-8", "replace")),
                          st.text(alphabet="ab/.\\", max_size=6).map(str.encode),
                          st.binary(max_size=40)))
    plain = draw(st.one_of(st.binary(max_size=200), st.sampled_from([b"", b"\0" * 5000]),
                           st.text(max_size=100).map(str.encode)))
    method = draw(st.sampled_from([0, 8, 12, 14]) if honest else
                  st.one_of(st.sampled_from([0, 8, 12, 14, 93, 99]), st.integers(0, 0xFFFF)))
    if method == 8:
        payload = deflate(plain)
    elif method == 12:
        payload = bz2.compress(plain)
    elif method == 14:
        props = lzma._encode_filter_properties({"id": lzma.FILTER_LZMA1})
        payload = struct.pack("<BBH", 9, 4, len(props)) + props + lzma.compress(
            plain, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA1}])
    elif method == 0:
        payload = plain
    else:
        payload = draw(st.binary(max_size=64))
    mode = st.sampled_from([S_FILE, S_FILE, S_DIR, S_LINK, S_EXEC, 0])
    if honest:
        return RawMember(name=name, plain=plain, method=method, payload=payload,
                         flags=draw(st.sampled_from([0, 0x800, 8])), external_attr=draw(mode),
                         extra=draw(st.one_of(st.just(b""), _extra())))
    if draw(st.integers(0, 3)) == 0:
        payload = draw(st.binary(max_size=64))  # corrupt data whatever the method
    lie = st.one_of(st.none(), st.none(), st.integers(0, 2**32 - 1), st.integers(0, 300))
    return RawMember(
        name=name, plain=plain, method=method, payload=payload,
        crc=draw(st.one_of(st.none(), st.none(), st.integers(0, 2**32 - 1))),
        file_size=draw(lie), compress_size=draw(lie),
        flags=draw(st.one_of(st.sampled_from([0, 0x800, 1, 8, 0x808, 0x41]),
                             st.integers(0, 0xFFFF))),
        extra=draw(st.one_of(st.just(b""), _extra())),
        external_attr=draw(st.one_of(mode, st.integers(0, 2**32 - 1))),
        create_system=draw(st.sampled_from([3, 3, 0, 11])),
    )


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, value in edits:
        if not buf:
            break
        pos %= len(buf)
        if kind == 0:
            buf[pos] = value & 0xFF  # overwrite a byte
        elif kind == 1:
            del buf[pos:]  # truncate
        elif kind == 2:
            buf[pos:pos] = bytes([value & 0xFF]) * (value % 7 + 1)  # insert
        else:
            buf[pos:pos + 4] = struct.pack("<I", value & 0xFFFFFFFF)  # a lying 32-bit field
    return bytes(buf)


_archive = st.one_of(
    st.lists(_member(), min_size=0, max_size=6).map(raw_zip),
    st.builds(_mutate,
              st.lists(_member(), min_size=1, max_size=4).map(raw_zip),
              st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**16),
                                 st.integers(0, 2**32 - 1)), min_size=1, max_size=4)),
    st.builds(_mutate,
              st.dictionaries(st.text("abc/", min_size=1, max_size=5), st.binary(max_size=50),
                              max_size=4).map(lambda d: plain_zip(d, zipfile.ZIP_DEFLATED)),
              st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**16),
                                 st.integers(0, 2**32 - 1)), min_size=1, max_size=3)),
    st.binary(max_size=300),
)

_WORK = Path(tempfile.mkdtemp(prefix="zipmount-fuzz-"))
atexit.register(shutil.rmtree, _WORK, True)


def _read_all(archive: Archive) -> None:
    for entry in list(archive.entries.values()):
        if entry.kind == "dir":
            continue
        try:
            if entry.kind == "link":
                archive.readlink(entry)
                continue
            reader = archive.reader(entry)
            try:
                reader.read(0, 65536)
                reader.read(min(entry.size, 1 << 20) // 2, 4096)  # a jump
                reader.read(0, 100)  # and back
            finally:
                reader.close()
            event(f"member read: method {entry.method if entry.method in (0, 8, 12, 14) else '?'}")
        except ZipmountError as exc:
            event(f"member error: {type(exc).__name__}")
            # the file does not change and is always there: a broken archive is an
            # ArchiveError (EIO/EACCES), never a source error such as ESTALE
            assert isinstance(exc, ArchiveError), f"{entry.name!r}: {exc!r}"


def _negative_offset_zip() -> bytes:
    """Found by this fuzzer: an end record whose central-directory offset is larger than its own
    position makes zipfile compute negative local header offsets."""
    body = raw_zip([RawMember(b"a", b"x")])
    cd = body[body.index(b"PK\x01\x02"): body.index(b"PK\x05\x06")]
    return cd + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(cd), 1 << 24, 0)


@_settings(400)
@given(_archive)
@example(_negative_offset_zip())
def test_archives_only_raise_zipmount_errors_and_stay_consistent(data):
    path = _WORK / "fuzz.zip"
    path.write_bytes(data)
    stats = Stats()
    source, inner = Source.for_url(str(path), StorageOptions(timeout=5, retries=0), stats)
    cache = BlockCache(4 << 20, None, stats)
    disk_root = Path(tempfile.mkdtemp(dir=_WORK))
    disk = DiskTier(disk_root, 64 << 20)
    try:
        cached = CachedObject(source, source.stat(inner), cache)
        try:
            archive = Archive.open(cached, disk)
        except ZipmountError as exc:
            event(f"not opened: {type(exc).__name__}")
            assert isinstance(exc, ArchiveError), repr(exc)
            return
        event(f"opened, {min(len(archive.entries), 3)}+ entries")
        check_tree(archive.entries, archive.children)
        again = Archive.open(cached, disk)  # from the index persisted in the disk cache
        assert again.entries == archive.entries and again.children == archive.children
        _read_all(archive)
    finally:
        cache.close()
        disk.close()
        shutil.rmtree(disk_root, ignore_errors=True)
