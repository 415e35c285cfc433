"""Source layer: reach objects through fsspec (s3fs for S3/MinIO), with identity, deadlines and retries.

Every remote call made by zipmount goes through :class:`Source`, which
- bounds it by one deadline (``timeout``): a dead or trickling endpoint ends in an error, never a hang;
- retries transient failures (connection reset mid-body, 5xx, SlowDown) with exponential backoff and
  full jitter, inside that deadline;
- pins every byte range to the object identity (ETag + size) the mount is serving: on S3 each GET
  carries ``If-Match``, so bytes of two versions can never be mixed;
- turns library exceptions into one-line :mod:`zipmount.errors` messages that never carry secrets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ObjectChanged, ObjectNotFound, SourceError, ZipmountError
from .stats import Stats

if TYPE_CHECKING:
    import fsspec

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    """One version of one remote object: what the cache and index are keyed by."""

    path: str  # fsspec path without protocol, e.g. "bucket/dir/rec.rkns"
    size: int
    etag: str  # ETag, version id, or an mtime token where the store has neither
    mtime: float

    def cache_key(self, location: str) -> str:
        """A stable hex key for this exact version of the object at ``location``."""
        ident = f"{location}\0{self.path}\0{self.etag}\0{self.size}"
        return hashlib.sha256(ident.encode()).hexdigest()[:40]


@dataclass
class StorageOptions:
    """How to reach the store; built by the CLI/config layer."""

    endpoint_url: str | None = None
    region: str | None = None
    ca_bundle: str | None = None
    verify_tls: bool = True
    profile: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    anonymous: bool = False
    timeout: float = 30.0
    retries: int = 4

    def __repr__(self) -> str:  # never print secrets
        return (
            f"StorageOptions(endpoint_url={self.endpoint_url!r}, region={self.region!r}, "
            f"ca_bundle={self.ca_bundle!r}, verify_tls={self.verify_tls}, profile={self.profile!r}, "
            f"anonymous={self.anonymous}, timeout={self.timeout}, retries={self.retries})"
        )


class Source:
    """One fsspec filesystem plus the policy (deadline, retries, identity checks) to read it.

    The filesystem is built on first use: importing fsspec and s3fs (botocore, aiohttp) costs
    ~0.6 s, which a mount served from the persisted index (no request at all) never pays.
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
            source = cls(lambda: _s3_filesystem(options), location, options, stats)
        elif protocol == "file":
            path = os.path.abspath(os.path.expanduser(rest))
            if rest.endswith("/"):
                path = path.rstrip("/") + "/"
            source = cls(lambda: _fsspec_filesystem("file"), "file", options, stats)
        else:
            fs = _fsspec_filesystem(protocol)
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
        return _object_info(path, info)

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object below ``prefix`` (recursive), one listing call."""
        found = self._call(f"list {prefix}", self._find, prefix)
        return [_object_info(p, i) for p, i in found.items() if i.get("type") != "directory"]

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
        """Bytes ``[start, end)`` of exactly version ``obj``; raises ObjectChanged otherwise."""
        end = min(end, obj.size)
        if start >= end:
            return b""
        t0 = time.monotonic()
        data = self._call(f"read {obj.path} [{start}, {end})", self._read_once, obj, start, end)
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
                transient = _is_transient(exc, err)
                if not transient or attempt > self.options.retries or \
                        time.monotonic() + delay >= deadline:
                    self.stats.record_error()
                    raise err from None
                log.info("retrying %s after %s (attempt %d)", what, err, attempt)
                time.sleep(delay)


async def _identity(coro: Any) -> Any:
    return await coro


def filesystem_location(fs: fsspec.AbstractFileSystem) -> str:
    """The location part of cache keys for ``fs``: the same as :meth:`Source.for_url` gives."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("s3", "s3a"):
        endpoint = getattr(fs, "endpoint_url", None) or \
            getattr(fs, "client_kwargs", {}).get("endpoint_url")
        return f"s3|{endpoint or 'aws'}"
    return protocol


def _fsspec_filesystem(protocol: str) -> fsspec.AbstractFileSystem:
    import fsspec

    return fsspec.filesystem(protocol, skip_instance_cache=True)


def _s3_filesystem(options: StorageOptions) -> fsspec.AbstractFileSystem:
    import s3fs  # imported here: only S3 sources need it

    client_kwargs: dict[str, Any] = {}
    if options.region:
        client_kwargs["region_name"] = options.region
    if not options.verify_tls:
        client_kwargs["verify"] = False
    elif options.ca_bundle:
        client_kwargs["verify"] = options.ca_bundle
    attempt_timeout = max(1.0, options.timeout / 3)
    config_kwargs = {
        "connect_timeout": min(5.0, attempt_timeout),
        "read_timeout": attempt_timeout,
        # botocore's default of 10 connections would cap the requests in flight below what the
        # block cache's fetch and read-ahead threads plus the readers' own misses ask for.
        "max_pool_connections": 48,
        # Retries are ours (Source._call): one deadline over everything, jittered backoff.
        "retries": {"total_max_attempts": 1, "mode": "standard"},
    }
    kwargs: dict[str, Any] = {
        "endpoint_url": options.endpoint_url,
        "client_kwargs": client_kwargs,
        "config_kwargs": config_kwargs,
        "use_listings_cache": False,
        "skip_instance_cache": True,
    }
    if options.anonymous:
        kwargs["anon"] = True
    elif options.access_key and options.secret_key:
        kwargs["key"] = options.access_key
        kwargs["secret"] = options.secret_key
    elif options.profile:
        kwargs["profile"] = options.profile
    fs = s3fs.S3FileSystem(**kwargs)
    fs.retries = 1  # s3fs's own retry loop: off, Source._call retries inside one deadline
    return fs


