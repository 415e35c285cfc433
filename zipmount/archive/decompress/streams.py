"""Streams: a zip member decompressed forward in bounded memory, read at any offset per handle.

Why not :class:`zipfile.ZipExtFile`: it can only seek by restarting from the member's start
(``cat`` of a big deflated member, whose concurrent readahead READs arrive slightly out of
order, restarted at every backward step). Here:

- **Bounded per call.** Every ``decompress()`` call gets ``max_length`` (at most PIECE bytes of
  output, see :mod:`.decoders`) and at most INPUT_PIECE bytes of compressed input, read from the
  block cache. The CRC-32 is computed as the data goes; at the declared size it must match, and
  data that ends before the declared size is an error (:class:`ArchiveError`, EIO). Bytes past
  the declared size are not served (as zipfile does; the CRC covers the declared bytes).
- **Bounded per handle.** A :class:`MemberStream` (one per open file) holds one decoder and a
  *window* of the last WINDOW bytes it produced (plus the read in progress), so the kernel's
  slightly out-of-order readahead READs on one handle are served from the window. A closed
  handle *parks* its stream (:class:`~.park.StreamPark`, a few streams per engine) for the
  member's next handle: open-read-close loops go on where the last handle stopped.
- **Checkpoints (deflate, :mod:`.checkpoints`).** A stream starts from the member's checkpoint
  nearest before the offset it wants, so a random read costs at most ``spacing`` bytes of
  decompression, never a restart from the start.
- **bzip2/LZMA** decoders cannot be copied, so they have no checkpoints: forward reads stream,
  backward steps inside the window are free, and a backward step beyond the window restarts
  from the member's start — unless the member gets a *spill file* (``Archive.spill_path``):
  with a disk cache, a bzip2/LZMA member of at least SPILL_MIN bytes (and at most a quarter of
  the disk cache) is decompressed once into the disk cache at its first such step, or at a
  handle's first read beyond WINDOW, and read from there. Deflate members never spill: their
  random reads are served from decoded cells in the block cache (:mod:`.cells`), each made
  once from a checkpoint. Without a disk cache (or when the
  spill cannot be written), random access into a big bzip2/LZMA member costs a decompression
  from its start per backward jump: bounded memory, unbounded time.
"""

from __future__ import annotations

import threading
import zipfile
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ...errors import ArchiveError
from ..readahead import Prefetcher, readahead_max
from .budget import Pinned
from .checkpoints import Checkpoint, CheckpointStore, checkpoint_spacing
from .decoders import CORRUPT_DATA, crc32, decoder_memory, make_decoder

if TYPE_CHECKING:
    from ..view import MemberView
    from .budget import DecoderBudget
    from .park import StreamPark

PIECE = 256 * 1024  # output per decompress() call
INPUT_PIECE = 64 * 1024  # compressed input per cache read (one block)
WINDOW = 2 * 1024 * 1024  # recent output kept per handle (the kernel's readahead reorders ~1.5 MiB)


