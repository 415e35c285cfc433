"""``zipmount cache info|prune|clear``: the disk cache (also while processes are using it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import Config, default_cache_dir, human_size, load_config, parse_size
from ..errors import ZipmountError


def cmd_cache(args: argparse.Namespace) -> int:
    from ..cache import FileStore, run_blocks

    cfg = load_config(args.config) if args.config else Config()
    root = Path(args.cache_dir or cfg.cache.dir or default_cache_dir())
    if not root.is_dir():
        raise ZipmountError(f"{root}: no cache there")
    capacity = parse_size(args.cache_size, "--cache-size") if args.cache_size else cfg.cache.size
    try:
        store = FileStore(root, capacity if args.action == "prune" else 2**62)
    except OSError as exc:
        raise ZipmountError(f"cannot use cache dir {root}: {exc.strerror}") from None
    try:
        if args.action == "clear":
            store.clear()
            print(f"cleared {root}")
        elif args.action == "prune":
            store.prune()
            print(f"pruned {root} to {human_size(store.used)} (cap {human_size(capacity)})")
        else:
            files = store.files()
            # The names each layer gives its files: the block cache's runs, the archive layer's
            # indexes and spill files.
            print(f"cache dir   {root}\nused        {human_size(sum(f.size for f in files))}\n"
                  f"cap         {human_size(capacity)} (prune trims to it; daemons keep to "
                  "their own --cache-size)\n"
                  f"blocks      {sum(run_blocks(f.name) for f in files)}\n"
                  f"indexes     {sum(f.name.endswith('.index.json') for f in files)}\n"
                  f"spill files {sum(f.name.endswith('.spill') for f in files)}")
    finally:
        store.close()
    return 0

