"""Checkpoints of deflated members: copies of a decoder's state for cheap random access.

Every ``spacing`` bytes of output (CHECKPOINT_EVERY, or a multiple of it for members so big that
they would need over CHECKPOINTS_PER_MEMBER; exactly at the multiples of the spacing, so that a
decode of an aligned range starts at a checkpoint) a stream records a copy of its decoder
(``zlib.decompressobj().copy()``, ~35 KiB) with the compressed offset and the CRC-32 at that
point, as indexed_gzip and ratarmount do for gzip. Checkpoints belong to the member, not the
handle: every handle of the member, also one opened later, starts from the nearest one at or
before the offset it wants. They live in one :class:`CheckpointStore` per daemon (LRU by member,
CHECKPOINT_BUDGET bytes in all). A random read thus costs at most ``spacing`` bytes of
decompression (a few ms), never a restart from the start. bzip2/LZMA decoders cannot be copied,
so they have no checkpoints.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from dataclasses import dataclass

from .decoders import Decoder

CHECKPOINT_EVERY = 2 * 1024 * 1024
CHECKPOINTS_PER_MEMBER = 256  # 2 MiB apart up to 512 MiB members (~10 MiB of checkpoints)
CHECKPOINT_COST = 40 * 1024  # what one zlib decoder copy takes (measured ~35 KiB)
CHECKPOINT_BUDGET = 32 * 1024 * 1024


def checkpoint_spacing(size: int) -> int:
    """Output bytes between the checkpoints of a member of ``size`` bytes."""
    stretches = -(-size // (CHECKPOINT_EVERY * CHECKPOINTS_PER_MEMBER))
    return CHECKPOINT_EVERY * max(1, stretches)


@dataclass(frozen=True)
class Checkpoint:
    """A decoder state at output offset ``out_pos``: feed it input from ``in_pos`` on."""

    out_pos: int
    in_pos: int
    crc: int
    decoder: Decoder


class CheckpointStore:
    """Checkpoints of every member of a daemon, least recently used members dropped first."""

    def __init__(self, budget: int = CHECKPOINT_BUDGET) -> None:
        self.budget = budget
        self.used = 0
        self._members: OrderedDict[str, tuple[list[int], dict[int, Checkpoint]]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, member: str, ckpt: Checkpoint) -> None:
        with self._lock:
            positions, by_pos = self._members.setdefault(member, ([], {}))
            self._members.move_to_end(member)
            if ckpt.out_pos in by_pos:
                return
            bisect.insort(positions, ckpt.out_pos)
            by_pos[ckpt.out_pos] = ckpt
            self.used += CHECKPOINT_COST
            while self.used > self.budget and self._members:
                _, (dropped, _) = self._members.popitem(last=False)
                self.used -= CHECKPOINT_COST * len(dropped)

    def has(self, member: str, index: int, spacing: int) -> bool:
        """Whether ``member`` has a checkpoint in the ``index``-th stretch of ``spacing`` bytes."""
        with self._lock:
            positions, _ = self._members.get(member, ((), None))
            i = bisect.bisect_left(positions, index * spacing)
            return i < len(positions) and positions[i] < (index + 1) * spacing

    def nearest(self, member: str, offset: int) -> Checkpoint | None:
        """The checkpoint of ``member`` closest at or before output offset ``offset``."""
        with self._lock:
            found = self._members.get(member)
            if found is None:
                return None
            self._members.move_to_end(member)
            positions, by_pos = found
            i = bisect.bisect_right(positions, offset)
            return by_pos[positions[i - 1]] if i else None

    def following(self, member: str, offset: int) -> Checkpoint | None:
        """The first checkpoint of ``member`` after output offset ``offset``."""
        with self._lock:
            positions, by_pos = self._members.get(member, ([], {}))
            i = bisect.bisect_right(positions, offset)
            return by_pos[positions[i]] if i < len(positions) else None

