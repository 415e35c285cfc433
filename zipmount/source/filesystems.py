"""Building fsspec filesystems: the one s3fs set-up shared by the daemon's source and the fsspec
front-end, and the location part of cache keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .options import StorageOptions

if TYPE_CHECKING:
    import fsspec


def filesystem_location(fs: fsspec.AbstractFileSystem) -> str:
    """The location part of cache keys for ``fs``: the same as :meth:`Source.for_url` gives."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("s3", "s3a"):
        endpoint = getattr(fs, "endpoint_url", None) or \
            getattr(fs, "client_kwargs", {}).get("endpoint_url")
        return f"s3|{endpoint or 'aws'}"
    return protocol


def fsspec_filesystem(protocol: str) -> fsspec.AbstractFileSystem:
    import fsspec

    return fsspec.filesystem(protocol, skip_instance_cache=True)


def s3_filesystem(options: StorageOptions) -> fsspec.AbstractFileSystem:
    import s3fs  # imported here: only S3 sources need it

    client_kwargs: dict[str, Any] = {}
    if options.region:
        client_kwargs["region_name"] = options.region
    if not options.verify_tls:
        client_kwargs["verify"] = False
    elif options.ca_bundle:
        client_kwargs["verify"] = options.ca_bundle
    kwargs: dict[str, Any] = {
        "endpoint_url": options.endpoint_url,
        "client_kwargs": client_kwargs,
        "skip_instance_cache": True,
        **s3_settings(options.timeout),
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


def s3_settings(timeout: float) -> dict[str, Any]:
    """The s3fs arguments zipmount's reads rely on, for a deadline of ``timeout`` seconds: the
    one set-up of the daemon's source and the fsspec front-end's filesystem."""
    attempt_timeout = max(1.0, timeout / 3)
    return {
        "config_kwargs": {
            "connect_timeout": min(5.0, attempt_timeout),
            "read_timeout": attempt_timeout,
            # botocore's default of 10 connections would cap the requests in flight below what
            # the block cache's fetch and read-ahead threads plus the readers' own misses ask for.
            "max_pool_connections": 48,
            # Retries are ours (Source._call): one deadline over everything, jittered backoff.
            "retries": {"total_max_attempts": 1, "mode": "standard"},
        },
        "use_listings_cache": False,  # revalidation must see the server
    }


def with_s3_settings(options: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The caller's s3fs arguments ``options`` over :func:`s3_settings` (``config_kwargs``
    merged key by key, the caller's winning)."""
    ours = s3_settings(timeout)
    return {**ours, **options,
            "config_kwargs": {**ours["config_kwargs"], **options.get("config_kwargs", {})}}
