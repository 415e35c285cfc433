"""Member reads: stored members as byte ranges, compressed ones as bounded decompression streams
(:mod:`.decompress`), bzip2/LZMA ones with a spill file (:mod:`.spill`) for random access.

A reader is given a :class:`~.view.MemberView` of its member, never the archive."""

from __future__ import annotations

import logging
import os
import threading
import zipfile

from ..cache import MAX_REQUEST
from ..errors import ArchiveError
from .decompress import Decoding, MemberStream, crc32
from .decompress.cells import DecodedCells
from .decompress.streams import WINDOW
from .layout import WHOLE_MEMBER_MAX
from .readahead import Prefetcher, readahead_max
from .spill import SpillFiles
from .view import MemberView

log = logging.getLogger(__name__)

# bzip2/LZMA members at least this big get a spill file for non-sequential reads.
SPILL_MIN = 8 * 1024 * 1024
SPILL_METHODS = {zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
# A handle checks a big stored member's CRC-32 while it is read in order; reads that arrive
# ahead of that order (the kernel's concurrent readahead) are held until the gap fills, up to:
CRC_AHEAD_MAX = 4 * 1024 * 1024
# A handle that has read on from where it stopped this far walks the member: its stream goes on.
WALK = 1024 * 1024
WALK_SPREAD = 8 * 1024 * 1024  # how far from the furthest READ of a walk the next may start


class MemberReader:
    """Reads of one member for one open file handle."""

    def __init__(self, view: MemberView) -> None:
        self.view = view
        self.entry = view.entry

    @property
    def version(self) -> str:
        """Which archive version and member this handle reads."""
        return self.view.version

    def read(self, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the handle holds."""


class StoredReader(MemberReader):
    """A stored member is a byte range of the archive: no stream, any thread, any offset.

    Small members are CRC-checked whole when opened; a big one is checked by each handle that
    reads it whole in order (the read that completes it fails with EIO on a mismatch).
    """

    def __init__(self, view: MemberView) -> None:
        super().__init__(view)
        entry, cached = view.entry, view.cached
        self.start = view.data_start
        big = entry.size > WHOLE_MEMBER_MAX
        self.prefetcher = Prefetcher(cached, readahead_max(cached.cache.memory.capacity)) \
            if big else None
        self.crc_pos: int | None = 0 if big else None  # checked up to here; None: gave up
        self.crc = 0
        self.ahead: dict[int, bytes] = {}  # reads past crc_pos, by offset
        self.ahead_bytes = 0
        self._crc_lock = threading.Lock()  # reads of one handle may come from several threads

    def read(self, offset: int, size: int) -> bytes:
        self.view.check_intact()
        begin = self.start + min(offset, self.entry.size)
        end = self.start + min(offset + size, self.entry.size)
        if begin >= end:
            return b""
        if self.prefetcher is not None:
            self.prefetcher.observe(begin, end, self.start + self.entry.size)
        data = self.view.cached.read(begin, end)
        if self.crc_pos is not None:
            try:
                with self._crc_lock:
                    if self.crc_pos is not None:
                        self._check(offset, data)
            except ArchiveError as exc:
                self.view.mark_corrupt(exc)
                raise
        return data

    def _check(self, offset: int, data: bytes) -> None:
        """Extend the in-order CRC-32 with ``data`` (at ``offset``); raise at the end on a mismatch."""
        assert self.crc_pos is not None
        if offset > self.crc_pos:
            if offset - self.crc_pos + len(data) > CRC_AHEAD_MAX \
                    or self.ahead_bytes + len(data) > CRC_AHEAD_MAX:
                self.crc_pos = None  # not read in order: nothing to check
                self.ahead.clear()
            else:
                self.ahead[offset] = data
                self.ahead_bytes += len(data)
            return
        self._advance(offset, data)
        while (held := next((a for a in self.ahead if a <= self.crc_pos), None)) is not None:
            data = self.ahead.pop(held)
            self.ahead_bytes -= len(data)
            self._advance(held, data)
        if self.crc_pos >= self.entry.size:
            self.crc_pos = None
            self.ahead.clear()
            if self.crc != self.entry.crc:
                raise ArchiveError(f"{self.entry.name}: CRC-32 mismatch (corrupt member)")

    def _advance(self, offset: int, data: bytes) -> None:
        assert self.crc_pos is not None
        if offset + len(data) > self.crc_pos:
            self.crc = crc32(memoryview(data)[self.crc_pos - offset:], self.crc)
            self.crc_pos = offset + len(data)

    def close(self) -> None:
        self.ahead.clear()


class CompressedReader(MemberReader):
    """A bounded decompression stream per open file (see :mod:`.decompress`); its reads take
    turns (a stream has one position).

    Random reads of a big deflated member are served from its decoded cells in the block cache
    (:mod:`.decompress.cells`), in parallel; reads that walk on stay with the stream. A big bzip2/LZMA
    member switches to its spill file (when there is a disk cache) when a read steps back past
    the stream's window; spill failures of any kind fall back to the stream.
    """

    def __init__(self, view: MemberView, decoding: Decoding, spills: SpillFiles | None) -> None:
        super().__init__(view)
        entry = view.entry
        self.stream = MemberStream(view, decoding.checkpoints, decoding.park, decoding.budget)
        self.cells = DecodedCells(view, decoding.checkpoints, decoding.budget, decoding.fills) \
            if entry.method == zipfile.ZIP_DEFLATED and entry.size > WINDOW else None
        self.spills = spills
        self.spillable = (entry.method in SPILL_METHODS and entry.size >= SPILL_MIN
                          and spills is not None)
        self.spill: int | None = None  # fd of the spill file
        self._walk_end = -1  # where the furthest read of the current walk ended
        self._walked = 0  # bytes read on from where the read before stopped (about)
        self._lock = threading.Lock()

    def read(self, offset: int, size: int) -> bytes:
        self.view.check_intact()
        try:
            if self._random(offset, size):
                assert self.cells is not None
                return self.cells.read(offset, size)
            with self._lock:
                return self._read(offset, size)
        except ArchiveError as exc:  # corrupt data, a CRC mismatch, a size that lies
            self.view.mark_corrupt(exc)
            raise

    def _random(self, offset: int, size: int) -> bool:
        """Whether this read goes to the decoded cells: a read of a few pages (not a whole
        member) whose cells are kept already, or that the stream cannot serve by going on and
        that does not walk on from the reads before it."""
        if self.cells is None or size > MAX_REQUEST:
            return False
        with self._lock:
            # A reader walking on: the kernel's readahead READs arrive out of order, several in
            # flight at once, so a READ may start well before or after the furthest one so far.
            near = abs(offset - self._walk_end) <= WALK_SPREAD
            self._walked = self._walked + size if near else 0
            self._walk_end = max(self._walk_end, offset + size) if near else offset + size
            if self._walked < WALK and not self.stream.continues(offset):
                return True
        # Decoded before (by any handle, a walk or not): served without any decode.
        return self.cells.holds(offset, size)

    def _read(self, offset: int, size: int) -> bytes:
        if self.spill is None and self.spillable and self.stream.needs_restart(offset):
            self._open_spill()  # decompresses the whole member (and checks it) the first time
        if self.spill is not None:
            try:
                return os.pread(self.spill, min(size, max(0, self.entry.size - offset)), offset)
            except OSError as exc:
                log.warning("spill file of %s unreadable (%s): decompressing instead",
                            self.entry.name, exc)
                self._close_spill()
                self.spillable = False
        return self.stream.read(offset, size)

    def _open_spill(self) -> None:
        """Open the spill file, making it if needed; on failure stream on (never an error)."""
        assert self.spills is not None
        for _ in range(2):  # a spill file deleted behind the daemon is made again, once
            path = self.spills.path(self.view)
            if path is None:
                break
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self.spills.forget(self.view)
                continue
            except OSError as exc:
                log.warning("spill file of %s cannot be opened (%s): decompressing instead",
                            self.entry.name, exc)
                break
            if os.fstat(fd).st_size == self.entry.size:
                self.stream.close()  # the spill file serves this handle from now on
                self.spill = fd
                return
            os.close(fd)
            self.spills.forget(self.view)
        self.spillable = False

    def _close_spill(self) -> None:
        if self.spill is not None:
            os.close(self.spill)
            self.spill = None

    def close(self) -> None:
        with self._lock:
            self.stream.close()
            self._close_spill()
