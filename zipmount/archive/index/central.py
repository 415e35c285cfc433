"""The central directory of a zip, read record by record into the index.

Read here, not with :mod:`zipfile`: zipfile reads the whole directory at once and keeps a
``ZipInfo`` of ~0.5 KB per entry, and it hides the raw name bytes that choosing a code page needs.
The records are reduced to the few values the index keeps as they are read (peak memory: one
piece of the directory plus the reduced records), and the directory's size is checked against
:data:`CD_MAX_BYTES` before any of it is read.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable, Iterator

from ...errors import ArchiveError
from . import extra as extras
from .naming import entries_of
from .table import I64, EntryTable

MAX_ENTRIES = 1_000_000
# 46 fixed bytes per record plus 64 MiB of names, extra fields and comments for all of them.
CD_MAX_BYTES = MAX_ENTRIES * 46 + 64 * 2**20
TAIL_MAX = 1 << 20
_READ_PIECE = 4 << 20  # of a central directory bigger than the tail: one read up to this size
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")
_END64 = struct.Struct("<4sQ2H2L4Q")
_END64_LOCATOR = struct.Struct("<4sLQL")
_TAIL_MIN = _END.size + 0xFFFF  # an end record followed by the longest comment

Read = Callable[[int, int], bytes]  # the object's bytes from start to end


class Records:
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


def read_central_directory(read: Read, size: int, name: str) -> EntryTable:
    """Parse the central directory of the zip whose bytes ``read(start, end)`` returns (``size``
    bytes, called ``name`` in errors and logs) into the cleaned, resolved index.

    One read of the object's tail (:func:`tail_length`) finds the end records and holds a small
    central directory whole; a bigger one costs one more read (in pieces of
    :data:`_READ_PIECE` beyond that, so that parsing it never holds it all).
    """
    if size < _END.size:
        raise ArchiveError(f"{name}: not a zip archive ({size} bytes)")
    tail_start = size - tail_length(size)
    tail = read(tail_start, size)
    if len(tail) != size - tail_start:
        raise ArchiveError(f"{name}: not a readable zip archive (short read of its end)")
    start, cd_size, concat = _locate(read, tail, tail_start, name)
    records = _records(_pieces(read, tail, tail_start, start, start + cd_size), cd_size, concat,
                       name)
    return entries_of(records, start, name)


def tail_length(size: int) -> int:
    """How much of an object's end the first read takes: the furthest an end record can be
    (a 64 KiB comment), or a thousandth of the object up to :data:`TAIL_MAX` if that is more;
    a central directory of a hundred bytes per member per 100 KiB of data fits in it."""
    return min(size, max(_TAIL_MIN, min(TAIL_MAX, size // 1024)))


def _pieces(read: Read, tail: bytes, tail_start: int, start: int, end: int) -> Iterator[bytes]:
    """The bytes from ``start`` to ``end``: what the tail holds, the rest read before it."""
    at = start
    while at < min(end, tail_start):
        upto = min(end, tail_start, at + _READ_PIECE)
        yield read(at, upto)
        at = upto
    if end > tail_start:
        yield tail[max(start, tail_start) - tail_start: end - tail_start]


def _locate(read: Read, tail: bytes, tail_start: int, name: str) -> tuple[int, int, int]:
    """Where the central directory starts, its size, and the bytes prepended to the archive
    (self-extractors: local header offsets are relative to the archive's own start)."""
    size = tail_start + len(tail)
    pos = tail.rfind(b"PK\x05\x06", max(0, len(tail) - _TAIL_MIN), len(tail) - _END.size + 4)
    if pos < 0:
        raise ArchiveError(f"{name}: not a zip archive (no end of central directory record)")
    _, _, _, _, count, cd_size, cd_offset, _ = _END.unpack_from(tail, pos)
    end_at = tail_start + pos
    concat = end_at - cd_size - cd_offset
    if pos >= _END64_LOCATOR.size:
        sig, *_ = _END64_LOCATOR.unpack_from(tail, pos - _END64_LOCATOR.size)
        if sig == b"PK\x06\x07":
            # As zipfile does: the zip64 end record sits just before its locator.
            at = end_at - _END64_LOCATOR.size - _END64.size
            if at < 0:
                raise ArchiveError(f"{name}: not a readable zip archive (truncated zip64 end record)")
            record = (tail[at - tail_start: at - tail_start + _END64.size] if at >= tail_start
                      else read(at, at + _END64.size))
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


def _records(pieces: Iterator[bytes], cd_size: int, concat: int, name: str) -> Records:
    """The records of the central directory, from its bytes in ``pieces`` (peak memory: one
    piece plus the reduced records)."""
    out = Records()
    buf, pos, unread = b"", 0, cd_size

    def need(n: int) -> None:
        nonlocal buf, pos, unread
        while len(buf) - pos < n and unread > 0:
            piece = next(pieces, b"")
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
        out.header_offset.append(min(max(info.header_offset + concat, I64[0]), I64[1]))
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
