"""Command line: ``zipmount mount|umount|ls|stats|prefetch|cache``, and the fstab mount helper.

Errors are one line on stderr (``zipmount: error: ...``): exit 2 for usage/config errors, 1 for
everything else. No secret is ever taken on the command line (it would show in ``ps``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import stat
import sys
import time
from pathlib import Path

from . import __version__
from .config import (
    CacheConfig,
    Config,
    FuseOptions,
    MountConfig,
    apply_env_file,
    default_cache_dir,
    load_config,
    parse_size,
    parse_umask,
)
from .errors import UsageError, ZipmountError
from .stats import STATS_XATTR

log = logging.getLogger("zipmount")

METHODS = {0: "stored", 8: "deflate", 12: "bzip2", 14: "lzma"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
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
    m.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    m.add_argument("-o", dest="fuse_options", action="append", default=[],
                   help="allow_other,uid=N,gid=N,umask=NNN")
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
    pf.add_argument("paths", nargs="+")

    ca = sub.add_parser("cache", help="inspect or trim the disk cache")
    ca.add_argument("action", choices=["info", "prune", "clear"])
    ca.add_argument("--cache-dir")
    ca.add_argument("--cache-size", help="prune down to this size (default: the config's)")
    ca.add_argument("--config")
    return parser


# -- configuration from arguments -----------------------------------------------------------------


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
    if s.ca_bundle and not os.path.isfile(s.ca_bundle):
        raise UsageError(f"CA bundle {s.ca_bundle} not found")
    c = cfg.cache
    if getattr(args, "cache_dir", None):
        c.dir = args.cache_dir
    if getattr(args, "no_disk_cache", False):
        c.dir = None
    if getattr(args, "cache_size", None):
        c.size = parse_size(args.cache_size, "--cache-size")
    if getattr(args, "memory", None):
        c.memory = parse_size(args.memory, "--memory")
    if getattr(args, "ttl", None) is not None:
        c.ttl = args.ttl
    if getattr(args, "log_level", None):
        cfg.log_level = args.log_level.upper()
    if getattr(args, "log_file", None):
        cfg.log_file = args.log_file
    return cfg


def _fuse_options(values: list[str]) -> FuseOptions:
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


def setup_logging(level: str, log_file: str | None, background: bool = False) -> None:
    """Log to ``log_file``, else to stderr; a background daemon without a file logs to syslog."""
    handler: logging.Handler
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if log_file:
        handler = logging.FileHandler(log_file)
    elif background and os.path.exists("/dev/log"):
        from logging.handlers import SysLogHandler

        handler = SysLogHandler("/dev/log", SysLogHandler.LOG_DAEMON)
        fmt = "zipmount[%(process)d]: %(levelname)s %(name)s: %(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        if os.environ.get("JOURNAL_STREAM"):
            fmt = "%(levelname)s %(name)s: %(message)s"  # journald adds the time
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    try:
        root.setLevel(level)
    except ValueError:
        raise UsageError(f"--log-level {level!r} is not a log level") from None
    for noisy in ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3", "asyncio", "fuse"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


# -- commands -------------------------------------------------------------------------------------


def cmd_mount(args: argparse.Namespace, argv: list[str]) -> int:
    cfg = config_from_args(args)
    if args.source or args.mountpoint:
        if not (args.source and args.mountpoint):
            raise UsageError("mount needs SOURCE and MOUNTPOINT (or --config with mounts)")
        cfg.mounts = [MountConfig(
            source=args.source, mountpoint=os.path.abspath(args.mountpoint),
            suffixes=tuple(args.suffixes) if args.suffixes else MountConfig.__dataclass_fields__[
                "suffixes"].default, root=args.root, options=_fuse_options(args.fuse_options))]
    elif not cfg.mounts:
        raise UsageError("mount needs SOURCE and MOUNTPOINT, or --config FILE with 'mounts'")
    for mount in cfg.mounts:
        if not os.path.isdir(mount.mountpoint):
            raise UsageError(f"mountpoint {mount.mountpoint} is not a directory")
    if not args.foreground:
        from .daemon import run_background

        setup_logging(cfg.log_level, None)
        return run_background(_absolute_argv(argv, cfg), cfg.log_file)
    setup_logging(cfg.log_level, cfg.log_file, background=args.ready_fd is not None)
    if not cfg.storage.verify_tls:
        log.warning("TLS certificate verification is OFF (--no-verify-tls): connections to %s "
                    "can be intercepted", cfg.storage.endpoint_url)
    from .daemon import run_foreground

    return run_foreground(cfg, args.ready_fd)


def _absolute_argv(argv: list[str], cfg: Config) -> list[str]:
    """The child gets the same arguments; relative paths would break after its chdir."""
    out = []
    for arg in argv:
        if os.path.exists(arg) and not arg.startswith("-"):
            arg = os.path.abspath(arg)
        out.append(arg)
    return out


def cmd_umount(args: argparse.Namespace) -> int:
    from .daemon import mount_state

    if args.config:
        for mount in load_config(args.config).mounts:  # e.g. ExecStopPost after a crash
            if mount_state(mount.mountpoint) != "free":
                _umount_one(os.path.abspath(mount.mountpoint))
        return 0
    if not args.mountpoint:
        raise UsageError("umount needs MOUNTPOINT or --config FILE")
    mp = os.path.abspath(args.mountpoint)
    if mount_state(mp) == "free":
        raise ZipmountError(f"{mp} is not mounted")
    return _umount_one(mp)


def _umount_one(mp: str) -> int:
    from .daemon import mount_state, unmount

    state = mount_state(mp)
    pid = _daemon_pid(mp) if state == "mounted" else None
    if not unmount(mp, lazy=state == "stale"):
        raise ZipmountError(f"{mp} is busy (files open?); close them or retry")
    deadline = time.monotonic() + 15
    while pid and _running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)  # the daemon exits once its last mount is gone
    return 0


def _running(pid: int) -> bool:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rpartition(")")[2].split()[0] != "Z"  # a zombie has exited


def _daemon_pid(mountpoint: str) -> int | None:
    """The pid of the zipmount daemon serving ``mountpoint`` (from its stats xattr)."""
    try:
        return int(json.loads(os.getxattr(mountpoint, STATS_XATTR))["pid"])
    except (OSError, ValueError, KeyError):
        return None


def cmd_ls(args: argparse.Namespace) -> int:
    from .engine import Engine

    cfg = config_from_args(args)
    setup_logging(cfg.log_level if args.log_level else "WARNING", None)
    cfg.cache.dir = None  # listing reads only the central directory: no disk cache needed
    engine = Engine(cfg.storage, cfg.cache)
    try:
        tree = engine.open_tree(args.source, suffixes=tuple(args.suffixes or ()) or
                                MountConfig.__dataclass_fields__["suffixes"].default,
                                root=args.root)
        todo = [args.path.strip("/")]
        while todo:
            directory = todo.pop(0)
            node = tree.stat(directory)
            names = [n for n, _ in tree.listdir(directory)] if node.kind == "dir" else [None]
            for name in names:
                rel = directory if name is None else f"{directory}/{name}".strip("/")
                n = tree.stat(rel)
                kind = {"dir": "d", "file": "-", "link": "l"}[n.kind]
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(n.mtime_ns / 1e9))
                method = METHODS.get(n.method, str(n.method)) if n.method is not None else ""
                print(f"{kind} {n.size:>12} {when} {method:<8} {rel}"
                      f"{'/' if n.kind == 'dir' else ''}")
                if args.recursive and n.kind == "dir":
                    todo.append(rel)
    finally:
        engine.close()
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    try:
        raw = os.getxattr(args.mountpoint, STATS_XATTR)
    except OSError as exc:
        raise ZipmountError(f"{args.mountpoint}: no zipmount daemon answers here "
                            f"({exc.strerror})") from None
    data = json.loads(raw)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for key, value in data.items():
        if isinstance(value, dict):
            value = "  ".join(f"{k}={v}" for k, v in value.items()) or "-"
        print(f"{key:<24} {value}")
    return 0


def cmd_prefetch(args: argparse.Namespace) -> int:
    files: list[str] = []
    for path in args.paths:
        if os.path.isdir(path):
            for dirpath, _, names in os.walk(path):
                files.extend(os.path.join(dirpath, n) for n in sorted(names))
        elif os.path.exists(path):
            files.append(path)
        else:
            raise ZipmountError(f"{path}: no such file or directory")
    files = [f for f in files if stat.S_ISREG(os.lstat(f).st_mode)]
    total = sum(os.lstat(f).st_size for f in files)
    tty = sys.stderr.isatty()
    done = failed = 0
    t0 = time.monotonic()
    for i, name in enumerate(files, 1):
        try:
            with open(name, "rb", buffering=0) as f:
                while chunk := f.read(1 << 20):
                    done += len(chunk)
                    if tty:
                        _progress(done, total, i, len(files), t0)
        except OSError as exc:
            failed += 1
            print(f"zipmount: prefetch {name}: {exc.strerror}", file=sys.stderr)
    if tty:
        print(file=sys.stderr)
    secs = time.monotonic() - t0
    print(f"prefetched {len(files) - failed} files, {done / 2**20:.1f} MiB in {secs:.1f} s"
          + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


def _progress(done: int, total: int, i: int, n: int, t0: float) -> None:
    width = 30
    frac = done / total if total else 1.0
    bar = "#" * int(frac * width)
    rate = done / max(1e-6, time.monotonic() - t0) / 2**20
    print(f"\r[{bar:<{width}}] {frac:6.1%} file {i}/{n} {rate:7.1f} MiB/s", end="",
          file=sys.stderr, flush=True)


def cmd_cache(args: argparse.Namespace) -> int:
    from .cache import DiskTier

    cfg = load_config(args.config) if args.config else Config()
    root = Path(args.cache_dir or cfg.cache.dir or default_cache_dir())
    if not root.is_dir():
        raise ZipmountError(f"{root}: no cache there")
    capacity = parse_size(args.cache_size, "--cache-size") if args.cache_size else cfg.cache.size
    try:
        disk = DiskTier(root, capacity if args.action == "prune" else 2**62)
    except BlockingIOError:
        raise ZipmountError(f"{root} is in use by a running zipmount daemon; "
                            "stop it first") from None
    try:
        if args.action == "clear":
            shutil.rmtree(disk.files_dir)
            disk.files_dir.mkdir()
            print(f"cleared {root}")
        elif args.action == "prune":
            disk.prune()
            print(f"pruned {root} to {disk.used / 2**20:.1f} MiB (cap {capacity / 2**20:.0f} MiB)")
        else:
            counts = disk.counts()
            print(f"cache dir   {root}\nused        {disk.used / 2**20:.1f} MiB\n"
                  f"blocks      {counts['blocks']}\nindexes     {counts['indexes']}\n"
                  f"spill files {counts['spills']}")
    finally:
        disk.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        if args.command == "mount":
            return cmd_mount(args, argv)
        return {"umount": cmd_umount, "ls": cmd_ls, "stats": cmd_stats,
                "prefetch": cmd_prefetch, "cache": cmd_cache}[args.command](args)
    except UsageError as exc:
        print(f"zipmount: error: {exc}", file=sys.stderr)
        return 2
    except ZipmountError as exc:
        print(f"zipmount: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `zipmount stats MP | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def mount_helper(argv: list[str] | None = None) -> int:
    """``mount.fuse.zipmount SOURCE MOUNTPOINT [-o OPTIONS]``, as mount(8) calls it for fstab."""
    argv = sys.argv[1:] if argv is None else argv
    positional = [a for a in argv if not a.startswith("-")]
    opts: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "-o" and i + 1 < len(argv):
            opts.extend(argv[i + 1].split(","))
    positional = [a for i, a in enumerate(argv) if not a.startswith("-")
                  and not (i > 0 and argv[i - 1] == "-o")]
    if len(positional) != 2:
        print("usage: mount.fuse.zipmount SOURCE MOUNTPOINT [-o options]", file=sys.stderr)
        return 2
    cli = ["mount", *positional]
    fuse_opts = []
    ignored = {"_netdev", "noauto", "auto", "nofail", "user", "users", "ro", "rw", "defaults",
               "suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime"}
    for opt in opts:
        key, _, value = opt.partition("=")
        if not key or key in ignored or key.startswith(("x-", "comment=")):
            continue
        if key in ("allow_other", "uid", "gid", "umask"):
            fuse_opts.append(opt)
        elif key in ("config", "root", "suffix", "endpoint_url", "ca_bundle", "profile",
                     "env_file", "cache_dir", "log_level", "log_file", "ttl", "timeout"):
            cli += [f"--{key.replace('_', '-')}", value]
        elif key in ("anonymous", "no_verify_tls", "no_disk_cache"):
            cli.append(f"--{key.replace('_', '-')}")
        else:
            print(f"zipmount: error: unknown mount option {key!r}", file=sys.stderr)
            return 2
    if fuse_opts:
        cli += ["-o", ",".join(fuse_opts)]
    return main(cli)
