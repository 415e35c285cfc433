"""``zipmount prefetch``: warm the cache by reading files of a mount."""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time

from ..errors import ZipmountError


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
