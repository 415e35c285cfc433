"""One archive version: its index plus member reads through the block cache.

Why not ``fsspec.implementations.zip.ZipFileSystem`` for member reads: it reads every member through
one ``zipfile.ZipFile`` whose shared file position sits behind one lock, so concurrent readers are
serialised and each member read is a decompression stream from the member's start. Stored members
(the zarr chunks) are plain byte ranges, so they are read here as ranges of the cached object, from
any number of threads at once; compressed members get their own bounded decompression stream per
open file with shared checkpoints (:mod:`.decompress`), and big bzip2/LZMA ones are decompressed
once into a spill file for random access.

A member's data must end before the next local header (or, for the last member, the central
directory): a lying size is EIO, never a neighbour's bytes.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import struct
import threading
import zipfile

from ..cache import DiskTier
from ..errors import ArchiveError, MemberEncrypted, MemberUnsupported
from .decompress import crc32, member_chunks
from .index.central import read_central_directory
from .index.naming import build_tree
from .index.store import load_index, save_index
from .index.table import Entry
from .members import (
    LOCAL_HEADER,
    WHOLE_MEMBER_MAX,
    CompressedReader,
    MemberReader,
    StoredReader,
)
from .readahead import Prefetcher
from .remote import CachedObject, RemoteFile

log = logging.getLogger(__name__)

SUPPORTED_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_LOCAL_SLACK = 512  # local extra fields are often a little longer than the central ones
SYMLINK_MAX = 4096


class Archive:
    """The index of one archive version plus member reads."""

    def __init__(self, cached: CachedObject, entries: dict[str, Entry],
                 children: dict[str, list[str]], disk: DiskTier | None) -> None:
        self.cached = cached
        self.entries = entries
        self.children = children
        # Subdirectories per directory, for st_nlink: the directories are the keys of
        # ``children`` (walking the entries would build an Entry for each of them).
        self.subdirs: dict[str, int] = dict.fromkeys(children, 0)
        for name in children:
            if name:
                self.subdirs[name.rpartition("/")[0]] += 1
        self.disk = disk
        self.prefetcher = Prefetcher(cached)
        self._data_offsets: dict[str, int] = {}
        self._verified: set[str] = set()
        self._corrupt: dict[str, str] = {}  # member -> why: every later read of it fails too
        self._spill_locks: dict[str, threading.Lock] = {}
        self._spills_checked: set[str] = set()  # spill files known good in this process
        self._spills_failed: set[str] = set()  # could not be written: stream instead
        self._header_offsets: list[int] | None = None
        self._cd_start: int | None = None
        self._cd_looked_for = False
        self._lock = threading.Lock()

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls, cached: CachedObject, disk: DiskTier | None) -> Archive:
        """Load the persisted index for this object version, or read the central directory."""
        index_name = f"{cached.key}.index.json"
        entries = load_index(disk, index_name) if disk is not None else None
        if entries is None:
            size = cached.obj.size
            cached.read(max(0, size - 65536 - 22), size)  # the end records: one request
            entries = read_central_directory(RemoteFile(cached), size, cached.obj.path)
            if disk is not None:
                save_index(disk, index_name, entries)
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
        header_end = (entry.header_offset + LOCAL_HEADER.size + entry.raw_name_len
                      + entry.extra_len + _LOCAL_SLACK)
        if entry.compress_size <= WHOLE_MEMBER_MAX:
            header_end += entry.compress_size
        head = self.cached.read(entry.header_offset, header_end)
        if len(head) < LOCAL_HEADER.size:
            raise ArchiveError(f"{entry.name}: truncated local header")
        sig, *_, name_len, extra_len = LOCAL_HEADER.unpack_from(head)
        if sig != b"PK\x03\x04":
            raise ArchiveError(f"{entry.name}: bad local header signature")
        offset = entry.header_offset + LOCAL_HEADER.size + name_len + extra_len
        if offset + entry.compress_size > self.cached.obj.size:
            raise ArchiveError(f"{entry.name}: member data runs past the end of the archive")
        # The index dropped members whose name and data run over the next local header; only a
        # local header longer than that (its extra field) can still make the data run over.
        limit = self._data_limit(entry) if name_len + extra_len > entry.raw_name_len else None
        if limit is not None and offset + entry.compress_size > limit:
            raise ArchiveError(f"{entry.name}: member data ({entry.compress_size} bytes declared) "
                               "runs into the next member or the central directory")
        self._data_offsets[entry.name] = offset
        return offset

    def _data_limit(self, entry: Entry) -> int | None:
        """Where the next local header after ``entry``'s starts, else the central directory."""
        with self._lock:
            if self._header_offsets is None:  # once per archive, at the first member read
                self._header_offsets = sorted({e.header_offset for e in self.entries.values()})
            offsets = self._header_offsets
        i = bisect.bisect_right(offsets, entry.header_offset)
        if i < len(offsets):
            return offsets[i]
        if not self._cd_looked_for:
            self._cd_start = self._find_cd_start()
            self._cd_looked_for = True
        return self._cd_start

    def _find_cd_start(self) -> int | None:
        """Where the central directory starts: its end record's position minus its size (as
        zipfile computes it, so that data prepended to the archive is allowed for)."""
        size = self.cached.obj.size
        base = max(0, size - 65536 - 22)
        tail = self.cached.read(base, size)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + 22 > len(tail):
            return None
        cd_size = struct.unpack_from("<I", tail, at + 12)[0]
        end_record = base + at
        if at >= 76 and tail[at - 20: at - 16] == b"PK\x06\x07" \
                and tail[at - 76: at - 72] == b"PK\x06\x06":  # zip64: its end record
            cd_size = struct.unpack_from("<Q", tail, at - 76 + 40)[0]
            end_record = base + at - 76
        start = end_record - cd_size
        return start if start >= 0 else None

    def verify_stored(self, entry: Entry, start: int) -> None:
        """Check a small stored member's CRC-32 once (its whole range is one cached request)."""
        if entry.name in self._verified or entry.size > WHOLE_MEMBER_MAX:
            return
        if crc32(self.cached.read(start, start + entry.size)) != entry.crc:
            exc = ArchiveError(f"{entry.name}: CRC-32 mismatch (corrupt member)")
            self.mark_corrupt(entry, exc)
            raise exc
        self._verified.add(entry.name)

    def mark_corrupt(self, entry: Entry, exc: ArchiveError) -> None:
        """Remember that ``entry`` is corrupt: the kernel retries a failed read page by page,
        and a retry must not be served what the failed read refused."""
        self._corrupt[entry.name] = str(exc)

    def check_intact(self, entry: Entry) -> None:
        """Raise the error found earlier in ``entry``'s data, if any."""
        why = self._corrupt.get(entry.name)
        if why is not None:
            raise ArchiveError(why)

    def check_readable(self, entry: Entry) -> None:
        """Raise the error an open of ``entry`` must fail with, if any."""
        self.check_intact(entry)
        if entry.encrypted:
            raise MemberEncrypted(f"{entry.name}: member is encrypted")
        if entry.method not in SUPPORTED_METHODS:
            raise MemberUnsupported(f"{entry.name}: unsupported compression method {entry.method}")

    def member_version(self, entry: Entry) -> str:
        """Names this member of this archive version (the object's ETag is in the key)."""
        return f"{self.cached.key}:{entry.header_offset}"

    def reader(self, entry: Entry) -> MemberReader:
        """A reader of ``entry`` for one open file handle."""
        self.check_readable(entry)
        if entry.method == zipfile.ZIP_STORED:
            return StoredReader(self, entry)
        return CompressedReader(self, entry)

    def readlink(self, entry: Entry) -> str:
        """The target of a symlink entry: from the PKWARE unix field, else the member's data."""
        if entry.target:
            return entry.target
        if entry.size > SYMLINK_MAX:
            raise ArchiveError(f"{entry.name}: symlink target of {entry.size} bytes")
        reader = self.reader(entry)
        try:
            return reader.read(0, entry.size).decode("utf-8", "surrogateescape")
        finally:
            reader.close()

    def _spill_name(self, entry: Entry) -> str:
        digest = hashlib.sha256(f"{entry.name}\0{entry.header_offset}".encode()).hexdigest()[:16]
        return f"{self.cached.key}.{digest}.spill"

    def spill_path(self, entry: Entry) -> str | None:
        """A local file holding the decompressed member, made once; None if it cannot be.

        A spill file found from an earlier run is checked (size and CRC-32) before its first
        use; one that fails is made again. Write failures (no space, read-only, permissions)
        are logged and the member is streamed from then on: they never reach a read.
        """
        if self.disk is None or entry.size > self.disk.capacity // 4:
            return None
        name = self._spill_name(entry)
        with self._lock:
            lock = self._spill_locks.setdefault(name, threading.Lock())
        with lock:
            if name in self._spills_failed:
                return None
            path = self.disk.path(name)
            if self.disk.touch(name) and name not in self._spills_checked:
                if self._spill_intact(entry, str(path)):
                    self._spills_checked.add(name)
                else:
                    self.disk.remove(name)
            if not self.disk.touch(name):
                log.info("decompressing %s (%d bytes) into the disk cache for random access",
                         entry.name, entry.size)
                try:
                    self.disk.write(name, member_chunks(self.cached, entry, self.data_offset(entry)),
                                    entry.size, overwrite=False)
                except OSError as exc:
                    log.warning("cannot write the spill file of %s (%s): decompressing on "
                                "each read instead", entry.name, exc)
                    self._spills_failed.add(name)
                    return None
                self._spills_checked.add(name)
            return str(path)

    def forget_spill(self, entry: Entry) -> None:
        """Drop a spill file found missing or damaged, so that the next use makes it again."""
        name = self._spill_name(entry)
        self._spills_checked.discard(name)
        if self.disk is not None:
            self.disk.remove(name)

    @staticmethod
    def _spill_intact(entry: Entry, path: str) -> bool:
        try:
            with open(path, "rb", buffering=0) as f:
                if os.fstat(f.fileno()).st_size != entry.size:
                    log.warning("spill file of %s has the wrong size: making it again", entry.name)
                    return False
                crc = 0
                while chunk := f.read(1 << 20):
                    crc = crc32(chunk, crc)
        except OSError:
            return False
        if crc != entry.crc:
            log.warning("spill file of %s is corrupt (CRC-32): making it again", entry.name)
            return False
        return True
