"""The index of one archive: its central directory parsed into cleaned entries (pure), persisted.

The central directory is parsed here, record by record from a file-like view of the cached object
(one request for the tail, then the directory in 1 MiB pieces), not with :mod:`zipfile`: zipfile
reads the whole directory at once and keeps a ``ZipInfo`` of ~0.5 KB per entry, and it hides the
raw name bytes that choosing a code page needs. Its size is checked against :data:`CD_MAX_BYTES`
before any of it is read.

What the index shows (documented in the README):

- names: UTF-8 when flag 0x800 is set, the Info-ZIP Unicode Path field (0x7075) when its CRC
  matches, otherwise one code page per archive (:mod:`.names`); then cleaned (:func:`clean_name`);
- duplicates: the **last** entry of a name keeps it (what ``unzip -o`` leaves), earlier ones are
  ``name (1).ext``, ``name (2).ext`` ... in archive order; a file whose name is also a directory's
  is renamed the same way, the directory keeps the name; logged (the first five one by one);
- mtime: NTFS (0x000a, 100 ns) wins, then extended timestamp (0x5455), then the PKWARE unix field
  (0x000d), then the DOS time read as the daemon's local time;
- symlinks: unix mode ``S_IFLNK``; the target is the member's data (Info-ZIP) or the PKWARE unix
  field's data (:attr:`Entry.target`); hard links (PKWARE: flag 0x800 in the external attributes
  plus the target name in 0x000d; PKZIP also writes "made by DOS" with a unix mode) are the
  target's data under the link's name, ``nlink`` counting both; a hard link whose target is
  missing, of another type, or itself (loops) is dropped with a log line, except a symlink so
  flagged: PKZIP flags symlinks that have several links, so it stays a symlink to its field;
- fifos, devices and sockets are skipped (one log line per archive); a "fifo" with data (Info-ZIP
  ``-FI``) is a regular file;
- members sharing bytes (overlap bombs), or running into the central directory, are dropped with
  one log line per archive; of several records at one offset only the first (in central
  directory order) is kept.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import hashlib
import json
import logging
import stat
import struct
import sys
import time
from array import array
from collections.abc import ItemsView, Iterable, Iterator, Mapping, ValuesView
from typing import IO, Any, NamedTuple

from ..cache import DiskTier
from ..errors import ArchiveError
from . import extra as extras
from .names import choose_encoding, decode

log = logging.getLogger(__name__)

INDEX_VERSION = 3
NAME_MAX = 255
MAX_ENTRIES = 1_000_000
# 46 fixed bytes per record plus 64 MiB of names, extra fields and comments for all of them.
CD_MAX_BYTES = MAX_ENTRIES * 46 + 64 * 2**20
_READ_PIECE = 1 << 20
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")
_END64 = struct.Struct("<4sQ2H2L4Q")
_END64_LOCATOR = struct.Struct("<4sLQL")
_LOCAL_HEADER_SIZE = 30
_UNIX = 3
_HARD_LINK = 0x800  # PKWARE: in the low (DOS) half of the external attributes
_UNIX_TYPES = {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK,
               stat.S_IFSOCK}
_SHOWN_MAX = 5  # names quoted in one log line


class Entry(NamedTuple):
    """One file, directory or symlink of an archive, as the mount shows it."""

    name: str  # cleaned path inside the archive, no leading/trailing slash
    kind: str  # "file", "dir" or "link"
    size: int
    mtime_ns: int
    mode: int  # permission bits only
    compress_size: int = 0
    method: int = 0
    header_offset: int = 0
    crc: int = 0
    flags: int = 0
    raw_name_len: int = 0
    extra_len: int = 0
    nlink: int = 1  # hard links: entries sharing this data
    target: str = ""  # a symlink whose target is in the PKWARE unix field, not in its data

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & 0x1)


# -- the compact table --------------------------------------------------------------------------

# Entry fields stored as array columns; name, kind and target are kept apart.
_FIELDS = ("size", "mtime_ns", "mode", "compress_size", "method", "header_offset", "crc", "flags",
           "raw_name_len", "extra_len", "nlink")
_CODES = "qqIqHqIHHHI"
_I64 = (-(2**63), 2**63 - 1)
_KINDS = ("file", "dir", "link")
_FILE, _DIR, _LINK = range(3)
_new_tuple = tuple.__new__


def _key(name: str) -> str:
    """Sort key of a path: parent, NUL, base name. Sorted keys put each directory's children in
    one run, in name order (names hold no NUL once cleaned)."""
    parent, _, base = name.rpartition("/")
    return f"{parent}\0{base}"


def _name(key: str) -> str:
    parent, _, base = key.partition("\0")
    return f"{parent}/{base}" if parent else base


class EntryTable(Mapping[str, Entry]):
    """Entries by cleaned path, held as sorted keys plus array columns (~100 bytes + the name per
    entry instead of ~500 for a dict of named tuples); an :class:`Entry` is built on lookup."""

    def __init__(self, keys: list[str], kinds: bytes, columns: list[array],
                 targets: dict[int, str]) -> None:
        self._keys = keys
        self._kinds = kinds
        self._columns = columns
        self._targets = targets
        self.children = Children(self)

    def _index(self, name: str) -> int:
        key = _key(name)
        i = bisect.bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            return i
        return -1

    def _entry(self, i: int) -> Entry:
        c = self._columns
        # tuple.__new__ skips the named tuple's Python-level __new__: half the cost of a lookup
        return _new_tuple(Entry, (_name(self._keys[i]), _KINDS[self._kinds[i]], c[0][i], c[1][i],
                                  c[2][i], c[3][i], c[4][i], c[5][i], c[6][i], c[7][i], c[8][i],
                                  c[9][i], c[10][i], self._targets.get(i, "")))

    def __getitem__(self, name: str) -> Entry:
        i = self._index(name) if isinstance(name, str) else -1
        if i < 0:
            raise KeyError(name)
        return self._entry(i)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._index(name) >= 0

    def __iter__(self) -> Iterator[str]:
        return map(_name, self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def items(self) -> ItemsView[str, Entry]:
        return _Items(self)

    def values(self) -> ValuesView[Entry]:
        return _Values(self)

    def is_dir(self, name: str) -> bool:
        i = self._index(name)
        return i >= 0 and self._kinds[i] == _DIR

    def child_names(self, name: str) -> list[str]:
        """Base names of the entries in directory ``name`` (sorted)."""
        prefix = f"{name}\0"
        lo = bisect.bisect_left(self._keys, prefix)
        hi = bisect.bisect_left(self._keys, f"{name}\x01", lo)
        cut = len(prefix)
        return [k[cut:] for k in self._keys[lo:hi]]

    def dir_names(self) -> Iterator[str]:
        return (_name(k) for k, kind in zip(self._keys, self._kinds, strict=True) if kind == _DIR)

    def dir_count(self) -> int:
        return self._kinds.count(_DIR)

    def to_doc(self) -> dict[str, Any]:
        """The table as JSON-able data: columns as base64 of their machine bytes (a disk cache is
        read by the machine that wrote it), which loads ~4x faster than lists of numbers."""
        columns = zip(_FIELDS, self._columns, strict=True)
        return {"version": INDEX_VERSION, "byteorder": sys.byteorder, "keys": self._keys,
                "kinds": base64.b64encode(self._kinds).decode(),
                "columns": {name: base64.b64encode(col.tobytes()).decode() for name, col in columns},
                "targets": {str(i): t for i, t in self._targets.items()}}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> EntryTable:
        if doc["byteorder"] != sys.byteorder:
            raise ValueError("written on a machine of another byte order")
        keys = doc["keys"]
        columns = []
        for name, code in zip(_FIELDS, _CODES, strict=True):
            col = array(code)
            col.frombytes(base64.b64decode(doc["columns"][name], validate=True))
            columns.append(col)
        kinds = base64.b64decode(doc["kinds"], validate=True)
        if not all(len(col) == len(keys) for col in columns) or len(kinds) != len(keys):
            raise ValueError("columns of different lengths")
        if not all(isinstance(k, str) for k in keys) or any(k > _LINK for k in kinds):
            raise ValueError("bad keys or kinds")
        return cls(keys, kinds, columns, {int(i): str(t) for i, t in doc["targets"].items()})


class _Items(ItemsView[str, Entry]):
    """Items in key order without a lookup per item."""

    _mapping: EntryTable

    def __iter__(self) -> Iterator[tuple[str, Entry]]:
        table = self._mapping
        for i in range(len(table)):
            entry = table._entry(i)
            yield entry.name, entry


class _Values(ValuesView[Entry]):
    _mapping: EntryTable

    def __iter__(self) -> Iterator[Entry]:
        table = self._mapping
        return map(table._entry, range(len(table)))


class Children(Mapping[str, list[str]]):
    """Each directory's sorted child names ("" is the root), computed from the table on lookup."""

    def __init__(self, table: EntryTable) -> None:
        self._table = table

    def __getitem__(self, name: str) -> list[str]:
        if name not in self:
            raise KeyError(name)
        return self._table.child_names(name)

    def __contains__(self, name: object) -> bool:
        return name == "" or (isinstance(name, str) and self._table.is_dir(name))

    def __iter__(self) -> Iterator[str]:
        yield ""
        yield from self._table.dir_names()

    def __len__(self) -> int:
        return 1 + self._table.dir_count()


