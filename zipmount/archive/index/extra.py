"""What the extra fields of a central directory record say: zip64 sizes, Unicode path, times, unix link.

Parsed once per record while the central directory is read, so that only the few values the
index keeps survive (the extra bytes themselves are dropped).
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

ZIP64 = 0x0001
NTFS = 0x000A
PKWARE_UNIX = 0x000D
EXTENDED_TIME = 0x5455
UNICODE_PATH = 0x7075
_NTFS_EPOCH = 116_444_736_000_000_000  # 1601-01-01 to 1970-01-01 in 100 ns units
_U32 = 0xFFFFFFFF


class Extra(NamedTuple):
    """The values of one record's extra fields that the index uses (None: field absent)."""

    file_size: int
    compress_size: int
    header_offset: int
    unicode_path: str | None  # Info-ZIP Unicode Path, only if its CRC matches the raw name
    mtime_ns: int | None  # NTFS, else extended timestamp, else PKWARE unix mtime
    unix_data: bytes | None  # the variable part of the PKWARE unix field: a link target


def fields(extra: bytes) -> dict[int, bytes]:
    """Extra field bodies by tag (the first of each tag; a truncated last field is cut short)."""
    out: dict[int, bytes] = {}
    i = 0
    while i + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, i)
        out.setdefault(tag, extra[i + 4: i + 4 + length])
        i += 4 + length
    return out


def parse(extra: bytes, raw_name: bytes, file_size: int, compress_size: int,
          header_offset: int) -> Extra:
    """The index's view of ``extra``; 32-bit values saturated at 0xFFFFFFFF come from zip64."""
    found = fields(extra) if extra else {}
    body = found.get(ZIP64)
    if body is not None:
        values = [v for (v,) in struct.iter_unpack("<Q", body[: len(body) // 8 * 8])]
        # Only the saturated values are present, in this order (APPNOTE 4.5.3); a short field
        # leaves the 32-bit value, which the member checks then reject as a lie.
        if file_size == _U32 and values:
            file_size = values.pop(0)
        if compress_size == _U32 and values:
            compress_size = values.pop(0)
        if header_offset == _U32 and values:
            header_offset = values.pop(0)
    return Extra(file_size, compress_size, header_offset, _unicode_path(found, raw_name),
                 _mtime_ns(found), _unix_data(found))


def _unicode_path(found: dict[int, bytes], raw_name: bytes) -> str | None:
    body = found.get(UNICODE_PATH)
    if body is None or len(body) < 5 or body[0] != 1:
        return None
    if struct.unpack_from("<I", body, 1)[0] != zlib.crc32(raw_name):
        return None  # written for another name: a later tool renamed the entry
    return body[5:].decode("utf-8", "replace")


def _mtime_ns(found: dict[int, bytes]) -> int | None:
    """The most precise mtime the fields carry: NTFS (100 ns), then extended timestamp (s),
    then the PKWARE unix field (s); all are UTC."""
    body = found.get(NTFS)
    if body is not None:
        i = 4  # reserved
        while i + 4 <= len(body):
            tag, size = struct.unpack_from("<HH", body, i)
            if tag == 1 and size >= 24 and i + 4 + 8 <= len(body):
                ticks = struct.unpack_from("<Q", body, i + 4)[0]
                if ticks >= _NTFS_EPOCH:
                    return (ticks - _NTFS_EPOCH) * 100
                break
            i += 4 + size
    body = found.get(EXTENDED_TIME)
    if body is not None and len(body) >= 5 and body[0] & 1:
        return struct.unpack_from("<i", body, 1)[0] * 10**9
    body = found.get(PKWARE_UNIX)
    if body is not None and len(body) >= 8:
        return struct.unpack_from("<I", body, 4)[0] * 10**9
    return None


def _unix_data(found: dict[int, bytes]) -> bytes | None:
    """The variable data of the PKWARE unix field (after atime, mtime, uid, gid)."""
    body = found.get(PKWARE_UNIX)
    if body is None or len(body) <= 12:
        return None
    return body[12:]
