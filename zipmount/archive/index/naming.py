"""The central directory's records made into the index's entries (pure: no I/O).

Names decoded (:mod:`.names`) and cleaned, unix modes read, fifos, devices and sockets skipped,
hard links resolved, overlapping members dropped, implied directories added and duplicate names
numbered: the rules are listed in :mod:`zipmount.archive.index`.
"""

from __future__ import annotations

import hashlib
import logging
import stat
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .names import choose_encoding, decode
from .table import DIR, DROPPED, FIELDS, FILE, KINDS, LINK, Children, Entry, EntryTable, Rows

if TYPE_CHECKING:
    from .central import Records

log = logging.getLogger(__name__)

NAME_MAX = 255
_LOCAL_HEADER_SIZE = 30
_UNIX = 3
# "Made by" systems whose names may use backslashes as separators: MS-DOS (FAT), OS/2 (HPFS),
# Windows NTFS (10 in PKWARE's numbering, 11 in Info-ZIP's) and VFAT.
_DOS_SYSTEMS = frozenset({0, 6, 10, 11, 14})
_HARD_LINK = 0x800  # PKWARE: in the low (DOS) half of the external attributes
_DOS_READ_ONLY = 0x01
_UNIX_TYPES = {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK,
               stat.S_IFSOCK}
_SHOWN_MAX = 5  # names quoted in one log line


def entries_of(records: Records, cd_start: int, archive: str) -> EntryTable:
    """The index of an archive's central directory ``records`` (the directory starts at
    ``cd_start``; ``archive`` names it in logs)."""
    rows = _rows(records, cd_start, archive)
    del records  # before the table is built: the peak is one of the two, not both
    return _build(rows, archive, cd_start)


def _rows(rec: Records, cd_start: int, archive: str) -> Rows:
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
    rows = Rows()
    links: dict[int, str] = {}  # row of a hard link -> cleaned target name
    specials: list[str] = []
    for i, raw_name in enumerate(rec.raw_names):
        utf8 = rec.flags[i] & 0x800
        raw = raw_name.decode("utf-8", "replace") if utf8 else decode(raw_name, encoding)
        # PKZIP writes "made by DOS" with a unix mode in the high half (as mount-zip reads it)
        unix = rec.create_system[i] == _UNIX or (
            rec.create_system[i] == 0 and stat.S_IFMT(rec.external_attr[i] >> 16) in _UNIX_TYPES)
        dos = not unix and rec.create_system[i] in _DOS_SYSTEMS
        name = clean_name(rec.unicode_path.get(i) or raw, backslash_separates=dos)
        if name is None or i in overlapping:
            continue
        mode = rec.external_attr[i] >> 16 if unix else 0
        fmt = stat.S_IFMT(mode)
        is_dir = raw.endswith(("/", "\\") if dos else "/") or (unix and fmt == stat.S_IFDIR)
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
        kind = DIR if is_dir else LINK if is_link else FILE
        perm = _permissions(mode if unix else 0, rec.external_attr[i], is_dir)
        row = rows.append(name, kind, (
            0 if is_dir else size, _mtime_ns(rec, i), perm, rec.compress_size[i], rec.method[i],
            rec.header_offset[i], rec.crc[i], rec.flags[i], rec.name_len[i], rec.extra_len[i], 1),
            target)
        if kind != DIR and unix and rec.external_attr[i] & _HARD_LINK and unix_data:
            links[row] = clean_name(decode(unix_data, encoding), backslash_separates=False) or ""
    if specials:
        _log_names(logging.INFO, f"{archive}: skipped {len(specials)} fifo, device or socket "
                   "entries", specials)
    _resolve_hard_links(rows, links, archive)
    return rows


def _permissions(unix_mode: int, external_attr: int, is_dir: bool) -> int:
    """The stored unix permission bits (setuid and setgid dropped); without a unix mode (DOS-made,
    or zero as ``zipfile.ZipInfo`` leaves it), what ``unzip`` gives under umask 022."""
    if unix_mode:
        return unix_mode & 0o1777
    if is_dir:
        return 0o755
    return 0o444 if external_attr & _DOS_READ_ONLY else 0o644


