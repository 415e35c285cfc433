"""Archive layer: the central-directory index of one zip object and reads of its members.

The index is parsed once with Python's :mod:`zipfile` over a file-like view of the cached object
(one request for the tail, one for the central directory), cleaned (safe names, implied
directories) and persisted as JSON in the disk cache keyed by the object's identity.

Why not ``fsspec.implementations.zip.ZipFileSystem`` for member reads: it reads every member through
one ``zipfile.ZipFile`` whose shared file position sits behind one lock, so concurrent readers are
serialised and each member read is a decompression stream from the member's start. Stored members
(the zarr chunks) are plain byte ranges, so they are read here as ranges of the cached object, from
any number of threads at once; compressed members get their own ``zipfile.ZipExtFile`` stream per
open file, and big ones are decompressed once into a spill file for random access.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import lzma
import os
import stat
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

from .cache import BlockCache, DiskTier
from .errors import (
    ArchiveError,
    MemberEncrypted,
    MemberUnsupported,
    ObjectChanged,
    ZipmountError,
)
from .source import ObjectInfo, Source

log = logging.getLogger(__name__)

INDEX_VERSION = 1
SUPPORTED_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
# Members up to this size are fetched whole by the first read: zarr reads chunks whole.
WHOLE_MEMBER_MAX = 16 * 1024 * 1024
READAHEAD_MIN = 1024 * 1024
# What is in flight must cover the reader's consumption during one round trip: with 8 MiB a
# cold whole-array read at +60 ms per request waited on every batch (1.48 s; 1.03 s with 32).
READAHEAD_MAX = 32 * 1024 * 1024
# Compressed members at least this big get a spill file for non-sequential reads.
SPILL_MIN = 8 * 1024 * 1024
# What zipfile's decompression streams raise on corrupt data (bz2: OSError, lzma: LZMAError).
_CORRUPT_DATA = (zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError, lzma.LZMAError)
_LOCAL_HEADER = struct.Struct("<4s5HIIIHH")
_LOCAL_SLACK = 512  # local extra fields are often a little longer than the central ones
NAME_MAX = 255
SYMLINK_MAX = 4096


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


class CachedObject:
    """One version of a remote object read through the shared block cache."""

    def __init__(self, source: Source, obj: ObjectInfo, cache: BlockCache,
                 on_changed: Callable[[], None] | None = None) -> None:
        self.source = source
        self.obj = obj
        self.cache = cache
        self.key = obj.cache_key(source.location)
        self.on_changed = on_changed  # told when the server no longer has this version

    def _fetch(self, start: int, end: int) -> bytes:
        try:
            return self.source.read(self.obj, start, end)
        except ObjectChanged:
            if self.on_changed is not None:
                self.on_changed()
            raise

    def read(self, start: int, end: int) -> bytes:
        return self.cache.read(self.key, self.obj.size, start, end, self._fetch)

    @property
    def readahead_max(self) -> int:
        """How far ahead a reader may be fetched: READAHEAD_MAX, or an eighth of the memory
        cache if that is less (what is fetched ahead must not evict itself before it is read)."""
        return max(READAHEAD_MIN, min(READAHEAD_MAX, self.cache.memory.capacity // 8))

    def prefetch(self, start: int, end: int) -> None:
        self.cache.prefetch(self.key, self.obj.size, start, end, self._fetch)


class RemoteFile(io.RawIOBase):
    """A seekable, read-only file view of a :class:`CachedObject` (for zipfile)."""

    def __init__(self, cached: CachedObject,
                 observe: Callable[[int, int], None] | None = None) -> None:
        self.cached = cached
        self.pos = 0
        self.observe = observe

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.cached.obj.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, size: int = -1) -> bytes:
        end = self.cached.obj.size if size is None or size < 0 else self.pos + size
        if self.observe is not None:
            self.observe(self.pos, end)
        data = self.cached.read(self.pos, end)
        self.pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class Prefetcher:
    """Read-ahead driven by the locality of recent reads.

    When the last few reads all fall in a small region and cover a fair part of it, the reader
    is walking that region: the region and a window beyond it are fetched, in parallel requests,
    the window doubling (up to ``readahead_max``) each time the reader catches up with it. That
    covers a zarr client reading chunk after chunk of a stored archive — in archive order, or in
    the lexicographic order of a zip made from a directory (0.0, 0.1, 0.10, ...) — and ``cat``
    of a big member. A walker that jumps elsewhere is followed at once (zarr's next channel sits
    elsewhere in a zip of sorted names); a second jump before it walks on closes the window.
    Random chunk reads are spread out, so they cost no extra bytes.

    One instance watches the member opens of an archive; each open big member has its own for
    the reads inside it.
    """

    RECENT = 4  # reads considered
    SPAN = 8 * 1024 * 1024  # largest region they may spread over
    DENSITY = 8  # and they must cover at least 1/DENSITY of it

    def __init__(self, cached: CachedObject) -> None:
        self.cached = cached
        self._recent: list[tuple[int, int]] = []
        self._window = 0
        self._fetched = (0, 0)  # the region already asked for
        self._jumped = False  # followed a jump; not yet seen walking on
        self._lock = threading.Lock()

    def observe(self, start: int, end: int, limit: int) -> None:
        """Note a read of ``[start, end)``; prefetch if reads are local, never past ``limit``."""
        with self._lock:
            ahead = self._plan(start, end, limit)
        if ahead is not None:
            self.cached.prefetch(*ahead)

    def _plan(self, start: int, end: int, limit: int) -> tuple[int, int] | None:
        """The range to fetch ahead after this read, if any (called under the lock)."""
        done_low, done_high = self._fetched
        if self._window and not done_low <= start <= done_high + self.SPAN:
            if not self._jumped:
                # A reader that was walking a region jumped: most likely it walks on from
                # there (the next channel of a zarr array, whose chunks a zip of sorted names
                # keeps elsewhere). Follow at once instead of after RECENT more cold reads.
                self._jumped = True
                self._recent = [(start, end)]
                self._fetched = (start, min(limit, max(end, start + self._window)))
                return self._fetched
            self._window = 0  # jumped again before walking on: the reads are random now
        self._recent = [*self._recent[1 - self.RECENT:], (start, end)]
        if len(self._recent) < self.RECENT:
            return None
        low = min(s for s, _ in self._recent)
        high = max(e for _, e in self._recent)
        covered = sum(e - s for s, e in self._recent)
        if high - low > self.SPAN or covered * self.DENSITY < high - low:
            self._window = 0
            return None
        self._jumped = False
        self._window = self._window or READAHEAD_MIN
        if done_low <= low and done_high - high >= self._window // 2:
            return None
        # The reader caught up with what was fetched: look twice as far ahead as last time
        # (the window grows with what is consumed, up to its maximum).
        self._window = min(self.cached.readahead_max, self._window * 2)
        ahead_from = done_high if done_low <= low <= done_high else low
        ahead_to = min(limit, high + self._window)
        if ahead_from >= ahead_to:
            return None
        self._fetched = (min(low, done_low) if done_low <= low <= done_high else low, ahead_to)
        return ahead_from, ahead_to


class Archive:
    """The index of one archive version plus member reads."""

    def __init__(self, cached: CachedObject, entries: dict[str, Entry],
                 children: dict[str, list[str]], disk: DiskTier | None) -> None:
        self.cached = cached
        self.entries = entries
        self.children = children
        self.subdirs: dict[str, int] = dict.fromkeys(children, 0)  # for st_nlink
        for name, entry in entries.items():
            if entry.kind == "dir":
                self.subdirs[name.rpartition("/")[0]] += 1
        self.disk = disk
        self.prefetcher = Prefetcher(cached)
        self._data_offsets: dict[str, int] = {}
        self._verified: set[str] = set()
        self._spill_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls, cached: CachedObject, disk: DiskTier | None) -> Archive:
        """Load the persisted index for this object version, or read the central directory."""
        index_name = f"{cached.key}.index.json"
        entries = _load_index(disk, index_name) if disk is not None else None
        if entries is None:
            entries = read_central_directory(cached)
            if disk is not None:
                _save_index(disk, index_name, entries)
        by_name, children = build_tree(entries)
        return cls(cached, by_name, children, disk)

    # -- member reads ---------------------------------------------------------------------------

    def data_offset(self, entry: Entry) -> int:
        """Where the member's data starts: parses (and remembers) its local header.

        The request that fetches the header also covers the data of a small member, so a cold
        read of a zarr chunk costs one request.
        """
        offset = self._data_offsets.get(entry.name)
        if offset is not None:
            return offset
        if not 0 <= entry.header_offset < self.cached.obj.size:
            raise ArchiveError(f"{entry.name}: local header offset {entry.header_offset} is "
                               "outside the archive")
        header_end = (entry.header_offset + _LOCAL_HEADER.size + entry.raw_name_len
                      + entry.extra_len + _LOCAL_SLACK)
        if entry.compress_size <= WHOLE_MEMBER_MAX:
            header_end += entry.compress_size
        head = self.cached.read(entry.header_offset, header_end)
        if len(head) < _LOCAL_HEADER.size:
            raise ArchiveError(f"{entry.name}: truncated local header")
        sig, *_, name_len, extra_len = _LOCAL_HEADER.unpack_from(head)
        if sig != b"PK\x03\x04":
            raise ArchiveError(f"{entry.name}: bad local header signature")
        offset = entry.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        if offset + entry.compress_size > self.cached.obj.size:
            raise ArchiveError(f"{entry.name}: member data runs past the end of the archive")
        self._data_offsets[entry.name] = offset
        return offset

    def verify_stored(self, entry: Entry, start: int) -> None:
        """Check a small stored member's CRC-32 once (its whole range is one cached request)."""
        if entry.name in self._verified or entry.size > WHOLE_MEMBER_MAX:
            return
        if zlib.crc32(self.cached.read(start, start + entry.size)) != entry.crc:
            raise ArchiveError(f"{entry.name}: CRC-32 mismatch (corrupt member)")
        self._verified.add(entry.name)

    def check_readable(self, entry: Entry) -> None:
        """Raise the error an open of ``entry`` must fail with, if any."""
        if entry.encrypted:
            raise MemberEncrypted(f"{entry.name}: member is encrypted")
        if entry.method not in SUPPORTED_METHODS:
            raise MemberUnsupported(f"{entry.name}: unsupported compression method {entry.method}")

    def member_version(self, entry: Entry) -> str:
        """Names this member of this archive version (the object's ETag is in the key)."""
        return f"{self.cached.key}:{entry.header_offset}"

    def reader(self, entry: Entry) -> MemberReader:
        self.check_readable(entry)
        if entry.method == zipfile.ZIP_STORED:
            return StoredReader(self, entry)
        return CompressedReader(self, entry)

    def readlink(self, entry: Entry) -> str:
        reader = self.reader(entry)
        try:
            return reader.read(0, SYMLINK_MAX).decode("utf-8", "surrogateescape")
        finally:
            reader.close()

    def spill_path(self, entry: Entry) -> str | None:
        """A local file holding the decompressed member, made once; None if it cannot be."""
        if self.disk is None or entry.size > self.disk.capacity // 4:
            return None
        digest = hashlib.sha256(f"{entry.name}\0{entry.header_offset}".encode()).hexdigest()[:16]
        name = f"{self.cached.key}.{digest}.spill"
        with self._lock:
            lock = self._spill_locks.setdefault(name, threading.Lock())
        with lock:
            if not self.disk.touch(name):
                log.info("decompressing %s (%d bytes) into the disk cache for random access",
                         entry.name, entry.size)
                self.disk.write(name, _stream_chunks(self, entry), entry.size)
            return str(self.disk.path(name))


