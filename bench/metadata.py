"""FUSE metadata of a package tree: what Python's import asks of a mounted wheel besides data
(issue 18). On ``torch/`` of the PyTorch wheel (``bench.members.TORCH_WHEEL``), mounted with a
fresh disk cache, and on the extracted copy: one pass lists every directory (``os.scandir``,
recursively), then ``os.listdir`` of each, ``os.scandir`` + ``lstat`` of every entry (READDIRPLUS
once the kernel has looked entries up), and ``open``/``close`` of every file. The first pass on a
fresh mount is cold (the daemon computes everything), the next ones warm.

    python -m bench.metadata [--passes N]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from bench.members import TORCH_WHEEL, ensure_extracted_wheel, fresh_cache, mount


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return round(time.perf_counter() - t0, 3)


def one_pass(root: Path) -> dict[str, float | int]:
    """Seconds of each phase over the tree at ``root``."""
    dirs: list[str] = []

    def walk() -> None:
        todo = [str(root)]
        while todo:
            d = todo.pop()
            dirs.append(d)
            with os.scandir(d) as it:
                todo.extend(e.path for e in it if e.is_dir(follow_symlinks=False))

    files: list[str] = []

    def scan_and_stat() -> None:
        for d in dirs:
            with os.scandir(d) as it:
                for e in it:
                    e.stat(follow_symlinks=False)
                    if e.is_file(follow_symlinks=False):
                        files.append(e.path)

    def open_and_close() -> None:
        for f in files:
            os.close(os.open(f, os.O_RDONLY))

    took = {"walk": _timed(walk)}
    took["listdir"] = _timed(lambda: [os.listdir(d) for d in dirs])
    took["scandir+stat"] = _timed(scan_and_stat)
    took["open/close"] = _timed(open_and_close)
    return {"dirs": len(dirs), "files": len(files), **took}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.metadata")
    parser.add_argument("--passes", type=int, default=3, help="passes per tree (default 3)")
    passes = parser.parse_args().passes
    if not TORCH_WHEEL.exists():
        raise SystemExit(f"no wheel at {TORCH_WHEEL}")
    local = ensure_extracted_wheel(TORCH_WHEEL)
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    for i in range(passes):
        print(f"local pass {i + 1}: {json.dumps(one_pass(local / 'torch'))}")
    with fresh_cache() as cache, mount(TORCH_WHEEL, *cache) as (mp, _):
        for i in range(passes):
            label = "cold" if i == 0 else "warm"
            print(f"mount pass {i + 1} ({label}): {json.dumps(one_pass(mp / 'torch'))}")
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
