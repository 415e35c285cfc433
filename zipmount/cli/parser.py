"""The argument parser of every command: each argument with its default, an example per command.

Values are checked here, at parse time (sizes, durations, endpoints, URL protocols), so that a
bad one is a one-line usage error before anything starts. ``make man`` and ``make completion``
build the man page and the shell completions from this parser.
"""

from __future__ import annotations

import argparse
import re
from typing import Any, NoReturn

from .. import __version__
from ..config import (
    SIZE_HELP,
    CacheConfig,
    check_endpoint_url,
    default_cache_dir,
    parse_duration,
    parse_size,
)
from ..errors import UsageError
from ..source import StorageOptions
from ..tree import DEFAULT_SUFFIXES

_CACHE = CacheConfig()
_STORAGE = StorageOptions()
_SUFFIXES = ", ".join(DEFAULT_SUFFIXES)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # one line, exit 2
        raise UsageError(message)


def _mib(n: int) -> str:
    return f"{n / 2**30:g}GiB" if n >= 2**30 else f"{n / 2**20:g}MiB"


def size(what: str):  # noqa: ANN201 - an argparse type
    """An argparse type: a size with units (see SIZE_HELP), in bytes."""
    return lambda value: parse_size(value, what)


def duration(what: str, *, allow_zero: bool):  # noqa: ANN201 - an argparse type
    """An argparse type: seconds, or a number with s/ms/m/h."""
    return lambda value: parse_duration(value, what, allow_zero=allow_zero)


def source_url(value: str) -> str:
    """A source URL whose protocol zipmount can read here; else name the package to install."""
    protocol, sep, _ = value.partition("://")
    if not sep or protocol in ("s3", "s3a", "file"):
        return value
    from fsspec.registry import get_filesystem_class, known_implementations

    if protocol not in known_implementations:
        raise UsageError(f"{value}: unknown protocol {protocol}:// (zipmount reads s3://, "
                         "file:// and the protocols of installed fsspec packages)")
    try:
        get_filesystem_class(protocol)
    except ImportError:
        match = re.search(r"install (\S+)", known_implementations[protocol].get("err") or "")
        package = match.group(1) if match else \
            known_implementations[protocol]["class"].split(".")[0]
        raise UsageError(f"{value}: reading {protocol}:// needs the {package} package: "
                         f"pip install {package}") from None
    return value


def _storage_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("storage")
    g.add_argument("--endpoint-url", metavar="URL", type=lambda v: check_endpoint_url(v, "--endpoint-url"),
                   help="S3 endpoint with its scheme, e.g. https://minio.example.org:9000 "
                        "(default: AWS, or ENDPOINT_FULL of --env-file)")
    g.add_argument("--region", metavar="REGION",
                   help="S3 region (default: from the AWS config, else us-east-1)")
    g.add_argument("--ca-bundle", metavar="PEM", help="PEM file with the CA(s) that sign the endpoint's "
                                       "certificate (default: the system's CAs)")
    g.add_argument("--no-verify-tls", action="store_true",
                   help="do not verify TLS certificates (insecure; logged as a warning)")
    g.add_argument("--profile", metavar="NAME",
                   help="AWS profile name for credentials (default: the AWS chain)")
    g.add_argument("--env-file", metavar="FILE",
                   help="a .env file with STORAGE_ACCESS_KEY, STORAGE_SECRET_KEY, ENDPOINT_FULL "
                        "(default: none)")
    g.add_argument("--anonymous", action="store_true",
                   help="unsigned requests, for public buckets")
    g.add_argument("--timeout", metavar="SECONDS", type=duration("--timeout", allow_zero=False),
                   help="seconds before a remote operation fails with EIO, e.g. 30, 2m "
                        f"(default {_STORAGE.timeout:g})")
    g.add_argument("--config", metavar="FILE", help="YAML config file (see config/zipmount.example.yaml); "
                                    "flags override it")
    c = p.add_argument_group("cache", f"Sizes: {SIZE_HELP}.")
    c.add_argument("--cache-dir", metavar="DIR", help=f"disk cache directory (default {default_cache_dir()})")
    c.add_argument("--cache-size", metavar="SIZE", type=size("--cache-size"),
                   help=f"disk cache cap (default {_mib(_CACHE.size)})")
    c.add_argument("--memory", metavar="SIZE", type=size("--memory"),
                   help=f"memory cache cap (default {_mib(_CACHE.memory)})")
    c.add_argument("--no-disk-cache", action="store_true", help="memory cache only")
    c.add_argument("--ttl", metavar="SECONDS", type=duration("--ttl", allow_zero=True),
                   help="seconds before listings and ETags are revalidated, 0 or more "
                        f"(default {_CACHE.ttl:g})")
    c.add_argument("--index-memory", metavar="SIZE", type=size("--index-memory"),
                   help=f"cap on loaded archive indexes (default {_mib(_CACHE.index_memory)})")
    lg = p.add_argument_group("logging")
    lg.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], metavar="LEVEL",
                    type=str.upper, help="DEBUG, INFO, WARNING or ERROR (default INFO for mount, "
                                         "WARNING for ls)")
    lg.add_argument("--log-file", metavar="FILE", help="log to this file (default: stderr with -f; a "
                                       "background mount logs to the file it prints)")