class _Rows:
    """Entries under construction, column by column (no object per entry but its name)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.kinds = bytearray()
        self.columns = [array(code) for code in _CODES]
        self.targets: dict[int, str] = {}

    def append(self, name: str, kind: int, values: Iterable[int], target: str = "") -> int:
        """Add a row (``values`` in :data:`_FIELDS` order, 64-bit ones clamped); its index."""
        i = len(self.names)
        self.names.append(name)
        self.kinds.append(kind)
        for col, value in zip(self.columns, values, strict=True):
            if col.typecode == "q":
                value = min(max(value, _I64[0]), _I64[1])
            col.append(value)
        if target:
            self.targets[i] = target
        return i

    def values(self, i: int) -> list[int]:
        return [col[i] for col in self.columns]


# -- the central directory ----------------------------------------------------------------------


class _Records:
    """The central directory's records, reduced to what the index needs, as columns."""

    def __init__(self) -> None:
        self.raw_names: list[bytes] = []
        self.create_system = array("B")
        self.flags = array("H")
        self.method = array("H")
        self.dos = array("I")  # date << 16 | time
        self.crc = array("I")
        self.compress_size = array("Q")
        self.file_size = array("Q")
        self.header_offset = array("q")
        self.external_attr = array("I")
        self.name_len = array("H")  # in the record: the name may end earlier, at a NUL
        self.extra_len = array("H")
        self.unicode_path: dict[int, str] = {}
        self.mtime_ns: dict[int, int] = {}
        self.unix_data: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self.raw_names)


