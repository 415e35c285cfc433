"""One archive version: its index plus member reads through the block cache.

Why not ``fsspec.implementations.zip.ZipFileSystem`` for member reads: it reads every member through
one ``zipfile.ZipFile`` whose shared file position sits behind one lock, so concurrent readers are
serialised and each member read is a decompression stream from the member's start. Stored members
(the zarr chunks) are plain byte ranges, so they are read here as ranges of the cached object, from
any number of threads at once; compressed members get their own bounded decompression stream per
open file with shared checkpoints (:mod:`.decompress`), and big bzip2/LZMA ones are decompressed
once into a spill file (:mod:`.spill`) for random access. Readers are given a view of their
member (:mod:`.view`), never the archive.
"""

from __future__ import annotations

import bisect
import logging
import threading
import zipfile
from collections.abc import Mapping

from ..cache import DiskTier
from ..errors import ArchiveError, MemberEncrypted, MemberUnsupported
from .decompress import Decoding, crc32
from .index.central import read_central_directory
from .index.naming import build_tree
from .index.store import load_index, save_index
from .index.table import Entry, EntryTable
from .layout import WHOLE_MEMBER_MAX, member_span_end, read_data_start
from .members import CompressedReader, MemberReader, StoredReader
from .readahead import Prefetcher, readahead_max
from .remote import CachedObject
from .spill import SpillFiles
from .view import Health, MemberView

log = logging.getLogger(__name__)

SUPPORTED_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
SYMLINK_MAX = 4096
# Estimated bytes (tracemalloc, tests/test_bounds.py) of an open archive beyond its entry table:
_ARCHIVE_BYTES = 4096  # the object, its cached object, prefetcher, locks and empty dicts
_DIR_BYTES = 64  # a directory's st_nlink count: an int and a dict slot, beyond its name
_OFFSET_BYTES = 64  # a member's data offset: an int and a dict slot, beyond its name
_REMEMBERED_BYTES = 32  # a member in a set or dict besides (its name shared with the offsets)
_SPILL_BYTES = 256  # a spill file's name, lock and set slots


class Archive:
    """The index of one archive version plus member reads."""

    def __init__(self, cached: CachedObject, entries: EntryTable,
                 children: Mapping[str, list[str]], disk: DiskTier | None,
                 decoding: Decoding | None = None) -> None:
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
        # Shared with every archive of the engine; None (tools, tests): this archive's own.
        self.decoding = decoding if decoding is not None else Decoding()
        self.spills = SpillFiles(disk, self.decoding.budget) if disk is not None else None
        self.prefetcher = Prefetcher(cached, readahead_max(cached.cache.memory.capacity))
        self.health = Health()
        self._data_offsets: dict[str, int] = {}
        self._verified: set[str] = set()
        self._header_offsets: list[int] | None = None
        self._lock = threading.Lock()

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls, cached: CachedObject, disk: DiskTier | None,
             decoding: Decoding | None = None) -> Archive:
        """Load the persisted index for this object version, or read the central directory."""
        index_name = f"{cached.key}.index.json"
        entries = load_index(disk, index_name) if disk is not None else None
        if entries is None:
            entries = read_central_directory(cached.read, cached.obj.size, cached.obj.path)
            if disk is not None:
                save_index(disk, index_name, entries)
        by_name, children = build_tree(entries)
        return cls(cached, by_name, children, disk, decoding)

    def memory_bytes(self) -> int:
        """What this archive holds in memory, estimated: its index and what its member reads
        remembered (charged to the engine's cap on loaded indexes, zipmount/tree/indexes.py)."""
        name = self.entries.name_bytes()
        spills = self.spills.remembered() if self.spills is not None else 0
        offsets = self._header_offsets
        return (_ARCHIVE_BYTES + self.entries.memory_bytes()
                + len(self.subdirs) * (_DIR_BYTES + name)
                + len(self._data_offsets) * (_OFFSET_BYTES + name)
                + (len(self._verified) + len(self.health)) * _REMEMBERED_BYTES
                + spills * _SPILL_BYTES + (len(offsets) * 40 if offsets else 0))

    # -- member reads ---------------------------------------------------------------------------

    def data_offset(self, entry: Entry) -> int:
        """Where the member's data starts: parses (and remembers) its local header."""
        offset = self._data_offsets.get(entry.name)
        if offset is None:
            offset = self._data_offsets[entry.name] = read_data_start(self.cached, entry,
                                                                      self._data_limit)
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
        return self.entries.cd_start

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
        """Remember that ``entry`` is corrupt (see :class:`~.view.Health`)."""
        self.health.mark_corrupt(entry, exc)

    def check_intact(self, entry: Entry) -> None:
        """Raise the error found earlier in ``entry``'s data, if any."""
        self.health.check_intact(entry)

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

    def view(self, entry: Entry) -> MemberView:
        """What a reader of ``entry`` needs to know (parses its local header once)."""
        return MemberView(self.cached, entry, self.data_offset(entry), self.member_version(entry),
                          self.health)

    def reader(self, entry: Entry) -> MemberReader:
        """A reader of ``entry`` for one open file handle."""
        self.check_readable(entry)
        if entry.method != zipfile.ZIP_STORED:
            return CompressedReader(self.view(entry), self.decoding, self.spills)
        if entry.compress_size != entry.size:
            raise ArchiveError(f"{entry.name}: stored member declares {entry.size} bytes but "
                               f"holds {entry.compress_size}")
        # Member opens of an archive are watched too: a zarr client walking chunk after chunk.
        self.prefetcher.observe(entry.header_offset, member_span_end(entry), self.cached.obj.size)
        view = self.view(entry)
        self.verify_stored(entry, view.data_start)
        return StoredReader(view)

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
