"""Decoded bytes of deflated members kept in the block cache, so that random reads after a first
phase cost what reads of a stored member cost.

A program that maps shared libraries out of a mounted wheel (a loader, ``import torch``) reads a
big deflated member page by page at random. From a checkpoint every such read decodes up to the
checkpoint spacing (2 MiB) to serve a page: in the members benchmark 100 random 4 KiB reads of
a 300 MB member cost ~2.5 ms each, decoding ~1 MiB per 4 KiB served, at every read again.

Cells. A read that the handle's stream cannot serve by going on (not in its window, not just
ahead of it, not walking on: see ``CompressedReader``) is served from the member's *decoded
cells*: its decoded bytes, split like any remote object into 2 MiB cells of 64 KiB blocks and
cached under a key of their own (the archive's cache key, which holds its ETag and size, plus
the member's offset: a replaced archive never serves its old decoded bytes). A missing cell is
decoded whole, once, from the checkpoint at its start (checkpoints fall at cell boundaries);
the block cache's single flight makes concurrent readers of one cell share that decode, and its
tiers keep the result (memory, then the disk cache under its cap and the shared directory's
rules). A member read once at a few offsets costs a cell per offset, never a full decode; reads
in order (``cat``, a zarr chunk read whole) stay with the stream, so a member read in order is
not cached twice (compressed and decoded).

Fill. A cell on demand costs a 2 MiB decode (~6 ms measured: more than the ~2.5 ms of a read
from a checkpoint), so a reader that goes on reading at random would still pay a decode per new
cell. Once FILL_AFTER cells of a member were made on demand, the rest of the member is decoded
in order into its cells by one background thread per engine (each byte decoded once; reads
meanwhile take over or wait for the cell they need): from then on every read is a cache hit.
Measured (docs/BENCHMARKS.md, "Decoded cells"): the loader case touches every cell of a 300 MB
member, so it reaches FILL_AFTER after its first few random faults; a member read at a handful
of offsets stays under it. A fill needs room: the member must take at most a quarter of the
disk cache (of the memory cache without one), as spill files must.
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
from .checkpoints import CheckpointStore
from .decoders import decoder_memory
from .streams import PIECE, Stream

if TYPE_CHECKING:
    from ..view import MemberView

log = logging.getLogger(__name__)

CELL = MAX_REQUEST  # decoded bytes are cached and decoded in cells of this size
FILL_AFTER = 8  # cells of a member made on demand before the rest is decoded in the background
_TRACKED = 4096  # members whose on-demand cells are counted (least recently used forgotten)


class CellFills:
    """Counts the cells each member had made on demand and fills members that passed
    FILL_AFTER, one at a time, on a thread of its own (one per engine)."""

    def __init__(self) -> None:
        self._demand: OrderedDict[str, int] = OrderedDict()  # member version -> cells
        self._started: set[str] = set()
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

    def close(self) -> None:
        self.closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)


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
        room = cache.disk.capacity if cache.disk is not None else cache.memory.capacity
        self.fillable = FILL_AFTER * CELL < size <= room // 4

    def read(self, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)`` of the member (at most CELL: one or two cells)."""
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        first_block = offset // self.cache.block_size
        if self.cache.memory.get(self.key, first_block) is None:
            # Claim the whole cells (one decode each), not only the blocks of this read: the
            # read then takes its own cell's decode over, or waits for a concurrent reader's.
            start = offset // CELL * CELL
            self.cache.prefetch(self.key, self.size, start, -(-end // CELL) * CELL,
                                self._on_demand)
        return self.cache.read(self.key, self.size, offset, end, self._on_demand)

    def _on_demand(self, start: int, end: int) -> bytes:
        data = self._decode(start, end)
        self.fills.made_on_demand(self)
        return data

    def fill(self) -> None:
        """Make every missing cell, in order (each from the checkpoint the last one made)."""
        bs = self.cache.block_size
        runs = self.cache.runs
        for start in range(0, self.size, CELL):
            if self.fills.closed:
                return
            if self.cache.memory.get(self.key, start // bs) is not None or \
                    runs is not None and runs.holding(self.key, start // bs):
                continue
            try:
                self.cache.read(self.key, self.size, start, start + CELL, self._decode)
            except ZipmountError as exc:  # replaced, unreachable, corrupt: reads will tell
                log.info("stopped decoding %s into the cache: %s", self.view.entry.name, exc)
                return

    def _decode(self, start: int, end: int) -> bytes:
        """Decoded bytes ``[start, end)`` (within one cell), from the checkpoint before them."""
        charge = Pinned()
        self.budget.charge(charge, decoder_memory(self.view.entry) + PIECE)
        try:
            stream = Stream(self.view, self.checkpoints, self.checkpoints.nearest(
                self.view.version, start))
            parts = []
            while stream.out_pos < end:
                piece = stream.decode()
                at = stream.out_pos - len(piece)
                if stream.out_pos > start:
                    parts.append(memoryview(piece)[max(0, start - at): end - at])
            self.cache.stats.add("cells_decoded")
            self.cache.stats.add("cell_bytes_decoded", stream.out_pos - stream.started_at)
            return b"".join(parts)
        finally:
            self.budget.release(charge)
