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
  is renamed the same way, the directory keeps the name; one log line each;
- mtime: NTFS (0x000a, 100 ns) wins, then extended timestamp (0x5455), then the PKWARE unix field
  (0x000d), then the DOS time read as the daemon's local time;
- symlinks: unix mode ``S_IFLNK``; the target is the member's data (Info-ZIP) or the PKWARE unix
  field's data (:attr:`Entry.target`); hard links (PKWARE: flag 0x800 in the external attributes
  plus the target name in 0x000d) are the target's data under the link's name, ``nlink`` counting
  both; a hard link whose target is missing, a directory, or itself (loops) is dropped with a log;
- fifos, devices and sockets are skipped (one log line per archive); a "fifo" with data (Info-ZIP
  ``-FI``) is a regular file;
- members sharing bytes (overlap bombs), or running into the central directory, are dropped with
  one log line per archive; only the earliest member at an offset is kept.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import stat
import struct
import time
from array import array
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any, NamedTuple

from ..cache import DiskTier
from ..errors import ArchiveError
from . import extra as extras
from .names import choose_encoding, decode

log = logging.getLogger(__name__)

INDEX_VERSION = 2
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

    def to_list(self) -> list[Any]:
        return list(self)

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & 0x1)


# -- the compact table --------------------------------------------------------------------------

# Entry fields stored as array columns (typecode each); kind, name and target are kept apart.
_COLUMNS = (("size", "q"), ("mtime_ns", "q"), ("mode", "I"), ("compress_size", "q"),
            ("method", "H"), ("header_offset", "q"), ("crc", "I"), ("flags", "H"),
            ("raw_name_len", "H"), ("extra_len", "H"), ("nlink", "I"))
_KINDS = ("file", "dir", "link")
_KIND_CODE = {k: i for i, k in enumerate(_KINDS)}


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

    def __init__(self, keys: list[str], kinds: bytearray | bytes, columns: dict[str, array],
                 targets: dict[int, str]) -> None:
        self._keys = keys
        self._kinds = bytes(kinds)
        self._columns = [columns[name] for name, _ in _COLUMNS]
        self._targets = targets
        self.children = Children(self)

    @classmethod
    def from_entries(cls, entries: Iterable[Entry]) -> EntryTable:
        """A table of ``entries`` (names unique, implied directories present)."""
        rows = sorted(((_key(e.name), e) for e in entries), key=lambda r: r[0])
        columns = {name: array(code, [getattr(e, name) for _, e in rows]) for name, code in _COLUMNS}
        targets = {i: e.target for i, (_, e) in enumerate(rows) if e.target}
        return cls([k for k, _ in rows], bytes(_KIND_CODE[e.kind] for _, e in rows), columns,
                   targets)

    def _index(self, name: str) -> int:
        key = _key(name)
        i = bisect.bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            return i
        return -1

    def _entry(self, i: int) -> Entry:
        c = self._columns
        return Entry(_name(self._keys[i]), _KINDS[self._kinds[i]], c[0][i], c[1][i], c[2][i],
                     c[3][i], c[4][i], c[5][i], c[6][i], c[7][i], c[8][i], c[9][i], c[10][i],
                     self._targets.get(i, ""))

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

    def is_dir(self, name: str) -> bool:
        i = self._index(name)
        return i >= 0 and self._kinds[i] == 1

    def child_names(self, name: str) -> list[str]:
        """Base names of the entries in directory ``name`` (sorted)."""
        prefix = f"{name}\0"
        lo = bisect.bisect_left(self._keys, prefix)
        hi = bisect.bisect_left(self._keys, f"{name}\x01", lo)
        cut = len(prefix)
        return [k[cut:] for k in self._keys[lo:hi]]

    def dir_names(self) -> Iterator[str]:
        return (_name(k) for k, kind in zip(self._keys, self._kinds, strict=True) if kind == 1)

    def to_doc(self) -> dict[str, Any]:
        columns = zip(_COLUMNS, self._columns, strict=True)
        return {"version": INDEX_VERSION, "keys": self._keys, "kinds": self._kinds.hex(),
                "columns": {name: col.tolist() for (name, _), col in columns},
                "targets": {str(i): t for i, t in self._targets.items()}}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> EntryTable:
        keys = doc["keys"]
        columns = {name: array(code, doc["columns"][name]) for name, code in _COLUMNS}
        kinds = bytes.fromhex(doc["kinds"])
        if not all(len(col) == len(keys) for col in columns.values()) or len(kinds) != len(keys):
            raise ValueError("columns of different lengths")
        if not all(isinstance(k, str) for k in keys) or any(k > 2 for k in kinds):
            raise ValueError("bad keys or kinds")
        return cls(keys, kinds, columns, {int(i): str(t) for i, t in doc["targets"].items()})


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
        return 1 + self._table._kinds.count(1)


