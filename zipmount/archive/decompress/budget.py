"""One process-wide cap on decoder memory: decoders, the windows of recent output, parked streams.

Each stream (an open handle's, or a closed one's kept for its member's next handle) holds a
charge: its decoder's size (:func:`~.decoders.decoder_memory`) plus its window. When a new
charge would pass the cap, idle streams are dropped to make room, least recently used first,
parked ones before those of open handles; a dropped stream's handle starts again from a
checkpoint or the member's start at its next read (slower, never wrong). When every charge
belongs to a read in progress, the new one waits for one of them to end, at most ``timeout``.
A single charge bigger than the cap runs when nothing else is held, so any member the decoders
accept can be read.
"""

from __future__ import annotations

import errno
import threading
import time
from collections import OrderedDict
from typing import Protocol

from ...errors import ZipmountError

# One LZMA decoder with the biggest dictionary accepted (64 MiB) and its window fits.
DECODER_MEMORY = 72 * 1024 * 1024


class DecoderMemoryBusy(ZipmountError):
    """Every byte of the decoder budget stayed in use by reads in progress for ``timeout``."""

    errno = errno.EIO


class Holder(Protocol):
    """What holds a charge: a stream that may be dropped while idle."""

    @property
    def parked(self) -> bool:
        """Kept for a member's next handle (dropped before the streams of open handles)."""
        ...

    def try_drop(self) -> bool:
        """Drop what the charge stands for, unless in use now (never waits, never calls back
        into the budget); True if dropped."""
        ...


class Pinned:
    """A charge that cannot be dropped: a decode that runs to its end."""

    parked = False

    def try_drop(self) -> bool:
        return False


class DecoderBudget:
    """The decoder memory of one engine (see the module): ``used`` never passes ``capacity``
    but for one charge alone bigger than it; ``peak`` is the most ever used."""

    def __init__(self, capacity: int = DECODER_MEMORY, timeout: float = 30.0) -> None:
        self.capacity = capacity
        self.timeout = timeout
        self.used = 0
        self.peak = 0
        self._held: OrderedDict[Holder, int] = OrderedDict()  # least recently used first
        self._cond = threading.Condition(threading.Lock())

    def charge(self, holder: Holder, nbytes: int) -> None:
        """Hold ``nbytes`` for ``holder`` (instead of what it held), making room if needed."""
        deadline = time.monotonic() + self.timeout
        with self._cond:
            self.used -= self._held.pop(holder, 0)
            while self.used + nbytes > self.capacity and self._held:
                if self._drop_one():
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DecoderMemoryBusy(
                        f"decoder memory ({self.capacity} bytes) stayed in use by other reads "
                        f"for {self.timeout:g} s")
                self._cond.wait(left)
            self._held[holder] = nbytes
            self.used += nbytes
            self.peak = max(self.peak, self.used)

    def _drop_one(self) -> bool:
        for parked in (True, False):
            for holder in [h for h in self._held if h.parked == parked]:
                if holder.try_drop():
                    self.used -= self._held.pop(holder)
                    self._cond.notify_all()
                    return True
        return False

    def touch(self, holder: Holder) -> None:
        """``holder`` was just used (and is idle again: a waiting charge may take it)."""
        with self._cond:
            if holder in self._held:
                self._held.move_to_end(holder)
            self._cond.notify_all()

    def release(self, holder: Holder) -> None:
        with self._cond:
            self.used -= self._held.pop(holder, 0)
            self._cond.notify_all()

    def clear(self) -> None:
        """Drop every idle stream (the engine closes)."""
        with self._cond:
            while self._drop_one():
                pass
