"""Streams of closed handles, kept for the next handle of their member."""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .streams import Stream

PARKED_MAX = 4  # streams of closed handles kept for the next handle of their member


class StreamPark:
    """Streams of closed handles, each kept for the next handle of its member (LRU, at most
    ``slots`` in all): a program that opens, reads and closes again and again goes on where the
    last handle stopped instead of decompressing its way there anew."""

    def __init__(self, slots: int = PARKED_MAX) -> None:
        self.slots = slots
        self._streams: OrderedDict[str, tuple[Stream, deque[tuple[int, bytes]], int]] = \
            OrderedDict()
        self._lock = threading.Lock()

    def park(self, member: str, state: tuple[Stream, deque[tuple[int, bytes]], int]) -> None:
        with self._lock:
            self._streams[member] = state
            self._streams.move_to_end(member)
            while len(self._streams) > self.slots:
                self._streams.popitem(last=False)

    def take(self, member: str) -> tuple[Stream, deque[tuple[int, bytes]], int] | None:
        with self._lock:
            return self._streams.pop(member, None)
