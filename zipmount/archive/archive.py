"""One archive version: its index plus member reads through the block cache.

Why not ``fsspec.implementations.zip.ZipFileSystem`` for member reads: it reads every member through
one ``zipfile.ZipFile`` whose shared file position sits behind one lock, so concurrent readers are
serialised and each member read is a decompression stream from the member's start. Stored members
(the zarr chunks) are plain byte ranges, so they are read here as ranges of the cached object, from
any number of threads at once; compressed members get their own decompression stream per open
file, and big ones are decompressed once into a spill file for random access.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import zipfile
import zlib

from ..cache import DiskTier
from ..errors import ArchiveError, MemberEncrypted, MemberUnsupported
from .index import Entry, build_tree, load_index, read_central_directory, save_index
from .members import (
    LOCAL_HEADER,
    WHOLE_MEMBER_MAX,
    CompressedReader,
    MemberReader,
    StoredReader,
    stream_chunks,
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
                self.disk.write(name, stream_chunks(self, entry), entry.size)
            return str(self.disk.path(name))