def read_central_directory(file: IO[bytes], size: int, name: str) -> EntryTable:
    """Parse the central directory of the zip ``file`` (``size`` bytes, called ``name`` in
    errors and logs) into the cleaned, resolved index."""
    if size < _END.size:
        raise ArchiveError(f"{name}: not a zip archive ({size} bytes)")
    start, cd_size, concat = _locate(file, size, name)
    records = _records(file, start, cd_size, concat, name)
    rows = _rows(records, start, name)
    del records  # before the table is built: the peak is one of the two, not both
    return _build(rows, name)


def _locate(file: IO[bytes], size: int, name: str) -> tuple[int, int, int]:
    """Where the central directory starts, its size, and the bytes prepended to the archive
    (self-extractors: local header offsets are relative to the archive's own start)."""
    tail_len = min(size, _END.size + 0xFFFF)
    file.seek(size - tail_len)
    tail = file.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06", 0, len(tail) - _END.size + 4)
    if pos < 0:
        raise ArchiveError(f"{name}: not a zip archive (no end of central directory record)")
    _, _, _, _, count, cd_size, cd_offset, _ = _END.unpack_from(tail, pos)
    end_at = size - tail_len + pos
    concat = end_at - cd_size - cd_offset
    if pos >= _END64_LOCATOR.size:
        sig, *_ = _END64_LOCATOR.unpack_from(tail, pos - _END64_LOCATOR.size)
        if sig == b"PK\x06\x07":
            # As zipfile does: the zip64 end record sits just before its locator.
            at = end_at - _END64_LOCATOR.size - _END64.size
            if at < 0:
                raise ArchiveError(f"{name}: not a readable zip archive (truncated zip64 end record)")
            file.seek(at)
            record = file.read(_END64.size)
            if len(record) != _END64.size or record[:4] != b"PK\x06\x06":
                raise ArchiveError(f"{name}: not a readable zip archive (bad zip64 end record)")
            *_, count, cd_size, cd_offset = _END64.unpack(record)
            concat = at - cd_size - cd_offset
    if cd_size > CD_MAX_BYTES or count > MAX_ENTRIES:
        raise ArchiveError(f"{name}: central directory of {cd_size} bytes / {count} entries is "
                           f"over the limit ({CD_MAX_BYTES} bytes, {MAX_ENTRIES} entries)")
    start = cd_offset + concat
    if start < 0 or start + cd_size > size:
        raise ArchiveError(f"{name}: not a readable zip archive (central directory outside the file)")
    return start, cd_size, concat


