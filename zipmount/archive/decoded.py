"""Decoded bytes of deflated members kept in the block cache, so that random reads after the
first cost what reads of a stored member cost.

A program that maps shared libraries out of a mounted wheel (a loader, ``import torch``) reads a
big deflated member page by page at random. From a checkpoint every such read decodes up to the
checkpoint spacing (2 MiB) to serve a page: in the members benchmark 100 random 4 KiB reads of
a 300 MB member decoded ~1 MiB per 4 KiB served, ~2.5 ms a read, again at every read.

Policy. A read that the handle's stream cannot serve by going on (not in its window, not just
ahead of it; see :meth:`CompressedReader._read`) is served from the member's *decoded cells*:
the member's decoded bytes, split like any remote object into 2 MiB cells of 64 KiB blocks and
cached under a key of their own (the archive's cache key, which holds its ETag and size, plus
the member's offset: a replaced archive never serves its old decoded bytes). A missing cell is
decoded whole, once, from the checkpoint at its start (checkpoints fall at cell boundaries);
the block cache's single flight makes concurrent readers of one cell share that decode, and its
tiers keep the result (memory, then the disk cache under its cap and the shared directory's
rules). So each byte of the member is decoded about once, however often it is read, and a
member read once at a few offsets costs a cell per offset, never a full decode. Why cells and
not a spill file of the whole member (what 063be49 did): the first random read of a 434 MB
member would pay its full decode (1.2-2.4 s measured) and the disk would hold all of it even
if only a few pages are ever read; with checkpoints the first read at an offset costs a decode
from the member's start only until the checkpoints exist (once per member, as a spill would),
and every cell after costs one 2 MiB decode (~5 ms). Reads that walk on (``cat``, a zarr chunk
read whole, a reader going on where it stopped) stay with the handle's stream, so a member read
in order is never written to the cache twice (compressed and decoded). Measured figures are in
docs/BENCHMARKS.md ("Decoded cells").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..cache import MAX_REQUEST
from .decompress import CheckpointStore, DecoderBudget, Stream
from .decompress.budget import Pinned
from .decompress.decoders import decoder_memory
from .decompress.streams import PIECE

if TYPE_CHECKING:
    from .view import MemberView

CELL = MAX_REQUEST  # decoded bytes are cached and decoded in cells of this size


class DecodedCells:
    """Reads of one deflated member served from its decoded cells in the block cache."""

    def __init__(self, view: MemberView, checkpoints: CheckpointStore,
                 budget: DecoderBudget) -> None:
        self.view = view
        self.checkpoints = checkpoints
        self.budget = budget
        self.cache = view.cached.cache
        self.size = view.entry.size
        # The archive's key names its version (ETag, size); the offset names the member in it.
        self.key = f"{view.cached.key}m{view.entry.header_offset}"

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
            self.cache.prefetch(self.key, self.size, start, -(-end // CELL) * CELL, self._decode)
        return self.cache.read(self.key, self.size, offset, end, self._decode)

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
