"""Decoders of the zip compression methods, each bounded per call.

Why not :class:`zipfile.ZipExtFile`: for bzip2 and LZMA it calls ``decompress()`` without an output
limit, so a few hundred bytes of input can expand to gigabytes in one call. Here every
``decompress()`` call gets a limit on its output. A decoder is ~40 KiB for deflate, ~4 MiB for
bzip2 (900k blocks) and up to LZMA_DICT_MAX for LZMA: the dictionary is clamped to the member's
declared size (a bigger one is never used) and a member that would still need more is refused
(EIO) rather than allowed to take gigabytes. Deflate decoders can be copied (checkpoints);
bzip2/LZMA ones cannot.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zipfile
import zlib
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from ...errors import MemberUnsupported

zlib_impl: ModuleType
try:  # zlib-ng: the same API, about twice as fast to inflate, CRC-32 many times faster
    from zlib_ng import zlib_ng
    zlib_impl = zlib_ng
except ImportError:  # pragma: no cover - depends on the environment
    zlib_impl = zlib
crc32 = zlib_impl.crc32

if TYPE_CHECKING:
    from ..index.table import Entry

LZMA_DICT_MAX = 64 * 1024 * 1024  # 7-Zip's "ultra" dictionary; zipfile writes 8 MiB ones
# What the decoders raise on corrupt data (bz2: OSError, LZMA: LZMAError, after the end: EOFError).
CORRUPT_DATA: tuple[type[BaseException], ...] = (
    zlib.error, zlib_impl.error, OSError, EOFError, ValueError, lzma.LZMAError)


class Decoder(Protocol):
    """One decompressor: ``decompress(data, limit)`` returns at most ``limit`` bytes."""

    @property
    def eof(self) -> bool:
        """The end of the compressed stream was reached."""
        ...

    def needs_input(self) -> bool: ...

    def held_input(self) -> int | None:
        """Input bytes given and held back for the next call, to which more input may be added
        (None: this decoder takes input only when it ``needs_input``)."""
        ...

    def decompress(self, data: bytes, limit: int) -> bytes: ...

    def pending(self) -> int:
        """Input bytes given but not consumed (they must be fed again after a copy)."""
        ...

    def copy(self) -> Decoder | None:
        """An independent copy of the state, or None if the format cannot be copied."""
        ...


class _Inflate:
    """Raw deflate; zlib keeps unconsumed input in ``unconsumed_tail`` when the limit is hit."""

    def __init__(self, obj: Any = None) -> None:
        self.obj = obj if obj is not None else zlib_impl.decompressobj(-15)
        self.tail = b""
        self.full = False  # the last call stopped at its output limit: more may come without input

    @property
    def eof(self) -> bool:
        return self.obj.eof

    def needs_input(self) -> bool:
        return not self.tail and not self.full

    def held_input(self) -> int:
        return len(self.tail)

    def decompress(self, data: bytes, limit: int) -> bytes:
        out = self.obj.decompress(self.tail + data if self.tail and data else data or self.tail,
                                  limit)
        self.tail = self.obj.unconsumed_tail
        self.full = len(out) == limit
        return out

    def pending(self) -> int:
        return len(self.tail)

    def copy(self) -> _Inflate:
        return _Inflate(self.obj.copy())  # fed again from the checkpoint's input offset


class _Buffered:
    """bzip2 or LZMA: the decompressor buffers its input itself (``needs_input``)."""

    def __init__(self, obj: bz2.BZ2Decompressor | lzma.LZMADecompressor) -> None:
        self.obj = obj

    @property
    def eof(self) -> bool:
        return self.obj.eof

    def needs_input(self) -> bool:
        return self.obj.needs_input

    def held_input(self) -> None:
        return None

    def decompress(self, data: bytes, limit: int) -> bytes:
        return self.obj.decompress(data, limit)

    def pending(self) -> int:
        return 0

    def copy(self) -> None:
        return None


class _ZipLzma:
    """LZMA as zip stores it: version (2 bytes), properties size (2), properties (5), raw LZMA1.

    Same format as ``zipfile.LZMADecompressor``; here the dictionary is clamped and checked.
    """

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.head = b""
        self.inner: _Buffered | None = None

    @property
    def eof(self) -> bool:
        return self.inner is not None and self.inner.eof

    def needs_input(self) -> bool:
        return self.inner is None or self.inner.needs_input()

    def held_input(self) -> None:
        return None

    def decompress(self, data: bytes, limit: int) -> bytes:
        if self.inner is None:
            self.head += data
            if len(self.head) < 4:
                return b""
            (psize,) = struct.unpack_from("<H", self.head, 2)
            if len(self.head) < 4 + psize:
                return b""
            if psize != 5:
                raise lzma.LZMAError(f"LZMA properties of {psize} bytes, 5 expected")
            lclppb, dict_size = struct.unpack_from("<BI", self.head, 4)
            lc, lp, pb = lclppb % 9, lclppb // 9 % 5, lclppb // 45
            # Distances never reach past the output so far: a dictionary bigger than the
            # member is never used, so it is not allocated either.
            dict_size = max(4096, min(dict_size, self.size))
            if dict_size > LZMA_DICT_MAX:
                raise MemberUnsupported(f"{self.name}: LZMA dictionary of {dict_size} bytes "
                                        f"(at most {LZMA_DICT_MAX} are supported)")
            self.inner = _Buffered(lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[
                {"id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": lc, "lp": lp, "pb": pb}]))
            data = self.head[4 + psize:]
            self.head = b""
        return self.inner.decompress(data, limit)

    def pending(self) -> int:
        return 0

    def copy(self) -> None:
        return None


def decoder_memory(entry: Entry) -> int:
    """About what a decoder of ``entry`` holds at most: zlib's state and 32 KiB window, bzip2's
    900k-block tables, or the LZMA dictionary as :class:`_ZipLzma` clamps it."""
    if entry.method == zipfile.ZIP_BZIP2:
        return 4 * 1024 * 1024
    if entry.method == zipfile.ZIP_LZMA:
        return max(4096, min(entry.size, LZMA_DICT_MAX)) + 64 * 1024
    return 64 * 1024


def make_decoder(entry: Entry) -> Decoder:
    """A fresh decoder for ``entry``'s method (MemberUnsupported for any other)."""
    if entry.method == zipfile.ZIP_DEFLATED:
        return _Inflate()
    if entry.method == zipfile.ZIP_BZIP2:
        return _Buffered(bz2.BZ2Decompressor())
    if entry.method == zipfile.ZIP_LZMA:
        return _ZipLzma(entry.name, entry.size)
    raise MemberUnsupported(f"{entry.name}: unsupported compression method {entry.method}")