def pin_conditions(obj: ObjectInfo) -> dict[str, Any]:
    """The conditions a range GET carries so that it is answered from version ``obj`` only.

    A strong ETag is sent as ``If-Match`` (quoted if the store listed it without quotes). A weak
    ETag cannot be (If-Match compares strongly: every read would fail), and a store without
    ETags has none: then ``If-Unmodified-Since`` the object's mtime, and :func:`check_answer`
    compares the answer's ETag, Last-Modified and total size with the pinned ones.
    """
    tag = obj.etag
    if tag and not tag.startswith(("W/", "mtime:")):
        return {"IfMatch": tag if tag.startswith('"') else f'"{tag}"'}
    if obj.mtime > 0:
        return {"IfUnmodifiedSince": datetime.fromtimestamp(obj.mtime, tz=timezone.utc)}
    return {}


def _bare_etag(tag: str) -> str:
    return tag.removeprefix("W/").strip('"')


def check_answer(obj: ObjectInfo, resp: dict[str, Any]) -> None:
    """Raise ObjectChanged unless a GET's answer comes from version ``obj``.

    Catches a store (or a cache in between) that ignores the conditions: the bytes would be
    another version's and must never be mixed with this one's.
    """
    etag = resp.get("ETag")
    pinned = obj.etag if not obj.etag.startswith("mtime:") else ""
    changed = ""
    if pinned and etag and _bare_etag(etag) != _bare_etag(pinned):
        changed = f"ETag {etag}, serving {obj.etag}"
    total = str(resp.get("ContentRange") or "").rpartition("/")[2]
    if not changed and total.isdigit() and int(total) != obj.size:
        changed = f"{total} bytes, serving {obj.size}"
    modified = resp.get("LastModified")
    if not changed and not pinned and isinstance(modified, datetime) and obj.mtime > 0 and \
            int(modified.timestamp()) != int(obj.mtime):
        changed = f"modified {modified.isoformat()}, serving the version of {obj.mtime:.0f}"
    if changed:
        raise ObjectChanged(f"read {obj.path}: the object changed on the server ({changed})")


def _object_info(path: str, info: dict[str, Any]) -> ObjectInfo:
    etag = info.get("ETag") or info.get("VersionId") or ""
    mtime = info.get("LastModified") or info.get("mtime") or info.get("created") or 0.0
    if isinstance(mtime, datetime):
        mtime = mtime.timestamp()
    if not etag:
        etag = f"mtime:{float(mtime)!r}"
    return ObjectInfo(path=info.get("name", path).rstrip("/"),
                      size=int(info.get("size") or 0), etag=str(etag), mtime=float(mtime))


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return chain


def _error_code(exc: BaseException) -> str:
    for e in _causes(exc):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
    return ""


def _is_transient(exc: BaseException, err: ZipmountError) -> bool:
    if isinstance(err, ObjectNotFound | ObjectChanged):
        return False
    text = " ".join(f"{type(e).__name__} {e}" for e in _causes(exc))
    if any(isinstance(e, TypeError | AttributeError | NameError) for e in _causes(exc)):
        return False  # a bug, not the network
    permanent = ("certificate", "SSL", "AccessDenied", "InvalidAccessKeyId", "Signature",
                 "NoCredentials", "PermissionError", "Forbidden")
    return not any(p in text for p in permanent)


def translate_error(exc: BaseException, what: str, options: StorageOptions) -> ZipmountError:
    """One-line, secret-free error for ``exc`` raised while doing ``what``."""
    if isinstance(exc, ZipmountError):
        return exc
    import ssl

    endpoint = options.endpoint_url or "the default S3 endpoint"
    causes = _causes(exc)
    code = _error_code(exc)
    text = " | ".join(f"{type(e).__name__}: {e}" for e in causes)
    if code in ("PreconditionFailed", "412") or "PreconditionFailed" in text:
        return ObjectChanged(f"{what}: the object changed on the server (ETag no longer matches)")
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in causes) or \
            "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return SourceError(f"TLS certificate verification failed for {endpoint} ({what}); "
                           "pass the private CA with --ca-bundle (or ca_bundle in the config; "
                           "in process, s3fs client_kwargs={'verify': PATH})")
    if any(isinstance(e, ssl.SSLError) for e in causes):
        return SourceError(f"TLS error talking to {endpoint} ({what})")
    if "NoCredentials" in text or "Unable to locate credentials" in text:
        return SourceError(f"no credentials found for {endpoint}: set AWS_ACCESS_KEY_ID/"
                           "AWS_SECRET_ACCESS_KEY, --profile, --env-file, or --anonymous")
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") or \
            any(isinstance(e, PermissionError) for e in causes):
        return SourceError(f"access denied by {endpoint} ({what}): check the credentials "
                           f"({code or 'Forbidden'})")
    if code in ("NoSuchBucket", "NoSuchKey", "404") or \
            any(isinstance(e, FileNotFoundError) for e in causes):
        kind = "bucket" if code == "NoSuchBucket" else "object"
        return ObjectNotFound(f"{kind} not found: {what.split(' ', 1)[-1]}")
    if any(isinstance(e, TimeoutError) for e in causes) or "Timeout" in text:
        return SourceError(f"timed out after {options.timeout:g} s talking to {endpoint} ({what})")
    if "Connect" in text or any(isinstance(e, ConnectionError) for e in causes):
        return SourceError(f"cannot reach {endpoint} ({what}): {_short(causes[-1])}")
    return SourceError(f"{what} failed: {_short(causes[0])}")


def _short(exc: BaseException) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return msg[:200]