_EXAMPLES = {
    "mount": """examples:
  zipmount mount s3://eeg/cohort-a/night1.rkns /mnt/night1 --endpoint-url https://minio:9000
  zipmount mount s3://eeg/cohort-a/ /mnt/cohort-a --env-file ~/.zipmount.env --ca-bundle ca.pem
  zipmount mount --config /etc/zipmount/lab.yaml

Without -f the command returns once every mount answers (0), printing the daemon's pid and its
log file, or fails with the reason and leaves nothing mounted. The endpoint is checked before
the mount answers, also when the cache holds everything: --offline serves the cache alone.""",
    "umount": """examples:
  zipmount umount /mnt/night1
  zipmount umount --config /etc/zipmount/lab.yaml""",
    "ls": """examples:
  zipmount ls s3://eeg/cohort-a/night1.rkns --endpoint-url https://minio:9000
  zipmount ls s3://eeg/cohort-a/night1.rkns signals -R
  zipmount ls s3://eeg/cohort-a/        # the archives below a prefix""",
    "stats": """examples:
  zipmount stats /mnt/cohort-a
  zipmount stats /mnt/cohort-a --json | jq .requests""",
    "logs": """examples:
  zipmount logs /mnt/cohort-a           # the last 20 lines of the daemon's log
  zipmount logs /mnt/cohort-a -n 100
  zipmount logs /mnt/cohort-a --path    # only where the log is""",
    "prefetch": """examples:
  zipmount prefetch /mnt/cohort-a -j 8
  zipmount prefetch /mnt/cohort-a/night1.rkns/signals --max-rate 50MiB
  zipmount prefetch /mnt/cohort-a --metadata-only

An interrupted run (Ctrl-C) goes on where it stopped when run again, unless --restart.""",
    "cache": f"""examples:
  zipmount cache info
  zipmount cache prune --cache-size 5GiB
  zipmount cache clear --cache-dir /var/cache/zipmount

Sizes: {SIZE_HELP}.""",
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zipmount", description="Mount zip archives in object storage "
                     "(S3, MinIO, Ceph) as a read-only directory tree, or list them.",
                     epilog="Run `zipmount COMMAND --help` for a command's options and examples.")
    parser.add_argument("-V", "--version", action="version", version=f"zipmount {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".",
                              epilog=_EXAMPLES[name])

    m = command("mount", "mount an archive or a prefix of archives")
    m.add_argument("source", nargs="?", type=source_url, metavar="SOURCE",
                   help="s3://bucket/key.zip (one archive), s3://bucket/prefix/ (every archive "
                        "below it), or a local path")
    m.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT",
                   help="an existing directory to mount on")
    m.add_argument("--root", metavar="SUBDIR",
                   help="serve this subdirectory of each archive as its root (default: the "
                        "archive's root)")
    m.add_argument("--suffix", metavar="SUFFIX", action="append", dest="suffixes",
                   help=f"archive name suffix in prefix mounts (repeatable; default {_SUFFIXES})")
    m.add_argument("--archives-only", action="store_true",
                   help="prefix mounts: hide the objects that are not archives (default: show "
                        "every object, archives as directories)")
    m.add_argument("--read-ahead", metavar="SIZE", type=size("--read-ahead"),
                   help="the kernel's read-ahead window for the mount (default 1MiB; set where "
                        "the daemon may: root)")
    m.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground, logging to stderr (default: background daemon)")
    m.add_argument("--offline", action="store_true",
                   help="do not check the endpoint first: serve what the cache holds even if the "
                        "endpoint cannot be reached (logged)")
    m.add_argument("-o", metavar="OPTIONS", dest="fuse_options", action="append", default=[],
                   help="FUSE options: allow_other,uid=N,gid=N,umask=NNN (default: none). Modes "
                        "are the permission bits the archive stores (setuid/setgid dropped); "
                        "entries without them are 0644, directories 0755; umask masks them all")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    _storage_args(m)

    u = command("umount", "unmount (also cleans a mount left by a killed daemon)")
    u.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT", help="the mountpoint")
    u.add_argument("--config", metavar="FILE", help="unmount every mountpoint of this config (if mounted)")

    ls = command("ls", "list an archive or prefix without mounting")
    ls.add_argument("source", type=source_url, metavar="SOURCE", help="s3://bucket/key.zip or s3://bucket/prefix/")
    ls.add_argument("path", nargs="?", default="", metavar="PATH",
                    help="a directory or file inside it (default: its root)")
    ls.add_argument("--root", metavar="SUBDIR", help="list this subdirectory of the archive as its root")
    ls.add_argument("--suffix", metavar="SUFFIX", action="append", dest="suffixes",
                    help=f"archive name suffix below a prefix (repeatable; default {_SUFFIXES})")
    ls.add_argument("-R", "--recursive", action="store_true", help="list subdirectories too")
    _storage_args(ls)

    st = command("stats", "live counters of the daemon serving MOUNTPOINT")
    st.add_argument("mountpoint", metavar="MOUNTPOINT", help="a zipmount mountpoint")
    st.add_argument("--json", action="store_true", help="print JSON (default: a table)")

    lg = command("logs", "where the daemon serving MOUNTPOINT logs, and its last lines")
    lg.add_argument("mountpoint", metavar="MOUNTPOINT", help="a zipmount mountpoint")
    lg.add_argument("-n", "--lines", metavar="N", type=int, default=20, help="lines to show (default 20)")
    lg.add_argument("--path", action="store_true", help="print only where the log is")

    pf = command("prefetch", "warm the cache with files or subtrees of a mount")
    pf.add_argument("paths", nargs="+", metavar="PATH",
                    help="a mount, an archive's directory, or files in it")
    pf.add_argument("-j", "--jobs", metavar="N", type=int, default=4,
                    help="archives read at once (default 4)")
    pf.add_argument("--metadata-only", action="store_true",
                    help="load every archive's index, read no file")
    pf.add_argument("--suffix", metavar="SUFFIX", action="append", dest="suffixes",
                    help=f"names of archive directories (repeatable; default {_SUFFIXES})")
    pf.add_argument("--max-rate", metavar="BYTES/S", type=size("--max-rate"),
                    help="at most this many bytes per second, e.g. 50MiB (default: no limit)")
    pf.add_argument("--restart", action="store_true",
                    help="ignore what an interrupted run already did")

    ca = command("cache", "inspect or trim the disk cache")
    ca.add_argument("action", choices=["info", "prune", "clear"], metavar="ACTION",
                    help="info: what it holds and its cap; prune: trim to the cap; clear: empty")
    ca.add_argument("--cache-dir", metavar="DIR", help=f"the cache directory (default {default_cache_dir()}, "
                                        "or the config's)")
    ca.add_argument("--cache-size", metavar="SIZE", type=size("--cache-size"),
                    help=f"the cap to prune to (default: the config's, else {_mib(_CACHE.size)})")
    ca.add_argument("--config", metavar="FILE", help="YAML config file whose cache to use")
    return parser