class Stream:
    """Decompresses one member forward from its start or from a checkpoint (``checkpoints``:
    where this stream records its own and finds the next one; None: none recorded)."""

    def __init__(self, view: MemberView, checkpoints: CheckpointStore | None,
                 start: Checkpoint | None = None) -> None:
        self.cached = cached = view.cached
        self.entry = entry = view.entry
        self.data_end = view.data_end
        self.checkpoints = checkpoints
        self.member = member = view.version
        self.prefetcher = Prefetcher(cached, readahead_max(cached.cache.memory.capacity))
        if start is None:
            self.decoder = make_decoder(entry)
            self.in_pos, self.out_pos, self.crc = view.data_start, 0, 0
        else:
            decoder = start.decoder.copy()  # the checkpoint itself stays as it was
            assert decoder is not None
            self.decoder = decoder
            self.in_pos, self.out_pos, self.crc = start.in_pos, start.out_pos, start.crc
        self.started_at, self.started_in = self.out_pos, self.in_pos
        # From a checkpoint, the input up to the next one is what a random read needs at most:
        # fetched at once (in parallel requests) instead of read-ahead guessed from the reads.
        following = checkpoints.following(member, self.out_pos) if start and checkpoints else None
        self.known_until = following.in_pos if following is not None else 0
        self.spacing = checkpoint_spacing(entry.size)
        self.copyable = checkpoints is not None and entry.method == zipfile.ZIP_DEFLATED
        self.fed_last = False  # the end of the input was fed once already

    def _fail(self, why: str) -> ArchiveError:
        return ArchiveError(f"{self.entry.name}: {why}")

    def decode(self, stop: int | None = None, most: int = PIECE) -> bytes:
        """The next at most ``most`` bytes of the member, not past output offset ``stop``; b""
        at its end (declared size reached). With ``most`` above PIECE the compressed input is
        fed up to ``most // 2`` bytes at a time, so that one call can fill it (a decoded cell
        made in one piece is kept as it is, not joined from pieces).

        Raises ArchiveError on corrupt data, a CRC mismatch (with the piece that ends the
        member) or data that ends before the declared size.
        """
        size = self.entry.size
        if self.out_pos >= (size if stop is None else min(size, stop)):
            return b""
        while True:
            if self.decoder.eof:  # before the declared size: nothing more will come
                raise self._fail(f"data ends after {self.out_pos} bytes, {size} declared")
            data = b""
            # For a cell-sized piece, input held back by the last call is topped up with the
            # next input piece when it is shorter than one: a cell of bytes that compress 2:1
            # or better comes out of one call (a copy of under ``most`` input bytes), not out
            # of two joined. (Input pieces of ``most`` bytes would cover any ratio, but their
            # copies cost more than the joins they save: docs/BENCHMARKS.md.)
            held = self.decoder.held_input() if most > PIECE and self.in_pos < self.data_end \
                else None
            if self.decoder.needs_input() or (held is not None and held < most // 2):
                if self.in_pos < self.data_end:
                    end = min(self.in_pos + max(INPUT_PIECE, most // 2), self.data_end)
                    if self.in_pos >= self.known_until:
                        self.prefetcher.observe(self.in_pos, end, self.data_end)
                    elif self.in_pos == self.started_in:
                        self.cached.prefetch(self.in_pos, min(self.known_until, self.data_end,
                                                              self.in_pos + self.prefetcher.window_max))
                    data = self.cached.read(self.in_pos, end)
                    if not data:
                        raise self._fail("member data runs past the end of the archive")
                    self.in_pos += len(data)
                elif self.fed_last:
                    raise self._fail(f"data ends after {self.out_pos} bytes, {size} declared")
                else:
                    self.fed_last = True  # one call without input: output the decoder holds
            try:
                # Pieces end at multiples of the spacing: checkpoints fall exactly there.
                limit = min(most, (size if stop is None else min(size, stop)) - self.out_pos,
                            self.spacing - self.out_pos % self.spacing)
                out = self.decoder.decompress(data, limit)
            except CORRUPT_DATA as exc:
                raise self._fail(f"corrupt compressed data ({exc})") from None
            if out:
                break
        self.out_pos += len(out)
        self.crc = crc32(out, self.crc)
        if self.out_pos >= size and self.crc != self.entry.crc:
            raise self._fail("CRC-32 mismatch (corrupt member)")
        if self.copyable and self.out_pos < size:
            index = self.out_pos // self.spacing
            assert self.checkpoints is not None
            if index and not self.checkpoints.has(self.member, index, self.spacing):
                copy = self.decoder.copy()
                assert copy is not None
                self.checkpoints.add(self.member, Checkpoint(
                    self.out_pos, self.in_pos - self.decoder.pending(), self.crc, copy))
        return out


def member_chunks(view: MemberView, budget: DecoderBudget) -> Iterator[bytes]:
    """The whole member, decompressed and checked, in pieces of at most PIECE bytes."""
    charge = Pinned()
    budget.charge(charge, decoder_memory(view.entry) + PIECE)
    try:
        stream = Stream(view, None)
        while piece := stream.decode():
            yield piece
    finally:
        budget.release(charge)


class MemberStream:
    """Reads at any offset of one compressed member, for one open file handle.

    Holds one :class:`Stream` and the window of its recent output; moves by the member's
    checkpoints when that is shorter than decompressing forward from where it is. What it holds
    is charged to the engine's decoder budget (:mod:`.budget`), which may drop it while idle.
    Its reads take turns (a stream has one position).
    """

    def __init__(self, view: MemberView, checkpoints: CheckpointStore | None,
                 park: StreamPark | None, budget: DecoderBudget) -> None:
        self.view = view
        self.entry = entry = view.entry
        self.member = member = view.version
        self.checkpoints = checkpoints
        self.park = park
        self.budget = budget
        self.cost = decoder_memory(entry) + min(entry.size, WINDOW) + min(entry.size, PIECE)
        self.parked = False
        self.stream: Stream | None = None
        self.window: deque[tuple[int, bytes]] = deque()  # contiguous, ends at stream.out_pos
        self.window_bytes = 0
        self._lock = threading.Lock()
        parked = park.take(member) if park is not None else None
        if parked is not None:
            with parked._lock:  # the budget may be dropping it right now
                self.stream, self.window, self.window_bytes = \
                    parked.stream, parked.window, parked.window_bytes
                parked._drop()
            budget.release(parked)
            if self.stream is not None:
                budget.charge(self, self.cost)

    @property
    def window_start(self) -> int:
        return self.window[0][0] if self.window else self.position

    @property
    def position(self) -> int:
        """Where the stream is (what the next decoded byte's offset would be)."""
        return self.stream.out_pos if self.stream is not None else 0

    def continues(self, offset: int) -> bool:
        """Whether a read at ``offset`` is served by going on: from the window, or at most
        WINDOW ahead of it (no more decoding than from a checkpoint), or (no stream yet) near
        the member's start."""
        with self._lock:
            if self.stream is None:
                return offset < WINDOW
            return self.window_start <= offset <= self.position + WINDOW

    def needs_restart(self, offset: int) -> bool:
        """Whether a read at ``offset`` would decompress from the member's start to get there
        (again, or for the first read of this handle, past at least WINDOW bytes)."""
        if self.stream is None and offset < WINDOW or self.stream is not None \
                and offset >= self.window_start:
            return False
        return self.checkpoints is None or self.checkpoints.nearest(self.member, offset) is None

    def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.entry.size)
        if offset >= end:
            return b""
        with self._lock:
            try:
                self._seek(offset)
                assert self.stream is not None
                while self.stream.out_pos < end:
                    piece = self.stream.decode()
                    self._remember(self.stream.out_pos - len(piece), piece, keep_from=offset)
                return self._from_window(offset, end)
            except ArchiveError:
                self._drop()  # a broken stream is never continued, nor parked
                self.budget.release(self)
                raise
            finally:
                self.budget.touch(self)

    def _seek(self, offset: int) -> None:
        """Put the stream where reading on to ``offset`` is cheapest."""
        here = self.stream is not None and self.window_start <= offset
        ckpt = self.checkpoints.nearest(self.member, offset) if self.checkpoints else None
        if here and (ckpt is None or ckpt.out_pos <= self.position + PIECE):
            return  # in the window, or not far enough ahead for a checkpoint to save work
        self._drop()
        if not here:  # a stream that was dropped (or never made) takes its charge again
            self.budget.charge(self, self.cost)
        self.stream = Stream(self.view, self.checkpoints, ckpt)

    def _remember(self, start: int, piece: bytes, keep_from: int) -> None:
        self.window.append((start, piece))
        self.window_bytes += len(piece)
        while self.window_bytes - len(self.window[0][1]) >= WINDOW and \
                self.window[0][0] + len(self.window[0][1]) <= keep_from:
            self.window_bytes -= len(self.window.popleft()[1])

    def _from_window(self, offset: int, end: int) -> bytes:
        parts = []
        for start, piece in self.window:
            if start + len(piece) <= offset:
                continue
            if start >= end:
                break
            parts.append(memoryview(piece)[max(0, offset - start): end - start])
        if len(parts) == 1 and isinstance(parts[0].obj, bytes) \
                and len(parts[0]) == len(parts[0].obj):
            return parts[0].obj  # a whole piece: no copy
        return b"".join(parts)

    def _drop(self) -> None:
        self.stream = None
        self.window = deque()
        self.window_bytes = 0

    def try_drop(self) -> bool:
        """Drop the stream unless a read is using it (the budget's call, under its lock)."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self.parked and self.park is not None:
                self.park.discard(self.member, self)
            self._drop()
            return True
        finally:
            self._lock.release()

    def release(self) -> None:
        """Drop the stream and its charge."""
        with self._lock:
            self._drop()
        self.budget.release(self)

    def close(self) -> None:
        """Park the stream for the member's next handle (this one reads no more)."""
        with self._lock:
            keep = self.stream is not None and self.park is not None
            self.parked = keep
        if keep:
            assert self.park is not None
            self.park.park(self.member, self)
        else:
            self.release()