def _mtime_ns(rec: Records, i: int) -> int:
    mtime = rec.mtime_ns.get(i)
    if mtime is not None:
        return mtime
    d, t = rec.dos[i] >> 16, rec.dos[i] & 0xFFFF
    date_time = ((d >> 9) + 1980, (d >> 5) & 0xF, d & 0x1F, t >> 11, (t >> 5) & 0x3F, (t & 0x1F) * 2)
    try:
        return int(time.mktime((*date_time, 0, 0, -1))) * 10**9
    except (OverflowError, ValueError):
        return 0


def _overlapping(rec: Records, cd_start: int) -> set[int]:
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


def _resolve_hard_links(rows: Rows, links: dict[int, str], archive: str) -> None:
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
        if rows.kinds[i] == LINK:
            continue  # PKZIP flags a symlink with several links too: its field is its target
        broken += 1
        if broken <= _SHOWN_MAX:
            why = ("has no target in the archive" if j == missing else
                   "points to itself or loops" if j == loop else f"points to a {KINDS[rows.kinds[j]]}")
            log.warning("%s: hard link %r -> %r %s: not shown", archive, rows.names[i], links[i], why)
        rows.kinds[i] = DROPPED  # dropped by _build
    if broken > _SHOWN_MAX:
        log.warning("%s: %d more hard links without a usable target: not shown", archive,
                    broken - _SHOWN_MAX)
    nlink = FIELDS.index("nlink")
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


def clean_name(name: str, *, backslash_separates: bool = True) -> str | None:
    """A safe relative path for an archive name: no ``..``, no absolute paths, no control chars.

    ``backslash_separates``: backslashes count as separators (names written on DOS or Windows);
    otherwise a backslash is an ordinary character, as on unix. ``.``/``..``/empty components
    are dropped (so the path can never leave the mount); control characters become ``_``;
    components longer than NAME_MAX bytes are shortened with a hash suffix so that they stay
    unique and reachable.
    """
    parts = []
    for part in (name.replace("\\", "/") if backslash_separates else name).split("/"):
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
    directory's sorted child names (duplicates: see :mod:`zipmount.archive.index`)."""
    if isinstance(entries, EntryTable):
        return entries, entries.children
    rows = Rows()
    for e in entries:
        rows.append(e.name, KINDS.index(e.kind), (getattr(e, f) for f in FIELDS), e.target)
    table = _build(rows, archive)
    return table, table.children


def _build(rows: Rows, archive: str, cd_start: int | None = None) -> EntryTable:
    """The table of ``rows``: implied directories added, duplicate names numbered."""
    where = f"{archive}: " if archive else ""
    names, kinds = rows.names, rows.kinds
    dirs: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, name in enumerate(names):
        if kinds[i] == DIR:
            dirs.setdefault(name, i)  # the first of several directory entries
        elif kinds[i] != DROPPED:
            last[name] = i
    mtimes = rows.columns[FIELDS.index("mtime_ns")]
    mtime = max(mtimes) if mtimes else 0
    for i in range(len(names)):
        if kinds[i] == DROPPED:
            continue
        parent = names[i].rpartition("/")[0]
        while parent and parent not in dirs:
            dirs[parent] = rows.append(parent, DIR, (0, mtime, 0o755, 0, 0, 0, 0, 0, 0, 0, 1))
            parent = parent.rpartition("/")[0]
    taken = set(dirs) | set(last)
    next_number: dict[str, int] = {}  # so that k duplicates of a name cost O(k), not O(k²)
    renamed_count = 0
    kept: list[int] = list(dirs.values())
    for i in range(len(names)):
        if kinds[i] in (DIR, DROPPED):
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
    del taken, last, dirs, next_number  # before the table is built
    return rows.table(kept, cd_start)
