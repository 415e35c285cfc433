"""``zipmount ls`` (an archive or prefix without mounting) and ``zipmount stats`` (a live daemon)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

from ..errors import NotFound, ZipmountError
from ..stats import STATS_XATTR
from ..tree import DEFAULT_SUFFIXES
from .logs import setup_logging
from .settings import config_from_args

METHODS = {0: "stored", 8: "deflate", 12: "bzip2", 14: "lzma"}


def cmd_ls(args: argparse.Namespace) -> int:
    from ..engine import Engine

    cfg = config_from_args(args)
    setup_logging(cfg.log_level if args.log_level else "WARNING", None, terse=True)
    errors = _ErrorLines()
    logging.getLogger().handlers.append(errors)
    cfg.cache.dir = None  # listing reads only the central directory: no disk cache needed
    engine = Engine(cfg.storage, cfg.cache)
    try:
        tree = engine.open_tree(args.source, suffixes=tuple(args.suffixes or ()) or DEFAULT_SUFFIXES,
                                root=args.root)
        todo = [args.path.strip("/")]
        while todo:
            directory = todo.pop(0)
            try:
                node = tree.stat(directory)
            except NotFound:
                raise ZipmountError(f"{directory}: no such file or directory in "
                                    f"{args.source}") from None
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
    return 1 if errors.count else 0


class _ErrorLines(logging.Handler):
    """Counts the errors logged while listing (e.g. an archive that cannot be opened): they
    make ``ls`` fail; the stderr handler has already shown each as one line."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def cmd_stats(args: argparse.Namespace) -> int:
    from ..daemon import mount_state

    try:
        raw = os.getxattr(args.mountpoint, STATS_XATTR)
    except OSError as exc:
        hint = {"stale": ": its daemon is gone; clean it with `zipmount umount "
                         f"{args.mountpoint}`",
                "free": ": nothing is mounted there"}.get(mount_state(args.mountpoint), "")
        raise ZipmountError(f"{args.mountpoint}: no zipmount daemon answers here "
                            f"({exc.strerror}){hint}") from None
    data = json.loads(raw)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for key, value in data.items():
        if isinstance(value, dict):
            value = "  ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = "  ".join(map(str, value)) or "-"
        print(f"{key:<24} {value}")
    return 0
