"""Zip archives built byte by byte, so that tests control every field a hostile archive can lie in.

:func:`raw_zip` writes local headers, data, central directory and end record from
:class:`RawMember` descriptions without any of :mod:`zipfile`'s sanitising (names are raw bytes;
sizes, CRCs, flags, methods, extra fields and modes are whatever the test says).
"""

from __future__ import annotations

import io
import random
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass

DOS_DATE = ((2024 - 1980) << 9) | (5 << 5) | 17
DOS_TIME = (12 << 11) | (30 << 5) | 21

S_FILE = (stat.S_IFREG | 0o644) << 16
S_EXEC = (stat.S_IFREG | 0o755) << 16
S_DIR = ((stat.S_IFDIR | 0o755) << 16) | 0x10
S_LINK = (stat.S_IFLNK | 0o777) << 16
S_FIFO = (stat.S_IFIFO | 0o644) << 16
S_CHR = (stat.S_IFCHR | 0o644) << 16
S_BLK = (stat.S_IFBLK | 0o644) << 16
S_SOCK = (stat.S_IFSOCK | 0o644) << 16
HARD_LINK = 0x800  # PKWARE: in the low (DOS) half of the external attributes


def deflate(data: bytes, level: int = 6) -> bytes:
    """Raw deflate (no zlib header), as zip stores it."""
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


@dataclass
class RawMember:
    name: bytes
    plain: bytes = b""  # the uncompressed content
    method: int = 0  # 0 stored, 8 deflated, anything else as given
    payload: bytes | None = None  # bytes written as member data; default: plain, compressed
    crc: int | None = None  # default: CRC-32 of plain
    file_size: int | None = None  # declared uncompressed size; default len(plain)
    compress_size: int | None = None  # declared; default len(payload)
    flags: int = 0
    extra: bytes = b""
    external_attr: int = S_FILE
    create_system: int = 3

    def data(self) -> bytes:
        if self.payload is not None:
            return self.payload
        if self.method == 8:
            return deflate(self.plain)
        return self.plain


def extra_field(tag: int, body: bytes) -> bytes:
    return struct.pack("<HH", tag, len(body)) + body


def unicode_path_extra(raw_name: bytes, unicode_name: str) -> bytes:
    """Info-ZIP Unicode Path extra field (0x7075)."""
    return extra_field(0x7075, b"\x01" + struct.pack("<I", zlib.crc32(raw_name))
                       + unicode_name.encode())


def pkware_unix_extra(data: bytes = b"", mtime: int = 0) -> bytes:
    """PKWARE unix extra field (0x000d): atime, mtime, uid, gid, then a link target (or device)."""
    return extra_field(0x000D, struct.pack("<IIHH", 0, mtime, 1000, 1000) + data)


def ntfs_extra(mtime_ns: int) -> bytes:
    """NTFS extra field (0x000a) with mtime = atime = ctime."""
    ticks = mtime_ns // 100 + 116_444_736_000_000_000
    return extra_field(0x000A, b"\0" * 4 + struct.pack("<HHQQQ", 1, 24, ticks, ticks, ticks))


def ext_time_extra(seconds: int) -> bytes:
    """Info-ZIP extended timestamp (0x5455) with an mtime."""
    return extra_field(0x5455, b"\x01" + struct.pack("<i", seconds))


def hard_link(name: bytes, target: bytes) -> RawMember:
    """A PKWARE hard link: flag 0x800 in the external attributes, the target in 0x000d, no data."""
    return RawMember(name, b"", external_attr=S_FILE | HARD_LINK, extra=pkware_unix_extra(target))


def raw_zip(members: list[RawMember], comment: bytes = b"", cd_override: bytes | None = None
            ) -> bytes:
    """A zip archive of ``members`` exactly as described; ``cd_override`` replaces the central
    directory bytes (the end record still points at them)."""
    out = io.BytesIO()
    central = io.BytesIO()
    for m in members:
        data = m.data()
        crc = zlib.crc32(m.plain) if m.crc is None else m.crc
        fsize = len(m.plain) if m.file_size is None else m.file_size
        csize = len(data) if m.compress_size is None else m.compress_size
        offset = out.tell()
        out.write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, m.flags, m.method, DOS_TIME,
                              DOS_DATE, crc, csize & 0xFFFFFFFF, fsize & 0xFFFFFFFF,
                              len(m.name), len(m.extra)))
        out.write(m.name + m.extra + data)
        central.write(struct.pack("<4sBBHHHHHIIIHHHHHII", b"PK\x01\x02", 63, m.create_system,
                                  20, m.flags, m.method, DOS_TIME, DOS_DATE, crc,
                                  csize & 0xFFFFFFFF, fsize & 0xFFFFFFFF, len(m.name),
                                  len(m.extra), 0, 0, 0, m.external_attr, offset))
        central.write(m.name + m.extra)
    cd = central.getvalue() if cd_override is None else cd_override
    cd_offset = out.tell()
    out.write(cd)
    count = len(members)
    if count > 0xFFFF:  # zip64 end records carry the real count
        eocd64 = out.tell()
        out.write(struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count,
                              len(cd), cd_offset))
        out.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, eocd64, 1))
        count = 0xFFFF
    out.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count,
                          len(cd), cd_offset, len(comment)) + comment)
    return out.getvalue()


def plain_zip(files: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    """An ordinary archive written by :mod:`zipfile`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 5, 17, 12, 30, 42))
            info.compress_type = method
            info.external_attr = S_FILE
            info.create_system = 3
            zf.writestr(info, data)
    return buf.getvalue()


def random_bytes(seed: int | str, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def random_files(seed: int | str, count: int, size: int, prefix: str = "f") -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"{prefix}{i:03d}.bin": rng.randbytes(size) for i in range(count)}
