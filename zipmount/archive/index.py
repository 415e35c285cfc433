"""The index of one archive: its central directory parsed into cleaned entries (pure), persisted.

The central directory is parsed with Python's :mod:`zipfile` over a file-like view of the cached
object (one request for the tail, one for the central directory), then cleaned (safe names,
implied directories) and persisted as JSON in the file store, keyed by the object's identity.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import stat
import struct
import time
import zipfile
import zlib
from typing import IO, Any, NamedTuple

from ..cache import DiskTier
from ..errors import ArchiveError

log = logging.getLogger(__name__)

INDEX_VERSION = 1
NAME_MAX = 255


class Entry(NamedTuple):
    """One file, directory or symlink of an archive, as the mount shows it.

    A named tuple, not a frozen dataclass: building the 10k entries of a persisted index takes
    half the time (9 ms instead of 17 ms), and each entry is smaller.
    """

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

    def to_list(self) -> list[Any]:
        return list(self)

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & 0x1)



def read_central_directory(file: IO[bytes], size: int, name: str) -> list[Entry]:
    """Parse the central directory of the zip ``file`` (``size`` bytes, called ``name`` in
    errors) into cleaned entries."""
    if size < 22:
        raise ArchiveError(f"{name}: not a zip archive ({size} bytes)")
    try:
        with zipfile.ZipFile(file) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, struct.error,
            UnicodeDecodeError, NotImplementedError) as exc:
        raise ArchiveError(f"{name}: not a readable zip archive ({exc})") from None
    return [e for e in map(_entry_from_info, infos) if e is not None]


def _entry_from_info(info: zipfile.ZipInfo) -> Entry | None:
    name = clean_name(_unicode_path(info) or info.filename)
    if name is None:
        return None
    unix_mode = info.external_attr >> 16
    is_dir = info.filename.endswith(("/", "\\")) or (info.create_system == 3 and stat.S_ISDIR(unix_mode))
    is_link = info.create_system == 3 and stat.S_ISLNK(unix_mode)
    executable = info.create_system == 3 and bool(unix_mode & 0o111)
    kind = "dir" if is_dir else "link" if is_link else "file"
    raw_name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437",
                                         "surrogateescape")
    return Entry(
        name=name, kind=kind, size=0 if is_dir else info.file_size,
        mtime_ns=_mtime_ns(info), mode=0o555 if is_dir or executable or is_link else 0o444,
        compress_size=info.compress_size, method=info.compress_type,
        header_offset=info.header_offset, crc=info.CRC, flags=info.flag_bits,
        raw_name_len=len(raw_name), extra_len=len(info.extra),
    )


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


def _unicode_path(info: zipfile.ZipInfo) -> str | None:
    """The Info-ZIP Unicode Path extra field (0x7075), if present and matching the raw name."""
    extra = info.extra
    i = 0
    while i + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, i)
        body = extra[i + 4: i + 4 + length]
        if tag == 0x7075 and len(body) >= 5 and body[0] == 1:
            raw = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437",
                                            "surrogateescape")
            if struct.unpack_from("<I", body, 1)[0] == zlib.crc32(raw):
                return body[5:].decode("utf-8", "replace")
        i += 4 + length
    return None


def _mtime_ns(info: zipfile.ZipInfo) -> int:
    """UTC mtime from the extended-timestamp extra field (0x5455), else the DOS time as local."""
    extra = info.extra
    i = 0
    while i + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, i)
        if tag == 0x5455 and length >= 5 and extra[i + 4] & 1:
            return struct.unpack_from("<i", extra, i + 5)[0] * 10**9
        i += 4 + length
    try:
        return int(time.mktime((*info.date_time, 0, 0, -1))) * 10**9
    except (OverflowError, ValueError):
        return 0


def build_tree(entries: list[Entry]) -> tuple[dict[str, Entry], dict[str, list[str]]]:
    """Entries by path (implied directories added) and each directory's sorted child names.

    Duplicate names: the last entry wins, as with ``unzip -o``. A file whose name is also a
    directory's is dropped in favour of the directory. Both are logged.
    """
    by_name: dict[str, Entry] = {}
    for entry in entries:
        old = by_name.get(entry.name)
        if old is not None:
            if old.kind == "dir" and entry.kind == "dir":
                continue
            log.warning("archive has duplicate name %r: the last entry wins", entry.name)
        by_name[entry.name] = entry
    mtime = max((e.mtime_ns for e in entries), default=0)
    for name in list(by_name):
        parent = name.rpartition("/")[0]
        while parent:
            existing = by_name.get(parent)
            if existing is not None and existing.kind == "dir":
                break
            if existing is not None:
                log.warning("archive has a file and a directory named %r: showing the directory",
                            parent)
            by_name[parent] = Entry(name=parent, kind="dir", size=0, mtime_ns=mtime, mode=0o555)
            parent = parent.rpartition("/")[0]
    children: dict[str, list[str]] = {"": []}
    for name, entry in by_name.items():
        if entry.kind == "dir":
            children.setdefault(name, [])
    for name in by_name:
        parent, _, base = name.rpartition("/")
        children[parent].append(base)
    for names in children.values():
        names.sort()
    return by_name, children


def load_index(disk: DiskTier, name: str) -> list[Entry] | None:
    if not disk.touch(name):
        return None
    try:
        doc = json.loads(disk.path(name).read_bytes())
        if doc.get("version") != INDEX_VERSION:
            return None
        return [Entry(*row) for row in doc["entries"]]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("disk cache: dropping unreadable index %s (%s)", name, exc)
        disk.remove(name)
        return None


def save_index(disk: DiskTier, name: str, entries: list[Entry]) -> None:
    doc = {"version": INDEX_VERSION, "entries": [e.to_list() for e in entries]}
    data = json.dumps(doc, separators=(",", ":")).encode()
    with contextlib.suppress(OSError):
        disk.write(name, [data], len(data))
