"""Run files: blocks of remote objects kept in a :class:`FileStore` that processes share.

Each fetched piece (consecutive blocks, at most MAX_REQUEST) is kept as one file with a
CRC-32 per block. Pieces never cross a *cell* (MAX_REQUEST-aligned group of blocks), and the run
files of one cell live in one directory of their own, ``<key>.<block size>.<cell>/<first>-<last>.run``,
so any process finds the runs holding a block by listing a directory of at most a few dozen
names — which it does again only when that directory's mtime changes. Runs may overlap (two
processes fetched the same blocks): any run holding a block serves it.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from binascii import crc32  # zlib's, keeping the GIL: see RunFiles.save
from collections import OrderedDict

from .files import FileStore
from .memory import Buffer

log = logging.getLogger(__name__)

_RUN_HEADER = struct.Struct("<8sI")  # magic, number of blocks; then (crc32, length) per block
_RUN_ENTRY = struct.Struct("<II")
_MAGIC = b"zmrun001"
_RACY_NS = 100_000_000  # a directory changed this recently may change again within its mtime tick
_LISTINGS = 16384  # cells whose listing a process remembers


class RunFiles:
    """Run files of blocks in a :class:`FileStore`, found by any process that shares it."""

    def __init__(self, store: FileStore, block_size: int, cell_blocks: int) -> None:
        self.store = store
        self.block_size = block_size
        self.cell_blocks = cell_blocks
        self._lock = threading.Lock()
        # (key, cell) -> (directory mtime, or -1 if it was too recent to trust; sorted runs)
        self._listings: OrderedDict[tuple[str, int], tuple[int, list[tuple[int, int]]]] = OrderedDict()

    def _group(self, key: str, cell: int) -> str:
        return f"{key}.{self.block_size}.{cell}"

    def runs(self, key: str, cell: int) -> list[tuple[int, int]]:
        """The (first, last) runs stored for ``cell`` of ``key``, by any process."""
        try:
            mtime = os.stat(self.store.fspath(self._group(key, cell))).st_mtime_ns
        except OSError:  # none yet (or a transient failure: a miss, nothing deleted)
            return []
        with self._lock:
            known = self._listings.get((key, cell))
            if known is not None and known[0] == mtime:
                self._listings.move_to_end((key, cell))
                return known[1]
        try:
            listing = self.store.listing(self._group(key, cell))
        except OSError:  # EMFILE, ENOMEM...: a miss, nothing deleted
            return []
        if listing is None:
            return []
        mtime, names = listing
        runs = sorted(r for r in map(_parse_run_name, names) if r is not None)
        if time.time_ns() - mtime < _RACY_NS:
            mtime = -1
        with self._lock:
            self._listings[(key, cell)] = (mtime, runs)
            if len(self._listings) > _LISTINGS:
                self._listings.popitem(last=False)
        return runs

    def _forget(self, key: str, cell: int) -> None:
        with self._lock:
            self._listings.pop((key, cell), None)

    def holding(self, key: str, index: int) -> list[tuple[int, int]]:
        """The runs holding block ``index``."""
        return [r for r in self.runs(key, index // self.cell_blocks) if r[0] <= index <= r[1]]

    def load(self, key: str, index: int, holding: list[tuple[int, int]] | None = None
             ) -> tuple[int, memoryview] | None:
        """(first block, the blocks) of a run file holding block ``index`` (of ``holding``, the
        runs :meth:`holding` gave, if the caller has them); None if none is readable. Only a
        file proven corrupt (bad header, short, CRC mismatch) is deleted: a transient error
        (EMFILE, ENOMEM, EINTR...) is a miss that leaves the file in place."""
        cell = index // self.cell_blocks
        for first, last in self.holding(key, index) if holding is None else holding:
            name = f"{self._group(key, cell)}/{first}-{last}.run"
            try:
                raw = _read_whole(self.store.fspath(name))
            except FileNotFoundError:  # evicted by another process since it was listed
                self._forget(key, cell)
                continue
            except OSError as exc:
                log.debug("disk cache: cannot read %s now: %s", name, exc)
                return None
            blocks = self._check(raw, last - first + 1)
            if blocks is None:
                log.warning("disk cache: dropping corrupt file %s", name)
                self.store.remove(name)
                self._forget(key, cell)
                continue
            self.store.touch(name)
            return first, blocks
        return None

    def _check(self, raw: bytes, count: int) -> memoryview | None:
        """The payload of run file ``raw`` if its header and every block's CRC are right."""
        view = memoryview(raw)
        table = _RUN_HEADER.size + count * _RUN_ENTRY.size
        if len(raw) < table or _RUN_HEADER.unpack_from(raw) != (_MAGIC, count):
            return None
        offset, bs = table, self.block_size
        for n in range(count):
            crc, length = _RUN_ENTRY.unpack_from(raw, _RUN_HEADER.size + n * _RUN_ENTRY.size)
            if length != bs and n != count - 1:
                return None
            if offset + length > len(raw) or crc32(view[offset: offset + length]) != crc:
                return None
            offset += length
        return view[table:offset] if offset == len(raw) else None

    def save(self, key: str, first: int, data: Buffer) -> None:
        """Store ``data``, the consecutive blocks ``first...`` of ``key`` (within one cell).

        The blocks' CRC-32s come from ``binascii.crc32``, which keeps the GIL (~16 us a block),
        not from ``zlib.crc32`` or zlib-ng's, which hand it over and back for every block: beside
        a decode that keeps its cells, that hand-over stalled the decoding thread (a 328 MB jump
        into a deflated member with a disk cache took 1.25-1.28 s, with binascii 1.14-1.21 s).
        """
        view, bs = memoryview(data).cast("B"), self.block_size
        count = -(-len(view) // bs)
        header = _RUN_HEADER.pack(_MAGIC, count) + b"".join(
            _RUN_ENTRY.pack(crc32(view[j * bs: (j + 1) * bs]), len(view[j * bs: (j + 1) * bs]))
            for j in range(count))
        cell = first // self.cell_blocks
        name = f"{self._group(key, cell)}/{first}-{first + count - 1}.run"
        self.store.write(name, [header, view], len(header) + len(view), overwrite=False)
        self._forget(key, cell)


def _read_whole(path: str) -> bytes:
    """The whole file in one buffer (one read: blocks are views of it, never copied out)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size)  # a bytes object of the file's size, not zero-filled first
        if len(data) == size or not data:
            return data
        parts = [data]
        while chunk := os.read(fd, size):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def _parse_run_name(name: str) -> tuple[int, int] | None:
    span, dot, ext = name.partition(".")
    first, dash, last = span.partition("-")
    if ext != "run" or not dash or not first.isdigit() or not last.isdigit():
        return None
    return int(first), int(last)


def run_blocks(name: str) -> int:
    """How many blocks the run file ``name`` (as :meth:`FileStore.files` names it) holds; 0 if
    it is no run file."""
    run = _parse_run_name(name.rpartition("/")[2])
    return run[1] - run[0] + 1 if run else 0
