"""A :class:`~zipmount.config.Config` from the command line, the config file and the environment."""

from __future__ import annotations

import argparse
import os

from ..config import (
    CacheConfig,
    Config,
    FuseOptions,
    apply_env_file,
    check_ca_bundle,
    check_endpoint_url,
    default_cache_dir,
    load_config,
    parse_size,
    parse_umask,
)
from ..errors import UsageError


def config_from_args(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config) if getattr(args, "config", None) else Config(
        cache=CacheConfig(dir=default_cache_dir()))
    s = cfg.storage
    if getattr(args, "env_file", None):
        apply_env_file(s, args.env_file)
    for attr in ("endpoint_url", "region", "ca_bundle", "profile", "timeout"):
        value = getattr(args, attr, None)
        if value is not None:
            setattr(s, attr, value)
    if getattr(args, "anonymous", False):
        s.anonymous = True
    if getattr(args, "no_verify_tls", False):
        s.verify_tls = False
    if not s.access_key and not s.profile and not s.anonymous and not os.environ.get(
            "AWS_ACCESS_KEY_ID") and os.environ.get("STORAGE_ACCESS_KEY"):
        s.access_key = os.environ.get("STORAGE_ACCESS_KEY")
        s.secret_key = os.environ.get("STORAGE_SECRET_KEY")
    if not s.endpoint_url and os.environ.get("ENDPOINT_FULL"):
        s.endpoint_url = os.environ["ENDPOINT_FULL"]
    if s.endpoint_url:
        check_endpoint_url(s.endpoint_url, "endpoint")
    if s.ca_bundle:
        check_ca_bundle(s.ca_bundle, "CA bundle")
    c = cfg.cache
    if getattr(args, "cache_dir", None):
        c.dir = args.cache_dir
    if getattr(args, "no_disk_cache", False):
        c.dir = None
    if getattr(args, "cache_size", None):
        c.size = parse_size(args.cache_size, "--cache-size")
    if getattr(args, "memory", None):
        c.memory = parse_size(args.memory, "--memory")
    if getattr(args, "index_memory", None):
        c.index_memory = parse_size(args.index_memory, "--index-memory")
    if getattr(args, "ttl", None) is not None:
        c.ttl = args.ttl
    if getattr(args, "log_level", None):
        cfg.log_level = args.log_level.upper()
    if getattr(args, "log_file", None):
        cfg.log_file = os.path.abspath(args.log_file)
    cfg.offline = bool(getattr(args, "offline", False))
    return cfg


def fuse_options(values: list[str]) -> FuseOptions:
    opts = FuseOptions()
    for item in ",".join(values).split(","):
        key, _, value = item.strip().partition("=")
        try:
            if key == "allow_other":
                opts.allow_other = True
            elif key in ("uid", "gid"):
                setattr(opts, key, int(value))
            elif key == "umask":
                opts.umask = parse_umask(value, "-o umask")
            elif key:
                raise UsageError(f"-o {key}: unknown option (allow_other, uid, gid, umask)")
        except ValueError:
            raise UsageError(f"-o {item}: {key} needs a number") from None
    return opts
