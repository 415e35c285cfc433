"""``zipmount mount`` and ``zipmount umount``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from ..config import Config, MountConfig, load_config, parse_size
from ..errors import UsageError, ZipmountError
from ..stats import STATS_XATTR
from ..tree import DEFAULT_SUFFIXES
from .logs import setup_logging
from .settings import config_from_args, fuse_options

log = logging.getLogger("zipmount")


def cmd_mount(args: argparse.Namespace, argv: list[str]) -> int:
    cfg = config_from_args(args)
    if args.source or args.mountpoint:
        if not (args.source and args.mountpoint):
            raise UsageError("mount needs SOURCE and MOUNTPOINT (or --config with mounts)")
        cfg.mounts = [MountConfig(
            source=args.source, mountpoint=os.path.abspath(args.mountpoint),
            suffixes=tuple(args.suffixes) if args.suffixes else DEFAULT_SUFFIXES, root=args.root,
            options=fuse_options(args.fuse_options), archives_only=args.archives_only)]
    elif not cfg.mounts:
        raise UsageError("mount needs SOURCE and MOUNTPOINT, or --config FILE with 'mounts'")
    if args.read_ahead is not None:
        for mount in cfg.mounts:
            mount.read_ahead = parse_size(args.read_ahead, "--read-ahead")
    for mount in cfg.mounts:
        if not os.path.lexists(mount.mountpoint):
            raise UsageError(f"mountpoint {mount.mountpoint} does not exist (mkdir -p it first)")
        if not os.path.isdir(mount.mountpoint):
            raise UsageError(f"mountpoint {mount.mountpoint} is not a directory")
    if not args.foreground:
        from ..daemon import run_background

        setup_logging(cfg.log_level, None, terse=True)
        _warn_if_insecure(cfg)  # here on the terminal, and again in the daemon's log
        started = run_background(_absolute_argv(argv, cfg), cfg)
        for mount in cfg.mounts:
            print(f"mounted {mount.source} on {mount.mountpoint}"
                  + (" (offline: from the cache only)" if cfg.offline else ""))
        print(f"daemon pid {started.pid}, log {started.log}")
        return 0
    setup_logging(cfg.log_level, cfg.log_file)
    _warn_if_insecure(cfg)
    from ..daemon import run_foreground

    return run_foreground(cfg, args.ready_fd)


def _warn_if_insecure(cfg: Config) -> None:
    if not cfg.storage.verify_tls:
        log.warning("TLS certificate verification is OFF (--no-verify-tls): connections to %s "
                    "can be intercepted", cfg.storage.endpoint_url)


def _absolute_argv(argv: list[str], cfg: Config) -> list[str]:
    """The child gets the same arguments; relative paths would break after its chdir."""
    out = []
    for arg in argv:
        if os.path.exists(arg) and not arg.startswith("-"):
            arg = os.path.abspath(arg)
        out.append(arg)
    return out


def cmd_umount(args: argparse.Namespace) -> int:
    from ..daemon import mount_state

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
    """Unmount ``mp``; if that was its daemon's last mount, wait (up to 15 s) until it exits."""
    from ..daemon import mount_state, unmount

    state = mount_state(mp)
    daemon = daemon_stats(mp) if state == "mounted" else {}
    if not unmount(mp, lazy=state == "stale"):
        raise ZipmountError(f"{mp} is busy (files open?); close them or retry")
    pid = daemon.get("pid")
    if any(other != mp and mount_state(other) == "mounted"
           for other in daemon.get("mountpoints", [])):
        return 0  # the daemon goes on serving its other mounts
    deadline = time.monotonic() + 15
    while pid and _running(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.02)  # the daemon exits once its last mount is gone
    return 0


def _running(pid: int) -> bool:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rpartition(")")[2].split()[0] != "Z"  # a zombie has exited


def daemon_stats(mountpoint: str) -> dict:
    """The stats of the zipmount daemon serving ``mountpoint`` (its pid, its mountpoints)."""
    try:
        return dict(json.loads(os.getxattr(mountpoint, STATS_XATTR)))
    except (OSError, ValueError):
        return {}