# -- the central directory ----------------------------------------------------------------------


class _Record(NamedTuple):
    """One central directory record, reduced to what the index needs."""

    raw_name: bytes
    utf8: bool
    create_system: int
    flags: int
    method: int
    dos_time: int
    dos_date: int
    crc: int
    compress_size: int
    file_size: int
    header_offset: int
    external_attr: int
    extra_len: int
    info: extras.Extra


def read_central_directory(file: IO[bytes], size: int, name: str) -> EntryTable:
    """Parse the central directory of the zip ``file`` (``size`` bytes, called ``name`` in
    errors and logs) into the cleaned, resolved index."""
    if size < _END.size:
        raise ArchiveError(f"{name}: not a zip archive ({size} bytes)")
    start, cd_size, count = _locate(file, size, name)
    records = _records(file, start, cd_size, name)
    return build_tree(_entries(records, start, name), archive=name)[0]


def _locate(file: IO[bytes], size: int, name: str) -> tuple[int, int, int]:
    """Where the central directory starts, its size and entry count, from the end records."""
    tail_len = min(size, _END.size + 0xFFFF)
    file.seek(size - tail_len)
    tail = file.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06", 0, len(tail) - _END.size + 4)
    if pos < 0:
        raise ArchiveError(f"{name}: not a zip archive (no end of central directory record)")
    _, _, _, _, count, cd_size, cd_offset, _ = _END.unpack_from(tail, pos)
    end_at = size - tail_len + pos
    concat = end_at - cd_size - cd_offset  # bytes prepended to the archive (self-extractors)
    if pos >= _END64_LOCATOR.size:
        sig, *_ = _END64_LOCATOR.unpack_from(tail, pos - _END64_LOCATOR.size)
        if sig == b"PK\x06\x07":
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
    return start, cd_size, count


def _records(file: IO[bytes], start: int, cd_size: int, name: str) -> list[_Record]:
    """The records of the central directory, read in pieces (peak memory: one piece plus the
    reduced records)."""
    records: list[_Record] = []
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
        if len(records) >= MAX_ENTRIES:
            raise ArchiveError(f"{name}: more than {MAX_ENTRIES} entries")
        need(_CENTRAL.size)
        (sig, _, create_system, _, _, flags, method, dos_time, dos_date, crc, compress_size,
         file_size, name_len, extra_len, comment_len, _, _, external_attr,
         header_offset) = _CENTRAL.unpack_from(buf, pos)
        if sig != b"PK\x01\x02":
            raise ArchiveError(f"{name}: not a readable zip archive (bad central directory "
                               f"record {len(records)})")
        need(_CENTRAL.size + name_len + extra_len + comment_len)
        at = pos + _CENTRAL.size
        raw_name = buf[at: at + name_len]
        info = extras.parse(buf[at + name_len: at + name_len + extra_len], raw_name, file_size,
                            compress_size, header_offset)
        records.append(_Record(raw_name, bool(flags & 0x800), create_system, flags, method,
                               dos_time, dos_date, crc, info.compress_size, info.file_size,
                               info.header_offset, external_attr, extra_len, info))
        pos = at + name_len + extra_len + comment_len
    return records