class MemberReader:
    """Reads of one member for one open file handle."""

    archive: Archive
    entry: Entry

    @property
    def version(self) -> str:
        return self.archive.member_version(self.entry)

    def read(self, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the handle holds."""


class StoredReader(MemberReader):
    """A stored member is a byte range of the archive: no stream, any thread, any offset."""

    def __init__(self, archive: Archive, entry: Entry) -> None:
        self.archive = archive
        self.entry = entry
        archive.prefetcher.observe(entry.header_offset,
                                   entry.header_offset + _LOCAL_HEADER.size + entry.raw_name_len
                                   + entry.extra_len + entry.compress_size, archive.cached.obj.size)
        self.start = archive.data_offset(entry)
        archive.verify_stored(entry, self.start)
        self.prefetcher = Prefetcher(archive.cached) if entry.size > WHOLE_MEMBER_MAX else None

    def read(self, offset: int, size: int) -> bytes:
        begin = self.start + min(offset, self.entry.size)
        end = self.start + min(offset + size, self.entry.size)
        if begin >= end:
            return b""
        if self.prefetcher is not None:
            self.prefetcher.observe(begin, end, self.start + self.entry.size)
        return self.archive.cached.read(begin, end)


class CompressedReader(MemberReader):
    """A decompression stream per open file; big members switch to a spill file on a seek."""

    def __init__(self, archive: Archive, entry: Entry) -> None:
        self.archive = archive
        self.entry = entry
        self.stream: zipfile.ZipExtFile | None = None
        self.pos = 0
        self.spill: int | None = None  # fd of the spill file

    def read(self, offset: int, size: int) -> bytes:
        if self.spill is not None:
            return os.pread(self.spill, size, offset)
        if offset != self.pos and self.entry.size >= SPILL_MIN:
            path = self.archive.spill_path(self.entry)
            if path is not None:
                self._close_stream()
                self.spill = os.open(path, os.O_RDONLY)
                return os.pread(self.spill, size, offset)
        if self.stream is None or offset < self.pos:
            self._close_stream()
            self.stream = _open_stream(self.archive, self.entry)
            self.pos = 0
        try:
            data = b""
            while self.pos < offset:  # forward skip: decompress and drop
                skipped = self.stream.read(min(offset - self.pos, 1 << 20))
                if not skipped:
                    break
                self.pos += len(skipped)
            else:
                data = self.stream.read(size)
        except _CORRUPT_DATA as exc:
            if isinstance(exc, ZipmountError):
                raise
            self._close_stream()
            raise ArchiveError(f"{self.entry.name}: {exc}") from None
        self.pos += len(data)
        if len(data) < size and self.pos < self.entry.size:
            # The stream ended (with a matching CRC) before the size the index declares.
            self._close_stream()
            raise ArchiveError(f"{self.entry.name}: data ends after {self.pos} bytes, "
                               f"{self.entry.size} declared")
        return data

    def _close_stream(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def close(self) -> None:
        self._close_stream()
        if self.spill is not None:
            os.close(self.spill)
            self.spill = None


def _open_stream(archive: Archive, entry: Entry) -> zipfile.ZipExtFile:
    start = archive.data_offset(entry)
    limit = start + entry.compress_size
    prefetcher = Prefetcher(archive.cached)
    raw = RemoteFile(archive.cached, lambda a, b: prefetcher.observe(a, min(b, limit), limit))
    raw.seek(start)
    info = zipfile.ZipInfo(entry.name)
    info.compress_type = entry.method
    info.compress_size = entry.compress_size
    info.file_size = entry.size
    info.CRC = entry.crc
    return zipfile.ZipExtFile(raw, "r", info)


def _stream_chunks(archive: Archive, entry: Entry):  # type: ignore[no-untyped-def]
    stream = _open_stream(archive, entry)
    total = 0
    try:
        while chunk := stream.read(1 << 20):
            total += len(chunk)
            yield chunk
    except _CORRUPT_DATA as exc:
        raise ArchiveError(f"{entry.name}: {exc}") from None
    finally:
        stream.close()
    if total != entry.size:
        raise ArchiveError(f"{entry.name}: data ends after {total} bytes, {entry.size} declared")


# -- the index ------------------------------------------------------------------------------------


def read_central_directory(cached: CachedObject) -> list[Entry]:
    """Parse the central directory of ``cached`` into cleaned entries (two requests at most)."""
    size = cached.obj.size
    if size < 22:
        raise ArchiveError(f"{cached.obj.path}: not a zip archive ({size} bytes)")
    cached.read(max(0, size - 65536 - 22), size)  # the tail holds the end records: one request
    try:
        with zipfile.ZipFile(RemoteFile(cached)) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, struct.error,
            UnicodeDecodeError, NotImplementedError) as exc:
        raise ArchiveError(f"{cached.obj.path}: not a readable zip archive ({exc})") from None
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


def _load_index(disk: DiskTier, name: str) -> list[Entry] | None:
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


def _save_index(disk: DiskTier, name: str, entries: list[Entry]) -> None:
    doc = {"version": INDEX_VERSION, "entries": [e.to_list() for e in entries]}
    data = json.dumps(doc, separators=(",", ":")).encode()
    with contextlib.suppress(OSError):
        disk.write(name, [data], len(data))
