"""Member reads: stored members as byte ranges, compressed ones as decompression streams."""

from __future__ import annotations

import lzma
import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import ArchiveError, ZipmountError
from .index import Entry
from .readahead import Prefetcher
from .remote import RemoteFile

if TYPE_CHECKING:
    from .archive import Archive

# Members up to this size are fetched whole by the first read: zarr reads chunks whole.
WHOLE_MEMBER_MAX = 16 * 1024 * 1024
# Compressed members at least this big get a spill file for non-sequential reads.
SPILL_MIN = 8 * 1024 * 1024
# What zipfile's decompression streams raise on corrupt data (bz2: OSError, lzma: LZMAError).
CORRUPT_DATA = (zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError, lzma.LZMAError)
LOCAL_HEADER = struct.Struct("<4s5HIIIHH")


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
                                   entry.header_offset + LOCAL_HEADER.size + entry.raw_name_len
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
            self.stream = open_stream(self.archive, self.entry)
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
        except CORRUPT_DATA as exc:
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


def open_stream(archive: Archive, entry: Entry) -> zipfile.ZipExtFile:
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


def stream_chunks(archive: Archive, entry: Entry) -> Iterator[bytes]:
    stream = open_stream(archive, entry)
    total = 0
    try:
        while chunk := stream.read(1 << 20):
            total += len(chunk)
            yield chunk
    except CORRUPT_DATA as exc:
        raise ArchiveError(f"{entry.name}: {exc}") from None
    finally:
        stream.close()
    if total != entry.size:
        raise ArchiveError(f"{entry.name}: data ends after {total} bytes, {entry.size} declared")