def _entries(records: list[_Record], cd_start: int, archive: str) -> list[Entry]:
    """Entries of ``records``: names decoded and cleaned, overlaps and specials dropped, hard
    links resolved."""
    encoding = choose_encoding([r.raw_name for r in records if not r.utf8 and r.info.unicode_path
                                is None])
    if encoding != "cp437":
        log.info("%s: names without the UTF-8 flag read as %s", archive, encoding)
    overlapping = _overlapping(records, cd_start)
    if overlapping:
        _log_names(logging.WARNING, f"{archive}: {len(overlapping)} members share bytes with "
                   "another member or the central directory (an overlap bomb?): not shown",
                   [records[i].raw_name.decode("utf-8", "replace") for i in sorted(overlapping)])
    entries: list[Entry | None] = []
    hard_links: list[tuple[int, str]] = []  # (position in entries, cleaned target name)
    specials: list[str] = []
    for i, r in enumerate(records):
        raw = r.raw_name.decode("utf-8", "replace") if r.utf8 else decode(r.raw_name, encoding)
        name = clean_name(r.info.unicode_path or raw)
        if name is None or i in overlapping:
            continue
        entry, special, link_to = _entry(r, name, raw, encoding)
        if special:
            specials.append(name)
            continue
        if link_to is not None:
            hard_links.append((len(entries), link_to))
        entries.append(entry)
    if specials:
        _log_names(logging.INFO, f"{archive}: skipped {len(specials)} fifo, device or socket "
                   "entries", specials)
    _resolve_hard_links(entries, hard_links, archive)
    return [e for e in entries if e is not None]


def _entry(r: _Record, name: str, raw: str, encoding: str) -> tuple[Entry | None, bool, str | None]:
    """(entry, is a special file, cleaned hard-link target name) of one record."""
    unix = r.create_system == _UNIX
    mode = r.external_attr >> 16 if unix else 0
    fmt = stat.S_IFMT(mode)
    is_dir = raw.endswith(("/", "\\")) or (unix and fmt == stat.S_IFDIR)
    unix_data = r.info.unix_data
    if unix and not is_dir and fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
        return None, True, None
    if unix and not is_dir and fmt == stat.S_IFIFO:
        if r.file_size == 0:
            return None, True, None
        fmt = stat.S_IFREG  # Info-ZIP -FI stores what it read from the pipe
    is_link = unix and not is_dir and fmt == stat.S_IFLNK
    target = ""
    size = 0 if is_dir else r.file_size
    if is_link and unix_data and r.file_size == 0:
        target = unix_data.decode("utf-8", "replace")
        size = len(target.encode())
    link_to = None
    if unix and not is_dir and not is_link and r.external_attr & _HARD_LINK and unix_data:
        link_to = clean_name(decode(unix_data, encoding)) or ""
    kind = "dir" if is_dir else "link" if is_link else "file"
    executable = unix and bool(mode & 0o111)
    entry = Entry(
        name=name, kind=kind, size=size, mtime_ns=_mtime_ns(r),
        mode=0o555 if is_dir or executable or is_link else 0o444,
        compress_size=r.compress_size, method=r.method, header_offset=r.header_offset, crc=r.crc,
        flags=r.flags, raw_name_len=len(r.raw_name), extra_len=r.extra_len, target=target)
    return entry, False, link_to


def _mtime_ns(r: _Record) -> int:
    if r.info.mtime_ns is not None:
        return r.info.mtime_ns
    d, t = r.dos_date, r.dos_time
    date_time = ((d >> 9) + 1980, (d >> 5) & 0xF, d & 0x1F, t >> 11, (t >> 5) & 0x3F, (t & 0x1F) * 2)
    try:
        return int(time.mktime((*date_time, 0, 0, -1))) * 10**9
    except (OverflowError, ValueError):
        return 0


def _overlapping(records: list[_Record], cd_start: int) -> set[int]:
    """Records whose data (at least header + name + compressed size) runs over the next local
    header or into the central directory, and all but the first record at one offset."""
    order = sorted(range(len(records)), key=lambda i: (records[i].header_offset, i))
    bad: set[int] = set()
    for pos, i in enumerate(order):
        r = records[i]
        if pos > 0 and records[order[pos - 1]].header_offset == r.header_offset:
            bad.add(i)
            continue
        if not 0 <= r.header_offset < cd_start:
            continue  # not a member at all: its read fails on the local header
        nxt = next((records[j].header_offset for j in order[pos + 1:]
                    if records[j].header_offset != r.header_offset), cd_start)
        if r.header_offset + _LOCAL_HEADER_SIZE + len(r.raw_name) + r.compress_size > min(nxt, cd_start):
            bad.add(i)
    return bad