def _records(file: IO[bytes], start: int, cd_size: int, concat: int, name: str) -> _Records:
    """The records of the central directory, read in pieces (peak memory: one piece plus the
    reduced records)."""
    out = _Records()
    file.seek(start)
    buf, pos, unread = b"", 0, cd_size

    def need(n: int) -> None:
        nonlocal buf, pos, unread
        while len(buf) - pos < n and unread > 0:
            piece = file.read(min(unread, max(_READ_PIECE, n)))
            if not piece:
                break
            unread -= len(piece)
            buf, pos = buf[pos:] + piece, 0
        if len(buf) - pos < n:
            raise ArchiveError(f"{name}: not a readable zip archive (truncated central directory)")

    while unread > 0 or pos < len(buf):
        i = len(out)
        if i >= MAX_ENTRIES:
            raise ArchiveError(f"{name}: more than {MAX_ENTRIES} entries")
        need(_CENTRAL.size)
        (sig, _, create_system, _, _, flags, method, dos_time, dos_date, crc, compress_size,
         file_size, name_len, extra_len, comment_len, _, _, external_attr,
         header_offset) = _CENTRAL.unpack_from(buf, pos)
        if sig != b"PK\x01\x02":
            raise ArchiveError(f"{name}: not a readable zip archive (bad central directory "
                               f"record {i})")
        need(_CENTRAL.size + name_len + extra_len + comment_len)
        at = pos + _CENTRAL.size
        # A name ends at its first NUL, as zipfile and C tools read it (a trick of viruses).
        raw_name = buf[at: at + name_len].partition(b"\0")[0]
        info = extras.parse(buf[at + name_len: at + name_len + extra_len], raw_name, file_size,
                            compress_size, header_offset)
        out.raw_names.append(raw_name)
        out.create_system.append(create_system)
        out.flags.append(flags)
        out.method.append(method)
        out.dos.append(dos_date << 16 | dos_time)
        out.crc.append(crc)
        out.compress_size.append(info.compress_size)
        out.file_size.append(info.file_size)
        out.header_offset.append(min(max(info.header_offset + concat, _I64[0]), _I64[1]))
        out.external_attr.append(external_attr)
        out.name_len.append(name_len)
        out.extra_len.append(extra_len)
        if info.unicode_path is not None:
            out.unicode_path[i] = info.unicode_path
        if info.mtime_ns is not None:
            out.mtime_ns[i] = info.mtime_ns
        if info.unix_data is not None:
            out.unix_data[i] = info.unix_data
        pos = at + name_len + extra_len + comment_len
    return out


