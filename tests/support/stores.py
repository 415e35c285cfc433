"""Stores for tests, never imported by the daemon: objects in memory, and faults over any store.

:class:`MemoryStore` is a :class:`zipmount.store.Store` of objects held in memory, each version
with its own ETag (the MD5 of its bytes, quoted, as S3 gives for a single-part upload); it can
``put``, ``replace`` and ``delete`` objects, and answers a read pinned to a version it no
longer has as the source does: ``ObjectChanged`` (ESTALE), whether the object was replaced
(S3 answers 412 to ``If-Match``) or deleted (404).

:class:`FaultyStore` wraps any store and, per its current *rule*, answers calls with a fault.
The rules work as those of the TCP fault proxy (``tests/robust/faultproxy.py``): a rule is a
callable ``rule(call) -> action | None`` (None: forward), :func:`first_n` and :func:`always`
build the common ones, :meth:`FaultyStore.fault` applies one inside a ``with`` block, and every
call is logged. It stands where the source's own policy has already done its work, so a fault
is what the layers above the store see:

- ``Delay(seconds)``: answer after ``seconds``; a delay reaching the store's ``timeout`` ends
  the call as the source's deadline does (``SourceError``: "timed out after N s");
- ``Fail(error)``: raise ``error`` (default: the 503 SlowDown the source gave up retrying);
- ``Hang()``: never answer: the call ends with the timeout error after ``timeout`` seconds,
  or as soon as the ``fault`` block ends (like the proxy's hung requests being released);
- ``ShortBody(fraction)``: a read answers only the first ``fraction`` of its bytes;
- ``ChangedETag()``: the object is re-uploaded with the same bytes under a new ETag (as a
  multipart copy does): a stat or listing shows the new identity from then on, reads pinned
  to the old one fail with ``ObjectChanged``, reads pinned to the new one get the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from zipmount.errors import ObjectChanged, ObjectNotFound, SourceError, ZipmountError
from zipmount.store import ObjectInfo, Store

MAX_FAULT_SECONDS = 120.0  # no hang or delay outlives this, whatever the test does


class MemoryStore:
    """Objects in memory, one current version each; a :class:`zipmount.store.Store`."""

    def __init__(self, location: str = "memory|test") -> None:
        self.location = location
        self.timeout = 30.0  # never reached: every call answers at once
        self._objects: dict[str, tuple[ObjectInfo, bytes]] = {}
        self._buckets: set[str] = set()
        self._lock = threading.Lock()
        self._clock = 1_700_000_000.0
        self.reads = 0  # range reads answered with bytes

    # -- changes (what another writer does to the store) -------------------------------------------

    def put(self, path: str, data: bytes) -> ObjectInfo:
        """Create or replace the object at ``path`` with ``data``; its new identity."""
        with self._lock:
            self._clock = max(time.time(), self._clock + 1.0)  # distinct whole seconds
            info = ObjectInfo(path=path, size=len(data), mtime=float(int(self._clock)),
                              etag=f'"{hashlib.md5(data).hexdigest()}"')
            self._objects[path] = (info, bytes(data))
            self._buckets.add(path.partition("/")[0])
            return info

    def replace(self, path: str, data: bytes) -> ObjectInfo:
        """Replace the existing object at ``path`` (KeyError if there is none)."""
        if path not in self._objects:
            raise KeyError(path)
        return self.put(path, data)

    def delete(self, path: str) -> None:
        with self._lock:
            del self._objects[path]

    def current(self, path: str) -> ObjectInfo | None:
        """The identity the store holds now for ``path`` (no call counted)."""
        with self._lock:
            got = self._objects.get(path)
            return got[0] if got else None

    # -- the Store protocol ----------------------------------------------------------------------

    def stat(self, path: str) -> ObjectInfo | None:
        key = path.rstrip("/")
        with self._lock:
            if key in self._objects and not path.endswith("/"):
                return self._objects[key][0]
            if any(k.startswith(key + "/") for k in self._objects):
                return None
        raise ObjectNotFound(f"object not found: {path}")

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        below = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        with self._lock:
            return [info for key, (info, _) in sorted(self._objects.items())
                    if key.startswith(below)]

    def exists(self, path: str) -> bool:
        key = path.rstrip("/")
        with self._lock:
            return key in self._buckets or key in self._objects or \
                any(k.startswith(key + "/") for k in self._objects)

    def read(self, obj: ObjectInfo, start: int, end: int) -> bytes:
        with self._lock:
            got = self._objects.get(obj.path)
            if got is None:
                raise ObjectChanged(f"read {obj.path}: the object was deleted on the server")
            info, data = got
            if (info.etag, info.size) != (obj.etag, obj.size):
                raise ObjectChanged(f"read {obj.path}: the object changed on the server "
                                    "(ETag no longer matches)")
            self.reads += 1
            return data[start: min(end, info.size)]


# -- faults -----------------------------------------------------------------------------------------

@dataclass
class Call:
    """One call made to a :class:`FaultyStore` (``start``/``end``: a read's range)."""

    op: str  # "stat", "list_objects", "exists" or "read"
    path: str
    start: int | None = None
    end: int | None = None
    t: float = field(default_factory=time.monotonic)
    action: str = "forward"

    @property
    def is_read(self) -> bool:
        return self.op == "read"


@dataclass(frozen=True)
class Delay:
    seconds: float


@dataclass(frozen=True)
class Fail:
    error: ZipmountError = field(
        default_factory=lambda: SourceError("get failed: 503 SlowDown (Please reduce your request rate.)"))


@dataclass(frozen=True)
class Hang:
    pass


@dataclass(frozen=True)
class ShortBody:
    fraction: float = 0.5  # of the bytes answered


@dataclass(frozen=True)
class ChangedETag:
    pass


Action = Delay | Fail | Hang | ShortBody | ChangedETag
Rule = Callable[[Call], "Action | None"]


def first_n(n: int, action: Action, match: Callable[[Call], bool] = Call.is_read.fget) -> Rule:
    """A rule answering the first ``n`` calls that ``match`` (default: reads) with ``action``."""
    lock = threading.Lock()
    left = [n]

    def rule(call: Call) -> Action | None:
        if not match(call):
            return None
        with lock:
            if left[0] <= 0:
                return None
            left[0] -= 1
        return action

    return rule


def always(action: Action, match: Callable[[Call], bool] = lambda c: True) -> Rule:
    return lambda call: action if match(call) else None


class FaultyStore:
    """Any :class:`zipmount.store.Store` with faults injected per the current rule.

    ``timeout``: the deadline the wrapped store promises (the source's ``--timeout``): a hang
    or a long delay ends with the error the source raises when it runs out.
    """

    def __init__(self, inner: Store, timeout: float = 30.0) -> None:
        self.inner = inner
        self.location = inner.location
        self.timeout = timeout
        self.rule: Rule | None = None
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        # path -> (the inner store's ETag, the ETag shown instead) after a ChangedETag fault
        self._renamed: dict[str, tuple[str, str]] = {}
        self._renames = 0

    @contextlib.contextmanager
    def fault(self, rule: Rule) -> Iterator[FaultyStore]:
        """Apply ``rule`` inside the block (the log is cleared first); hung and delayed calls
        are released when it ends."""
        self.clear()
        self.start(rule)
        try:
            yield self
        finally:
            self.lift()

    def start(self, rule: Rule) -> None:
        """Apply ``rule`` from now on (until :meth:`lift`)."""
        self._released.clear()
        self.rule = rule

    def lift(self) -> None:
        """No more faults; hung and delayed calls are released."""
        self.rule = None
        self._released.set()

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()

    def log(self, match: Callable[[Call], bool] = lambda c: True) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if match(c)]

    # -- the Store protocol ----------------------------------------------------------------------

    def stat(self, path: str) -> ObjectInfo | None:
        action = self._decide(Call("stat", path))
        obj = self.inner.stat(path)
        return self._shown(obj, action) if obj is not None else None

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        action = self._decide(Call("list_objects", prefix))
        return [self._shown(obj, action) for obj in self.inner.list_objects(prefix)]

    def exists(self, path: str) -> bool:
        self._decide(Call("exists", path))
        return self.inner.exists(path)

    def read(self, obj: ObjectInfo, start: int, end: int) -> bytes:
        action = self._decide(Call("read", obj.path, start, end))
        if isinstance(action, ChangedETag):
            current = self.inner.stat(obj.path)
            if current is not None:
                self._rename(obj.path, current.etag)
        data = self.inner.read(self._unshown(obj), start, end)
        if isinstance(action, ShortBody):
            return data[: int(len(data) * action.fraction)]
        return data

    # -- faults ----------------------------------------------------------------------------------

    def _decide(self, call: Call) -> Action | None:
        """Log ``call`` and apply its rule's delay, hang or failure; the action to finish with."""
        rule = self.rule
        action = rule(call) if rule is not None else None
        call.action = type(action).__name__ if action is not None else "forward"
        with self._lock:
            self.calls.append(call)
        if isinstance(action, Fail):
            raise action.error
        if isinstance(action, Hang | Delay):
            wait = self.timeout if isinstance(action, Hang) else min(action.seconds, self.timeout)
            released = self._released.wait(min(wait, MAX_FAULT_SECONDS))
            if isinstance(action, Hang) or (not released and action.seconds >= self.timeout):
                raise SourceError(f"timed out after {self.timeout:g} s talking to "
                                  f"{self.location} ({call.op} {call.path})")
        return action

    def _rename(self, path: str, inner_etag: str) -> None:
        """Re-upload ``path`` (whose inner version is ``inner_etag``) under a new ETag."""
        with self._lock:
            self._renames += 1
            self._renamed[path] = (inner_etag, f'"{inner_etag.strip(chr(34))}-{self._renames}"')

    def _shown(self, obj: ObjectInfo, action: Action | None) -> ObjectInfo:
        """``obj`` as this store shows it (under its new ETag if it was re-uploaded)."""
        if isinstance(action, ChangedETag):
            self._rename(obj.path, obj.etag)
        with self._lock:
            inner_etag, shown = self._renamed.get(obj.path, ("", ""))
        return replace(obj, etag=shown) if inner_etag == obj.etag else obj

    def _unshown(self, obj: ObjectInfo) -> ObjectInfo:
        """The inner store's identity of ``obj``, as this store shows it; an identity the
        re-upload replaced names no version the inner store holds."""
        with self._lock:
            inner_etag, shown = self._renamed.get(obj.path, ("", ""))
        if not inner_etag:
            return obj
        if obj.etag == shown:
            return replace(obj, etag=inner_etag)
        if obj.etag == inner_etag:
            return replace(obj, etag=f'"{inner_etag.strip(chr(34))}-replaced"')
        return obj
