"""Streams of closed handles, kept for the next handle of their member."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .streams import MemberStream

PARKED_MAX = 4  # streams of closed handles kept for the next handle of their member


class StreamPark:
    """Streams of closed handles, each kept for the next handle of its member (LRU, at most
    ``slots`` in all): a program that opens, reads and closes again and again goes on where the
    last handle stopped instead of decompressing its way there anew. What they hold stays
    charged to the decoder budget, which drops them first when it needs room."""

    def __init__(self, slots: int = PARKED_MAX) -> None:
        self.slots = slots
        self._streams: OrderedDict[str, MemberStream] = OrderedDict()
        self._lock = threading.Lock()

    def park(self, member: str, stream: MemberStream) -> None:
        with self._lock:
            replaced = self._streams.pop(member, None)
            self._streams[member] = stream
            overflow = [replaced] if replaced is not None else []
            while len(self._streams) > self.slots:
                overflow.append(self._streams.popitem(last=False)[1])
        for old in overflow:  # outside the lock: the budget takes its own
            old.release()

    def take(self, member: str) -> MemberStream | None:
        with self._lock:
            return self._streams.pop(member, None)

    def discard(self, member: str, stream: MemberStream) -> None:
        """Forget ``stream`` (the budget dropped it)."""
        with self._lock:
            if self._streams.get(member) is stream:
                del self._streams[member]

    def clear(self) -> None:
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            stream.release()