def _rows(rec: _Records, cd_start: int, archive: str) -> _Rows:
    """Rows of the records: names decoded and cleaned, overlaps and specials dropped, hard links
    resolved (names may still repeat: :func:`_build` makes them unique)."""
    encoding = choose_encoding([n for i, n in enumerate(rec.raw_names)
                                if not rec.flags[i] & 0x800 and i not in rec.unicode_path])
    if encoding != "cp437":
        log.info("%s: names without the UTF-8 flag read as %s", archive, encoding)
    overlapping = _overlapping(rec, cd_start)
    if overlapping:
        _log_names(logging.WARNING, f"{archive}: {len(overlapping)} members share bytes with "
                   "another member or the central directory (an overlap bomb?): not shown",
                   [rec.raw_names[i].decode("utf-8", "replace") for i in sorted(overlapping)])
    rows = _Rows()
    links: dict[int, str] = {}  # row of a hard link -> cleaned target name
    specials: list[str] = []
    for i, raw_name in enumerate(rec.raw_names):
        utf8 = rec.flags[i] & 0x800
        raw = raw_name.decode("utf-8", "replace") if utf8 else decode(raw_name, encoding)
        name = clean_name(rec.unicode_path.get(i) or raw)
        if name is None or i in overlapping:
            continue
        # PKZIP writes "made by DOS" with a unix mode in the high half (as mount-zip reads it)
        unix = rec.create_system[i] == _UNIX or (
            rec.create_system[i] == 0 and stat.S_IFMT(rec.external_attr[i] >> 16) in _UNIX_TYPES)
        mode = rec.external_attr[i] >> 16 if unix else 0
        fmt = stat.S_IFMT(mode)
        is_dir = raw.endswith(("/", "\\")) or (unix and fmt == stat.S_IFDIR)
        size = rec.file_size[i]
        if unix and not is_dir and fmt == stat.S_IFIFO and size:
            fmt = stat.S_IFREG  # Info-ZIP -FI stores what it read from the pipe
        if unix and not is_dir and fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK, stat.S_IFIFO):
            specials.append(name)
            continue
        is_link = unix and not is_dir and fmt == stat.S_IFLNK
        unix_data = rec.unix_data.get(i)
        target = ""
        if is_link and unix_data and size == 0:
            target = unix_data.decode("utf-8", "replace")
            size = len(target.encode())
        kind = _DIR if is_dir else _LINK if is_link else _FILE
        perm = 0o555 if is_dir or is_link or (unix and mode & 0o111) else 0o444
        row = rows.append(name, kind, (
            0 if is_dir else size, _mtime_ns(rec, i), perm, rec.compress_size[i], rec.method[i],
            rec.header_offset[i], rec.crc[i], rec.flags[i], rec.name_len[i], rec.extra_len[i], 1),
            target)
        if kind != _DIR and unix and rec.external_attr[i] & _HARD_LINK and unix_data:
            links[row] = clean_name(decode(unix_data, encoding)) or ""
    if specials:
        _log_names(logging.INFO, f"{archive}: skipped {len(specials)} fifo, device or socket "
                   "entries", specials)
    _resolve_hard_links(rows, links, archive)
    return rows


def _mtime_ns(rec: _Records, i: int) -> int:
    mtime = rec.mtime_ns.get(i)
    if mtime is not None:
        return mtime
    d, t = rec.dos[i] >> 16, rec.dos[i] & 0xFFFF
    date_time = ((d >> 9) + 1980, (d >> 5) & 0xF, d & 0x1F, t >> 11, (t >> 5) & 0x3F, (t & 0x1F) * 2)
    try:
        return int(time.mktime((*date_time, 0, 0, -1))) * 10**9
    except (OverflowError, ValueError):
        return 0


def _overlapping(rec: _Records, cd_start: int) -> set[int]:
    """Records whose data (at least header + name + compressed size) runs over the next local
    header or into the central directory, and all but the first record at one offset."""
    offsets = rec.header_offset
    order = sorted(range(len(rec)), key=offsets.__getitem__)  # stable: archive order at ties
    bad: set[int] = set()
    following = cd_start  # the next larger offset than the current group's
    group: int | None = None
    for pos in range(len(order) - 1, -1, -1):
        i = order[pos]
        h = offsets[i]
        if h != group:
            following = group if group is not None else cd_start
            group = h
        shares_offset = pos > 0 and offsets[order[pos - 1]] == h
        end = h + _LOCAL_HEADER_SIZE + rec.name_len[i] + rec.compress_size[i]
        if shares_offset or (0 <= h < cd_start and end > min(following, cd_start)):
            bad.add(i)
    return bad


