"""``zipmount cache info|prune|clear``: the disk cache."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..config import Config, default_cache_dir, load_config, parse_size
from ..errors import ZipmountError


def cmd_cache(args: argparse.Namespace) -> int:
    from ..cache import DiskTier

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
