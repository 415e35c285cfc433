"""Configuration: the YAML file, validated strictly, and the credential sources it names."""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .source import StorageOptions
from .tree import DEFAULT_SUFFIXES

log = logging.getLogger(__name__)

_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
               "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
               "tib": 2**40}


SIZE_HELP = "KiB/MiB/GiB/TiB are powers of 2 (1GiB = 1073741824 bytes), kB/MB/GB/TB powers of 10"
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_size(value: Any, what: str = "size") -> int:
    """``256MiB``, ``10G``, ``1048576`` -> bytes (``GiB`` = 2**30, ``GB`` = 10**9)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise UsageError(f"{what}: {value!r} is not a size (e.g. 256MiB, 10GiB; {SIZE_HELP})")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def human_size(n: int) -> str:
    """``1.5 MiB``, ``100 KiB``, ``12 bytes``: binary units, as sizes are given."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n} bytes"


def parse_duration(value: Any, what: str, *, allow_zero: bool) -> float:
    """``30``, ``30s``, ``500ms``, ``5m``, ``1h`` -> seconds; never negative (nor 0 unless
    ``allow_zero``)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        if not match or match.group(2).lower() not in _DURATION_UNITS:
            raise UsageError(f"{what}: {value!r} is not a duration (e.g. 30, 30s, 500ms, 5m, 1h)")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise UsageError(f"{what}: {value!r} must be {'0 or more' if allow_zero else 'more than 0'}"
                         " seconds")
    return seconds


def check_endpoint_url(url: str, what: str) -> str:
    """An endpoint must name its scheme: ``https://host:port`` (or ``http://``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise UsageError(f"{what} {url!r} needs a scheme and a host: write https://{rest or url} "
                         "(or http:// for a server without TLS)")
    return url


def check_ca_bundle(path: str, what: str) -> None:
    """The CA bundle must exist and hold PEM certificates (what botocore and ssl read)."""
    import ssl

    if not os.path.isfile(path):
        raise UsageError(f"{what} {path} not found")
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError):
        raise UsageError(f"{what} {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----); "
                         "convert a DER file with: openssl x509 -inform der -in FILE -out "
                         "FILE.pem") from None


@dataclass
class FuseOptions:
    allow_other: bool = False
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None


@dataclass
class MountConfig:
    source: str
    mountpoint: str
    suffixes: tuple[str, ...] = DEFAULT_SUFFIXES
    root: str | None = None
    options: FuseOptions = field(default_factory=FuseOptions)
    archives_only: bool = False  # prefix mounts: hide the objects that are not archives
    # The kernel's read-ahead window, set where the daemon may (zipmount/kernel_readahead.py):
    # 1 MiB, the largest READ libfuse 3 negotiates (docs/BENCHMARKS.md, "Kernel read-ahead").
    read_ahead: int = 1024 * 1024


@dataclass
class CacheConfig:
    memory: int = 256 * 2**20
    dir: str | None = None  # None: no disk tier
    size: int = 10 * 2**30
    ttl: float = 60.0
    index_memory: int = 64 * 2**20  # loaded archive indexes (see zipmount/tree/indexes.py)


@dataclass
class Config:
    storage: StorageOptions = field(default_factory=StorageOptions)
    cache: CacheConfig = field(default_factory=CacheConfig)
    log_level: str = "INFO"
    log_file: str | None = None
    metrics_listen: str | None = None
    mounts: list[MountConfig] = field(default_factory=list)
    offline: bool = False  # serve from the cache without checking the endpoint first


def default_cache_dir() -> str:
    if os.geteuid() == 0:
        return "/var/cache/zipmount"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "zipmount")


def default_log_file(mountpoint: str) -> str:
    """Where a background daemon logs without ``--log-file``: one file per (first) mountpoint,
    in $XDG_STATE_HOME/zipmount/log if set, else /var/log/zipmount for root, else
    ~/.local/state/zipmount/log."""
    state = os.environ.get("XDG_STATE_HOME")
    if state:
        base = os.path.join(state, "zipmount", "log")
    elif os.geteuid() == 0:
        base = "/var/log/zipmount"
    else:
        base = os.path.expanduser("~/.local/state/zipmount/log")
    name = os.path.abspath(mountpoint).strip("/").replace("/", "-") or "root"
    return os.path.join(base, f"{name}.log")


# key -> (type check, converter) per section; anything else is an error naming key and file.
_STORAGE_KEYS = {"endpoint_url": str, "region": str, "ca_bundle": str, "verify_tls": bool,
                 "profile": str, "env_file": str, "access_key": str, "secret_key": str,
                 "anonymous": bool, "timeout": (int, float), "retries": int}
_CACHE_KEYS = {"memory": (int, str), "dir": str, "size": (int, str), "ttl": (int, float),
               "enabled": bool, "index_memory": (int, str)}
_LOGGING_KEYS = {"level": str, "file": str}
_METRICS_KEYS = {"listen": str}
_MOUNT_KEYS = {"source": str, "mountpoint": str, "suffixes": list, "root": str, "options": dict,
               "archives_only": bool, "read_ahead": (int, str)}
_OPTION_KEYS = {"allow_other": bool, "uid": int, "gid": int, "umask": (int, str)}