def _resolve_hard_links(rows: _Rows, links: dict[int, str], archive: str) -> None:
    """Give each hard link its target's data (following chains); drop those that cannot be."""
    if not links:
        return
    missing, loop = -1, -2
    by_name = {name: i for i, name in enumerate(rows.names)}  # the last of a name: the one shown
    final: dict[int, int] = {}  # link row -> the row it ends at, or missing / loop
    for start in links:
        path: list[int] = []
        on_path: set[int] = set()
        j = start
        while True:
            if j in final:
                end = final[j]
                break
            if j not in links:
                end = j
                break
            if j in on_path:  # a loop
                end = loop
                break
            path.append(j)
            on_path.add(j)
            j = by_name.get(links[j], missing)
            if j == missing:
                end = missing
                break
        for p in path:
            final[p] = end
    counts: dict[int, int] = {}
    broken = 0
    for i, j in list(final.items()):
        if j >= 0 and rows.kinds[j] == rows.kinds[i]:
            counts[j] = counts.get(j, 1) + 1
            continue
        del final[i]
        if rows.kinds[i] == _LINK:
            continue  # PKZIP flags a symlink with several links too: its field is its target
        broken += 1
        if broken <= _SHOWN_MAX:
            why = ("has no target in the archive" if j == missing else
                   "points to itself or loops" if j == loop else f"points to a {_KINDS[rows.kinds[j]]}")
            log.warning("%s: hard link %r -> %r %s: not shown", archive, rows.names[i], links[i], why)
        rows.kinds[i] = 0xFF  # dropped by _build
    if broken > _SHOWN_MAX:
        log.warning("%s: %d more hard links without a usable target: not shown", archive,
                    broken - _SHOWN_MAX)
    nlink = _FIELDS.index("nlink")
    for i, j in final.items():
        for col in rows.columns:
            col[i] = col[j]
        rows.columns[nlink][i] = counts[j]
        rows.targets.pop(i, None)
        if j in rows.targets:
            rows.targets[i] = rows.targets[j]
    for j, n in counts.items():
        rows.columns[nlink][j] = n


def _log_names(level: int, message: str, names: list[str]) -> None:
    shown = ", ".join(repr(n) for n in names[:_SHOWN_MAX])
    more = f" and {len(names) - _SHOWN_MAX} more" if len(names) > _SHOWN_MAX else ""
    log.log(level, "%s: %s%s", message, shown, more)


# -- names and the tree -------------------------------------------------------------------------


def clean_name(name: str) -> str | None:
    """A safe relative path for an archive name: no ``..``, no absolute paths, no control chars.

    Backslashes count as separators; ``.``/``..``/empty components are dropped (so the path can
    never leave the mount); control characters become ``_``; components longer than NAME_MAX bytes
    are shortened with a hash suffix so that they stay unique and reachable.
    """
    parts = []
    for part in name.replace("\\", "/").split("/"):
        if part in ("", ".", ".."):
            continue
        part = "".join("_" if ord(c) < 32 or ord(c) == 127 else c for c in part)
        encoded = part.encode("utf-8", "surrogateescape")
        if len(encoded) > NAME_MAX:
            digest = hashlib.sha256(encoded).hexdigest()[:12]
            part = encoded[:200].decode("utf-8", "ignore") + "~" + digest
        parts.append(part)
    return "/".join(parts) or None


def _numbered(name: str, n: int) -> str:
    """``dir/base (n).ext``, the base shortened to keep the component within NAME_MAX bytes."""
    parent, _, base = name.rpartition("/")
    dot = base.rfind(".")
    stem, ext = (base[:dot], base[dot:]) if dot > 0 and len(base) - dot <= 6 else (base, "")
    suffix = f" ({n}){ext}"
    room = NAME_MAX - len(suffix.encode("utf-8", "surrogateescape"))
    stem = stem.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return f"{parent}/{stem}{suffix}" if parent else f"{stem}{suffix}"