def _resolve_hard_links(entries: list[Entry | None], links: list[tuple[int, str]],
                        archive: str) -> None:
    """Give each hard link its target's data (following chains); drop those that cannot be."""
    if not links:
        return
    by_name: dict[str, int] = {}
    for i, e in enumerate(entries):
        if e is not None:
            by_name[e.name] = i  # the last of a name: the one shown under it
    link_of = dict(links)
    resolved: dict[int, int] = {}
    for i, _ in links:
        seen = {i}
        j = i
        while j in link_of:
            j = by_name.get(link_of[j], -1)
            if j < 0 or j in seen:
                break
            seen.add(j)
        target = entries[j] if j >= 0 and j not in link_of else None
        link = entries[i]
        assert link is not None
        if target is None or target.kind != "file":
            why = ("points to itself or loops" if j in seen else "has no target in the archive"
                   if target is None else f"points to a {target.kind}")
            log.warning("%s: hard link %r -> %r %s: not shown", archive, link.name, link_of[i], why)
            entries[i] = None
            continue
        resolved[i] = j
    counts: dict[int, int] = {}
    for j in resolved.values():
        counts[j] = counts.get(j, 1) + 1
    for i, j in resolved.items():
        target = entries[j]
        assert target is not None
        entries[i] = target._replace(name=entries[i].name, nlink=counts[j])  # type: ignore[union-attr]
    for j, n in counts.items():
        entries[j] = entries[j]._replace(nlink=n)  # type: ignore[union-attr]


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
    entries = list(entries)
    where = f"{archive}: " if archive else ""
    dirs: dict[str, Entry] = {}
    for e in entries:
        if e.kind == "dir":
            dirs.setdefault(e.name, e)  # the first of several directory entries
    mtime = max((e.mtime_ns for e in entries), default=0)
    for e in entries:
        parent = e.name.rpartition("/")[0]
        while parent and parent not in dirs:
            dirs[parent] = Entry(name=parent, kind="dir", size=0, mtime_ns=mtime, mode=0o555)
            parent = parent.rpartition("/")[0]
    last: dict[str, int] = {}
    for i, e in enumerate(entries):
        if e.kind != "dir":
            last[e.name] = i
    taken = set(dirs) | set(last)
    out: list[Entry] = list(dirs.values())
    for i, e in enumerate(entries):
        if e.kind == "dir":
            continue
        if e.name not in dirs and last[e.name] == i:
            out.append(e)
            continue
        n = 1
        while (renamed := _numbered(e.name, n)) in taken:
            n += 1
        taken.add(renamed)
        if e.name in dirs:
            log.warning("%sarchive has a file and a directory named %r: the file is %r", where,
                        e.name, renamed)
        else:
            log.warning("%sarchive has duplicate name %r: an earlier entry is %r", where, e.name,
                        renamed)
        out.append(e._replace(name=renamed))
    table = EntryTable.from_entries(out)
    return table, table.children


# -- persistence --------------------------------------------------------------------------------


def load_index(disk: DiskTier, name: str) -> EntryTable | None:
    if not disk.touch(name):
        return None
    try:
        doc = json.loads(disk.path(name).read_bytes())
        if doc.get("version") != INDEX_VERSION:
            return None
        return EntryTable.from_doc(doc)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        log.warning("disk cache: dropping unreadable index %s (%s)", name, exc)
        disk.remove(name)
        return None


def save_index(disk: DiskTier, name: str, entries: EntryTable | Iterable[Entry]) -> None:
    table = entries if isinstance(entries, EntryTable) else build_tree(entries)[0]
    data = json.dumps(table.to_doc(), separators=(",", ":")).encode()
    with contextlib.suppress(OSError):
        disk.write(name, [data], len(data))
