"""The argument parser of every command."""

from __future__ import annotations

import argparse
from typing import NoReturn

from .. import __version__
from ..config import default_cache_dir, parse_size
from ..errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        raise UsageError(message)


def _storage_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("storage")
    g.add_argument("--endpoint-url", help="S3 endpoint, e.g. https://minio.example.org:9000")
    g.add_argument("--region")
    g.add_argument("--ca-bundle", help="PEM file with the CA(s) that sign the endpoint")
    g.add_argument("--no-verify-tls", action="store_true",
                   help="do not verify TLS certificates (insecure; logged as a warning)")
    g.add_argument("--profile", help="AWS profile name for credentials")
    g.add_argument("--env-file", help=".env with STORAGE_ACCESS_KEY, STORAGE_SECRET_KEY, "
                                      "ENDPOINT_FULL")
    g.add_argument("--anonymous", action="store_true", help="unsigned requests (public buckets)")
    g.add_argument("--timeout", type=float, help="seconds before a remote operation fails (EIO)")
    g.add_argument("--config", help="YAML config file (see config/zipmount.example.yaml)")
    c = p.add_argument_group("cache")
    c.add_argument("--cache-dir", help=f"disk cache directory (default {default_cache_dir()})")
    c.add_argument("--cache-size", help="disk cache cap, e.g. 10GiB")
    c.add_argument("--memory", help="memory cache cap, e.g. 256MiB")
    c.add_argument("--no-disk-cache", action="store_true", help="memory cache only")
    c.add_argument("--ttl", type=float, help="seconds before listings and ETags are revalidated")
    c.add_argument("--index-memory", help="cap on loaded archive indexes, e.g. 64MiB")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("--log-file", help="log to this file instead of stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zipmount", description="Mount zip archives in object storage "
                     "as a read-only directory tree.")
    parser.add_argument("--version", action="version", version=f"zipmount {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    m = sub.add_parser("mount", help="mount an archive or a prefix of archives")
    m.add_argument("source", nargs="?", help="s3://bucket/key.zip, s3://bucket/prefix/, or a path")
    m.add_argument("mountpoint", nargs="?")
    m.add_argument("--root", help="serve this subdirectory of each archive as its root")
    m.add_argument("--suffix", action="append", dest="suffixes",
                   help="archive name suffix in prefix mounts (repeatable; default .zip, .rkns)")
    m.add_argument("--archives-only", action="store_true",
                   help="prefix mounts: hide the objects that are not archives")
    m.add_argument("--read-ahead", help="the kernel's read-ahead window for the mount, e.g. 1MiB "
                   "(the default; set where the daemon may: root)")
    m.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    m.add_argument("-o", dest="fuse_options", action="append", default=[],
                   help="allow_other,uid=N,gid=N,umask=NNN. Modes are the permission bits "
                   "the archive stores (setuid/setgid dropped); entries without them are 0644, "
                   "directories 0755; umask masks them all")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    _storage_args(m)

    u = sub.add_parser("umount", help="unmount (also cleans a mount left by a killed daemon)")
    u.add_argument("mountpoint", nargs="?")
    u.add_argument("--config", help="unmount every mountpoint of this config (if mounted)")

    ls = sub.add_parser("ls", help="list an archive or prefix without mounting")
    ls.add_argument("source")
    ls.add_argument("path", nargs="?", default="")
    ls.add_argument("--root")
    ls.add_argument("--suffix", action="append", dest="suffixes")
    ls.add_argument("-R", "--recursive", action="store_true")
    _storage_args(ls)

    st = sub.add_parser("stats", help="live counters of the daemon serving MOUNTPOINT")
    st.add_argument("mountpoint")
    st.add_argument("--json", action="store_true")

    pf = sub.add_parser("prefetch", help="warm the cache with files or subtrees of a mount")
    pf.add_argument("paths", nargs="+", help="a mount, an archive's directory, or files in it")
    pf.add_argument("-j", "--jobs", type=int, default=4, help="archives read at once (default 4)")
    pf.add_argument("--metadata-only", action="store_true",
                    help="load every archive's index, read no file")
    pf.add_argument("--suffix", action="append", dest="suffixes",
                    help="names of archive directories (repeatable; default .zip, .rkns)")
    pf.add_argument("--max-rate", type=lambda v: parse_size(v, "--max-rate"),
                    help="at most this many bytes per second, e.g. 50MiB")
    pf.add_argument("--restart", action="store_true",
                    help="ignore what an interrupted run already did")

    ca = sub.add_parser("cache", help="inspect or trim the disk cache")
    ca.add_argument("action", choices=["info", "prune", "clear"])
    ca.add_argument("--cache-dir")
    ca.add_argument("--cache-size", help="prune down to this size (default: the config's)")
    ca.add_argument("--config")
    return parser