def build_tree(entries: Iterable[Entry] | EntryTable, archive: str = ""
               ) -> tuple[EntryTable, Children]:
    """Entries by path (implied directories added, every entry under a unique name) and each
    directory's sorted child names. See the module docstring for duplicates."""
    if isinstance(entries, EntryTable):
        return entries, entries.children
    rows = _Rows()
    for e in entries:
        rows.append(e.name, _KINDS.index(e.kind), (getattr(e, f) for f in _FIELDS), e.target)
    table = _build(rows, archive)
    return table, table.children


def _build(rows: _Rows, archive: str) -> EntryTable:
    """The table of ``rows``: implied directories added, duplicate names numbered."""
    where = f"{archive}: " if archive else ""
    names, kinds = rows.names, rows.kinds
    dirs: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, name in enumerate(names):
        if kinds[i] == _DIR:
            dirs.setdefault(name, i)  # the first of several directory entries
        elif kinds[i] != 0xFF:
            last[name] = i
    mtimes = rows.columns[_FIELDS.index("mtime_ns")]
    mtime = max(mtimes) if mtimes else 0
    for i in range(len(names)):
        if kinds[i] == 0xFF:
            continue
        parent = names[i].rpartition("/")[0]
        while parent and parent not in dirs:
            dirs[parent] = rows.append(parent, _DIR, (0, mtime, 0o555, 0, 0, 0, 0, 0, 0, 0, 1))
            parent = parent.rpartition("/")[0]
    taken = set(dirs) | set(last)
    next_number: dict[str, int] = {}  # so that k duplicates of a name cost O(k), not O(k²)
    renamed_count = 0
    kept: list[int] = list(dirs.values())
    for i in range(len(names)):
        if kinds[i] in (_DIR, 0xFF):
            continue
        name = names[i]
        kept.append(i)
        if name not in dirs and last[name] == i:
            continue
        n = next_number.get(name, 1)
        while (renamed := _numbered(name, n)) in taken:
            n += 1
        next_number[name] = n + 1
        taken.add(renamed)
        names[i] = renamed
        renamed_count += 1
        if renamed_count > _SHOWN_MAX:
            continue
        if name in dirs:
            log.warning("%sarchive has a file and a directory named %r: the file is %r", where,
                        name, renamed)
        else:
            log.warning("%sarchive has duplicate name %r: an earlier entry is %r", where, name,
                        renamed)
    if renamed_count > _SHOWN_MAX:
        log.warning("%sarchive has %d more duplicate names, each shown as 'name (n)'", where,
                    renamed_count - _SHOWN_MAX)
    del taken, last, dirs, next_number
    keys = [_key(names[i]) for i in kept]
    order = sorted(range(len(kept)), key=keys.__getitem__)
    source = array("l", (kept[j] for j in order))
    del kept
    keys = [keys[j] for j in order]
    del order
    columns = [array(col.typecode, map(col.__getitem__, source)) for col in rows.columns]
    targets = {pos: rows.targets[i] for pos, i in enumerate(source) if i in rows.targets}
    return EntryTable(keys, bytes(kinds[i] for i in source), columns, targets)


# -- persistence --------------------------------------------------------------------------------


def load_index(disk: DiskTier, name: str) -> EntryTable | None:
    """The persisted index ``name``; None if it is not stored (or unreadable: then removed)."""
    raw = disk.read(name)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        if doc.get("version") != INDEX_VERSION:
            return None
        return EntryTable.from_doc(doc)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        log.warning("disk cache: dropping unreadable index %s (%s)", name, exc)
        disk.remove(name)
        return None


def save_index(disk: DiskTier, name: str, entries: EntryTable | Iterable[Entry]) -> None:
    table = build_tree(entries)[0]
    data = json.dumps(table.to_doc(), separators=(",", ":")).encode()
    with contextlib.suppress(OSError):
        disk.write(name, [data], len(data))
