"""The source: one fsspec filesystem plus the policy (deadline, retries, pinning) to read it."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ObjectChanged, ObjectNotFound, SourceError
from ..stats import Stats
from ..store import ObjectInfo
from .errors import is_transient, translate_error
from .filesystems import filesystem_location, fsspec_filesystem, s3_filesystem
from .options import StorageOptions
from .pinning import check_answer, object_info, pin_conditions

if TYPE_CHECKING:
    import fsspec

log = logging.getLogger(__name__)
T = TypeVar("T")


class Source:
    """The :class:`~zipmount.store.Store` of the daemon and the fsspec front-end: one fsspec
    filesystem plus the policy (deadline, retries, identity checks) to read it.

    The filesystem is built on first use: importing fsspec and s3fs (botocore, aiohttp) takes a
    noticeable part of a mount's start (docs/BENCHMARKS.md), which a mount served from the
    persisted index (no request at all) never pays.
    """

    def __init__(self, make_fs: Callable[[], fsspec.AbstractFileSystem], location: str,
                 options: StorageOptions, stats: Stats) -> None:
        self._make_fs = make_fs
        self._fs: fsspec.AbstractFileSystem | None = None
        self._fs_lock = threading.Lock()
        self.location = location  # e.g. "s3|https://minio:9000"; part of every cache key
        self.options = options
        self.stats = stats
        self._is_s3 = location.startswith("s3|")
        self._async = False
        self._known: dict[str, dict[str, Any]] = {}  # path -> details given by the caller

    @property
    def timeout(self) -> float:
        """The deadline of every call (``--timeout``, or the fsspec filesystem's)."""
        return self.options.timeout

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def for_url(cls, url: str, options: StorageOptions, stats: Stats) -> tuple[Source, str]:
        """Build the source for ``url``; return it and the protocol-less path inside it."""
        protocol, sep, rest = url.partition("://")
        if not sep:
            protocol, rest = "file", url
        if protocol in ("s3", "s3a"):
            location = f"s3|{options.endpoint_url or 'aws'}"
            path = rest.lstrip("/")
            source = cls(lambda: s3_filesystem(options), location, options, stats)
        elif protocol == "file":
            path = os.path.abspath(os.path.expanduser(rest))
            if rest.endswith("/"):
                path = path.rstrip("/") + "/"
            source = cls(lambda: fsspec_filesystem("file"), "file", options, stats)
        else:
            fs = fsspec_filesystem(protocol)
            path = fs._strip_protocol(url)
            if url.endswith("/") and not path.endswith("/"):
                path += "/"
            source = cls(lambda: fs, protocol, options, stats)
        return source, path

    @classmethod
    def for_filesystem(cls, fs: fsspec.AbstractFileSystem, options: StorageOptions, stats: Stats,
                       known: dict[str, Any] | None = None) -> Source:
        """A source over an fsspec filesystem someone already built (the fsspec front-end).

        ``known``: fsspec details (``info``) of an object already stat'ed by the caller, e.g. an
        open file's; the first ``stat`` of that path uses them instead of a request.
        """
        location = filesystem_location(fs)
        if options.endpoint_url is None and location.startswith("s3|") and location != "s3|aws":
            options = dataclasses.replace(options, endpoint_url=location[3:])  # for messages
        source = cls(lambda: fs, location, options, stats)
        if known and known.get("name"):
            source._known[known["name"].rstrip("/")] = known
        return source

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem, built (and its libraries imported) on first use."""
        if self._fs is None:
            with self._fs_lock:
                if self._fs is None:
                    from fsspec.asyn import AsyncFileSystem

                    fs = self._make_fs()
                    self._async = isinstance(fs, AsyncFileSystem) and fs.async_impl
                    self._fs = fs
        return self._fs

    # -- metadata -----------------------------------------------------------------------------

    def stat(self, path: str) -> ObjectInfo | None:
        """Identity of the object at ``path``; ``None`` if ``path`` is a directory/prefix."""
        known = self._known.pop(path.rstrip("/"), None)  # once: later stats revalidate
        info = known if known is not None else self._call(f"stat {path}", self._info, path)
        if info.get("type") == "directory":
            return None
        return object_info(path, info)

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object below ``prefix`` (recursive), one listing call."""
        found = self._call(f"list {prefix}", self._find, prefix)
        return [object_info(p, i) for p, i in found.items() if i.get("type") != "directory"]

    def exists(self, path: str) -> bool:
        """Whether ``path`` names an object, a prefix or a bucket."""
        return bool(self._call(f"stat {path}", self._exists, path))

    def _exists(self, timeout: float, path: str) -> bool:
        fs = self.fs
        if self._async:
            return self._run(timeout, fs._exists(path))
        return fs.exists(path)

    def _info(self, timeout: float, path: str) -> dict[str, Any]:
        fs = self.fs
        # A caller's filesystem (fsspec's fo=s3.open(...)) may answer from its listings
        # cache: a revalidation must ask the server.
        fs.invalidate_cache(path)
        if self._async:
            return self._run(timeout, fs._info(path))
        return fs.info(path)

    def _find(self, timeout: float, prefix: str) -> dict[str, dict[str, Any]]:
        fs = self.fs
        if self._async:
            return self._run(timeout, fs._find(prefix, detail=True))
        return fs.find(prefix, detail=True)

    # -- data -----------------------------------------------------------------------------------

    def read(self, obj: ObjectInfo, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of exactly version ``obj``; raises ObjectChanged otherwise (the
        object replaced or deleted)."""
        end = min(end, obj.size)
        if start >= end:
            return b""
        t0 = time.monotonic()
        try:
            data = self._call(f"read {obj.path} [{start}, {end})", self._read_once, obj, start, end)
        except ObjectNotFound:  # the version pinned is gone: stale, like a replaced one
            raise ObjectChanged(f"read {obj.path}: the object was deleted on the server") from None
        if len(data) != end - start:
            if len(data) > end - start:
                raise SourceError(f"read {obj.path}: the server ignored the Range header "
                                  f"({len(data)} bytes for a {end - start}-byte range)")
            raise ObjectChanged(f"{obj.path}: short read ({len(data)} of {end - start} bytes)")
        self.stats.record_request(len(data), time.monotonic() - t0)
        return data

    def _read_once(self, timeout: float, obj: ObjectInfo, start: int, end: int) -> bytes:
        fs = self.fs
        if self._is_s3:
            return self._run(timeout, self._s3_get(obj, start, end))
        if self._async:
            return self._run(timeout, fs._cat_file(obj.path, start=start, end=end))
        return fs.cat_file(obj.path, start=start, end=end)

    async def _s3_get(self, obj: ObjectInfo, start: int, end: int) -> bytes:
        bucket, key, version = self.fs.split_path(obj.path)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{end - 1}",
                                  **pin_conditions(obj)}
        if version:
            kwargs["VersionId"] = version
        resp = await self.fs._call_s3("get_object", **kwargs)
        try:
            check_answer(obj, resp)
            return await resp["Body"].read()
        finally:
            resp["Body"].close()

    # -- policy -----------------------------------------------------------------------------------

    def _run(self, timeout: float, coro: Any) -> Any:
        """Run a coroutine on fsspec's loop; it is cancelled after ``timeout`` seconds."""
        from fsspec.asyn import sync

        return sync(self.fs.loop, _identity, coro, timeout=timeout)

    def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn`` with retries and backoff, all inside one deadline; translate errors."""
        deadline = time.monotonic() + self.options.timeout
        attempt = 0
        while True:
            try:
                return fn(max(0.1, deadline - time.monotonic()), *args)
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                err = translate_error(exc, what, self.options)
                attempt += 1
                delay = random.uniform(0, min(2.0, 0.1 * 2**attempt))  # full jitter
                transient = is_transient(exc, err)
                if not transient or attempt > self.options.retries or \
                        time.monotonic() + delay >= deadline:
                    self.stats.record_error()
                    raise err from None
                log.info("retrying %s after %s (attempt %d)", what, err, attempt)
                time.sleep(delay)


async def _identity(coro: Any) -> Any:
    return await coro