def _section(doc: dict[str, Any], name: str, keys: dict[str, Any], where: str) -> dict[str, Any]:
    value = doc.get(name) or {}
    if not isinstance(value, dict):
        raise UsageError(f"{where}: '{name}' must be a mapping")
    for key, val in value.items():
        if key not in keys:
            raise UsageError(f"{where}: unknown key '{name}.{key}'")
        if val is not None and (not isinstance(val, keys[key]) or
                                (isinstance(val, bool) and keys[key] in (int, (int, float)))):
            raise UsageError(f"{where}: '{name}.{key}' has the wrong type "
                             f"({type(val).__name__})")
    return value


def parse_umask(value: Any, where: str) -> int:
    """A umask: strings are octal ("022"); YAML already turned an unquoted 022 into 18."""
    try:
        return int(value, 8) if isinstance(value, str) else int(value)
    except ValueError:
        raise UsageError(f"{where}: umask {value!r} is not an octal number") from None


def load_config(path: str) -> Config:
    """Read and validate a YAML config file; errors name the key and the file."""
    where = path
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read config file ({exc.strerror})") from None
    import yaml  # imported here: most mounts have no config file

    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}: invalid YAML{line}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: the top level must be a mapping")
    for key in doc:
        if key not in ("storage", "cache", "logging", "metrics", "mounts"):
            raise UsageError(f"{where}: unknown key '{key}'")
    cfg = Config()
    storage = _section(doc, "storage", _STORAGE_KEYS, where)
    env_file = storage.pop("env_file", None)
    for key, val in storage.items():
        if val is not None:
            setattr(cfg.storage, key, val)
    if storage.get("timeout") is not None:
        cfg.storage.timeout = parse_duration(storage["timeout"], f"{where}: storage.timeout",
                                             allow_zero=False)
    if storage.get("endpoint_url"):
        check_endpoint_url(storage["endpoint_url"], f"{where}: storage.endpoint_url")
    if storage.get("secret_key"):
        _warn_if_readable(path)
    if env_file:
        if not os.path.isfile(env_file):
            raise UsageError(f"{where}: storage.env_file {env_file} not found")
        apply_env_file(cfg.storage, env_file)
    if cfg.storage.ca_bundle:
        check_ca_bundle(cfg.storage.ca_bundle, f"{where}: storage.ca_bundle")
    cache = _section(doc, "cache", _CACHE_KEYS, where)
    if "memory" in cache:
        cfg.cache.memory = parse_size(cache["memory"], f"{where}: cache.memory")
    if "size" in cache:
        cfg.cache.size = parse_size(cache["size"], f"{where}: cache.size")
    if "ttl" in cache:
        cfg.cache.ttl = parse_duration(cache["ttl"], f"{where}: cache.ttl", allow_zero=True)
    if "index_memory" in cache:
        cfg.cache.index_memory = parse_size(cache["index_memory"], f"{where}: cache.index_memory")
    cfg.cache.dir = None if cache.get("enabled") is False else cache.get("dir") or default_cache_dir()
    logging_ = _section(doc, "logging", _LOGGING_KEYS, where)
    cfg.log_level = (logging_.get("level") or "INFO").upper()
    if cfg.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise UsageError(f"{where}: logging.level {cfg.log_level!r} is not a log level")
    cfg.log_file = logging_.get("file")
    cfg.metrics_listen = _section(doc, "metrics", _METRICS_KEYS, where).get("listen")
    mounts = doc.get("mounts") or []
    if not isinstance(mounts, list):
        raise UsageError(f"{where}: 'mounts' must be a list")
    for i, item in enumerate(mounts):
        cfg.mounts.append(_mount(item, f"{where}: mounts[{i}]"))
    return cfg


def _mount(item: Any, where: str) -> MountConfig:
    if not isinstance(item, dict):
        raise UsageError(f"{where} must be a mapping")
    item = _section({"mount": item}, "mount", _MOUNT_KEYS, where)
    for key in ("source", "mountpoint"):
        if not item.get(key):
            raise UsageError(f"{where}: missing '{key}'")
    options = _section(item, "options", _OPTION_KEYS, where)
    suffixes = item.get("suffixes") or DEFAULT_SUFFIXES
    if not all(isinstance(s, str) and s for s in suffixes):
        raise UsageError(f"{where}: 'suffixes' must be a list of strings")
    umask = options.get("umask")
    return MountConfig(
        source=item["source"], mountpoint=item["mountpoint"], suffixes=tuple(suffixes),
        root=item.get("root"), archives_only=bool(item.get("archives_only")),
        read_ahead=MountConfig.read_ahead if item.get("read_ahead") is None else
        parse_size(item["read_ahead"], f"{where}: read_ahead"),
        options=FuseOptions(allow_other=bool(options.get("allow_other")), uid=options.get("uid"),
                            gid=options.get("gid"),
                            umask=None if umask is None else parse_umask(umask, where)),
    )


def apply_env_file(storage: StorageOptions, path: str) -> None:
    """Take STORAGE_ACCESS_KEY, STORAGE_SECRET_KEY and ENDPOINT_FULL from a ``.env`` file."""
    if not os.path.isfile(path):
        raise UsageError(f"{path}: env file not found")
    from dotenv import dotenv_values

    values = dotenv_values(path)
    if values.get("STORAGE_SECRET_KEY"):
        _warn_if_readable(path)
    storage.access_key = values.get("STORAGE_ACCESS_KEY") or storage.access_key
    storage.secret_key = values.get("STORAGE_SECRET_KEY") or storage.secret_key
    if not storage.endpoint_url and values.get("ENDPOINT_FULL"):
        storage.endpoint_url = values["ENDPOINT_FULL"]


def _warn_if_readable(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("%s holds secrets and is readable by other users: chmod 600 it", path)
