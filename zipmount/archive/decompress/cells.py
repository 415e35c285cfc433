"""Decoded bytes of deflated members kept in the block cache, so that random reads after a first
phase cost what reads of a stored member cost.

A program that maps shared libraries out of a mounted wheel (a loader, ``import torch``) reads a
big deflated member page by page at random. From a checkpoint every such read decodes up to the
checkpoint spacing (2 MiB) to serve a page: in the members benchmark 100 random 4 KiB reads of
a 300 MB member cost ~2.5 ms each, decoding ~1 MiB per 4 KiB served, at every read again.

Cells. A read that the handle's stream cannot serve by going on (not in its window, at most
WINDOW ahead of it, or part of a walk: see ``CompressedReader``) is served from the member's
*decoded cells*: its decoded bytes, split like any remote object into 512 KiB cells of 64 KiB
blocks and cached under a key of their own (the archive's cache key, which holds its ETag and
size, plus the member's offset: a replaced archive never serves its old decoded bytes). A
missing cell is decoded from the checkpoint before it, or from the member's start when no
decode got there yet, and *every* cell decoded on the way is kept: a jump far into the member
(a loader's first fault lands in the data segment near the end of a ``.so``) decodes up to it
once, and the reads behind it are then cache hits; a read beyond goes on from the checkpoint
the jump left last. Measured on ``import torch`` from a mounted wheel: keeping only the cells
of the jump's last checkpoint stretch decoded 839 MB for a 434 MB member (every read behind
the jump decoded again from a checkpoint, then the fill decoded the member once more); keeping
every cell decoded on the way, 369 MB (each byte at most once). The block cache's single flight
makes concurrent readers of one cell share its decode, and its tiers keep the result (memory,
then the disk cache under its cap and the shared directory's rules). A member read once at a
few offsets costs the decode up to the farthest of them, never more; reads in order (``cat``,
a zarr chunk read whole) stay with the stream, so a member read in order is not cached twice
(compressed and decoded).

Fill. A cell on demand beyond the farthest decode costs what a read from a checkpoint costs,
so a reader that goes on reading at random out there would still pay a decode per new stretch
(measured: 6.4 ms per read at new offsets, 2.6x the stored member). Once FILL_AFTER reads of a
member made cells on demand, the cells not made yet are decoded in order by one background
thread per engine (reads meanwhile take over or wait for the cell they need): from then on
every read is a cache hit. A member read at a handful of offsets stays under FILL_AFTER.
Cells are 512 KiB, not the 2 MiB of a checkpoint stretch: a cell read back from the disk tier is
read and checked whole, and 2 MiB ones made a disk-tier hit cost several ms. A fill needs
room: the member must take at most a quarter of the disk cache (of the memory cache without
one), as spill files must.
Figures: docs/BENCHMARKS.md, "Decoded cells" and "import torch again".
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ...cache import MAX_REQUEST
from ...errors import ZipmountError
from .budget import DecoderBudget, Pinned
from .checkpoints import CheckpointStore, checkpoint_spacing
from .decoders import decoder_memory
from .streams import Stream

if TYPE_CHECKING:
    from ..view import MemberView

log = logging.getLogger(__name__)

# Decoded bytes are cached in cells of this size: a quarter of the checkpoint spacing, so that
# a cell read back from the disk cache is small (a 2 MiB run file took ~2 ms to read and check).
CELL = MAX_REQUEST // 4
FILL_AFTER = 8  # cells of a member made on demand before the rest is decoded in the background
_TRACKED = 4096  # members whose on-demand cells are counted (least recently used forgotten)
_RESUMABLE = 16  # streams kept where their last cell ended, for the decode of the next one


class CellFills:
    """Counts the cells each member had made on demand and fills members that passed
    FILL_AFTER, one at a time, on a thread of its own (one per engine)."""

    def __init__(self) -> None:
        self._demand: OrderedDict[str, int] = OrderedDict()  # member version -> cells
        self._started: set[str] = set()
        self._resumable: OrderedDict[tuple[str, int], Stream] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="zipmount-fill")
        self.closed = False

    def made_on_demand(self, cells: DecodedCells) -> None:
        member = cells.view.version
        with self._lock:
            count = self._demand[member] = self._demand.pop(member, 0) + 1
            while len(self._demand) > _TRACKED:
                self._demand.popitem(last=False)
            if count < FILL_AFTER or member in self._started or self.closed \
                    or not cells.fillable:
                return
            self._started.add(member)
        log.info("decoding %s (%d bytes) into the cache: it is read at random",
                 cells.view.entry.name, cells.size)
        self._pool.submit(cells.fill)

    def resume(self, member: str, offset: int) -> Stream | None:
        """A stream of ``member`` that stopped at ``offset`` (taken: one user at a time)."""
        with self._lock:
            return self._resumable.pop((member, offset), None)

    def keep(self, member: str, stream: Stream) -> None:
        """Keep ``stream`` for the decode of the cell that starts where it stopped."""
        with self._lock:
            self._resumable[(member, stream.out_pos)] = stream
            while len(self._resumable) > _RESUMABLE:
                self._resumable.popitem(last=False)

    def close(self) -> None:
        self.closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._resumable.clear()


class DecodedCells:
    """Reads of one deflated member served from its decoded cells in the block cache."""

    def __init__(self, view: MemberView, checkpoints: CheckpointStore, budget: DecoderBudget,
                 fills: CellFills) -> None:
        self.view = view
        self.checkpoints = checkpoints
        self.budget = budget
        self.fills = fills
        self.cache = cache = view.cached.cache
        self.size = size = view.entry.size
        # The archive's key names its version (ETag, size); the offset names the member in it.
        self.key = f"{view.cached.key}m{view.entry.header_offset}"
        self.spacing = checkpoint_spacing(size)
        room = cache.disk.capacity if cache.disk is not None else cache.memory.capacity
        self.fillable = FILL_AFTER * CELL < size <= room // 4

    def read(self, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)`` of the member (at most CELL: one or two cells)."""
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        start = offset // CELL * CELL
        if not self._held(start):
            # Every cell decoded on the way from the checkpoint before it (or from the start)
            # is kept, in order (each decode goes on from where the one before stopped): a jump
            # far into the member decodes up to it once, and reads behind it are cache hits.
            ckpt = self.checkpoints.nearest(self.view.version, start)
            for before in range(ckpt.out_pos if ckpt is not None else 0, start, CELL):
                if not self._held(before):
                    self.cache.fill(self.key, self.size, before, before + CELL, self._decode)
            # The whole cells, not only the blocks of this read: one decode each (shared with
            # any concurrent reader of them: the block cache's single flight).
            whole = self.cache.read(self.key, self.size, start, -(-end // CELL) * CELL,
                                    self._on_demand)
            return whole[offset - start: end - start]
        return self.cache.read(self.key, self.size, offset, end, self._on_demand)

    def holds(self, offset: int, size: int) -> bool:
        """Whether every cell of ``[offset, offset + size)`` is kept (a read of it decodes
        nothing: cheaper than any decode, also for a reader walking on)."""
        end = min(offset + size, self.size)
        return offset < end and all(self._held(start) for start in
                                    range(offset // CELL * CELL, end, CELL))

    def _held(self, start: int) -> bool:
        """Whether the cell at ``start`` is in the memory tier or a run file (its first block)."""
        index = start // self.cache.block_size
        if self.cache.memory.get(self.key, index) is not None:
            return True
        runs = self.cache.runs
        return runs is not None and bool(runs.holding(self.key, index))

    def _on_demand(self, start: int, end: int) -> bytes:
        data = self._decode(start, end)
        self.fills.made_on_demand(self)
        return data

    def fill(self) -> None:
        """Make every missing cell, in order (each from the checkpoint the last one made)."""
        for start in range(0, self.size, CELL):
            if self.fills.closed:
                return
            if self._held(start):
                continue
            try:
                self.cache.fill(self.key, self.size, start, start + CELL, self._decode)
            except ZipmountError as exc:  # replaced, unreachable, corrupt: reads will tell
                log.info("stopped decoding %s into the cache: %s", self.view.entry.name, exc)
                return

    def _decode(self, start: int, end: int) -> bytes:
        """Decoded bytes ``[start, end)`` (a cell or a few, as the block cache asks for them): on
        from where the decode of the cell before stopped (a fill, a reader going on), else from
        the checkpoint before."""
        member = self.view.version
        charge = Pinned()
        self.budget.charge(charge, decoder_memory(self.view.entry) + CELL)
        try:
            stream = self.fills.resume(member, start) or Stream(
                self.view, self.checkpoints, self.checkpoints.nearest(member, start))
            began = stream.out_pos
            parts: list[bytes | memoryview] = []
            while stream.out_pos < end:
                # Cell-sized pieces: a cell decoded from its start is usually one piece, kept as
                # it is. They end where the cell ends: the next decode goes on from there.
                piece = stream.decode(end, most=CELL)
                at = stream.out_pos - len(piece)
                if at == start and stream.out_pos == end:
                    parts.append(piece)
                elif stream.out_pos > start:
                    parts.append(memoryview(piece)[max(0, start - at): end - at])
            self.cache.stats.add("cells_decoded")
            self.cache.stats.add("cell_bytes_decoded", stream.out_pos - began)
            if stream.out_pos < self.size:
                self.fills.keep(member, stream)
            return parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)
        finally:
            self.budget.release(charge)
