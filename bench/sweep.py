"""Metadata sweep over a cohort: one small file read from each of many archives (issue 10's target:
daemon RSS within the memory cap + 250 MiB for 10,000 archives of ~1,000 entries).

    .venv/bin/python -m bench.sweep [--archives 10000] [--entries 1000] [--memory 128MiB]

The cohort is one generated zip hard-linked under ``.bench/sweep/<archives>x<entries>/`` (every
name is its own object to zipmount: its own cache keys and index), mounted as a prefix of a local
directory, and swept by 8 threads reading ``<archive>/meta/.zattrs`` of each archive once. The
daemon's RSS is sampled all along; its stats give the loaded indexes at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.contenders import RssSampler

REPO = Path(__file__).resolve().parent.parent
ZIPMOUNT = REPO / ".venv" / "bin" / "zipmount"


def _template(entries: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("meta/.zattrs", json.dumps({"patient": "x" * 40}))
        for i in range(entries - 1):
            zf.writestr(f"rkns/signals/g{i % 8}/signal/{i // 8}.0", os.urandom(64))
    return buf.getvalue()


def make_cohort(archives: int, entries: int) -> Path:
    root = REPO / ".bench" / "sweep" / f"{archives}x{entries}"
    done = root / ".complete"
    if done.exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    first = root / "site0" / "rec00000.rkns"
    first.parent.mkdir(exist_ok=True)
    first.write_bytes(_template(entries))
    for i in range(1, archives):
        path = root / f"site{i % 10}" / f"rec{i:05d}.rkns"
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            os.link(first, path)
    done.touch()
    return root


def _stats(mountpoint: str) -> dict:
    return json.loads(os.getxattr(mountpoint, "user.zipmount.stats"))


def run(archives: int, entries: int, memory: str, threads: int) -> dict:
    cohort = make_cohort(archives, entries)
    with tempfile.TemporaryDirectory(prefix="zm-sweep-") as tmp:
        mp = Path(tmp) / "mp"
        mp.mkdir()
        cmd = [str(ZIPMOUNT), "mount", f"{cohort}/", str(mp), "--cache-dir", f"{tmp}/cache",
               "--memory", memory, "--suffix", ".rkns", "--log-level", "WARNING"]
        subprocess.run(cmd, check=True)
        try:
            pid = int(_stats(str(mp))["pid"])
            names = sorted(str(p.relative_to(cohort)) for p in cohort.glob("site*/*.rkns"))
            with RssSampler(pid) as rss:
                t0 = time.monotonic()

                def read_one(name: str) -> int:
                    with open(mp / name / "meta" / ".zattrs", "rb") as f:
                        return len(f.read())

                with ThreadPoolExecutor(threads) as pool:
                    total = sum(pool.map(read_one, names))
                took = time.monotonic() - t0
            stats = _stats(str(mp))
        finally:
            subprocess.run([str(ZIPMOUNT), "umount", str(mp)], check=False)
    peak_mib = rss.peak_kb / 1024
    cap_mib = _mib(memory)
    return {"archives": len(names), "entries": entries, "bytes_read": total, "seconds": took,
            "archives_per_s": len(names) / took, "peak_rss_mib": peak_mib,
            "memory_cap_mib": cap_mib, "over_cap_mib": peak_mib - cap_mib,
            "index_memory_mib": stats.get("index_memory_bytes", 0) / 2**20,
            "open_archives": stats.get("open_archives"),
            "target_met": peak_mib <= cap_mib + 250}


def _mib(size: str) -> float:
    from zipmount.config import parse_size

    return parse_size(size) / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archives", type=int, default=10_000)
    ap.add_argument("--entries", type=int, default=1_000)
    ap.add_argument("--memory", default="128MiB")
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args(argv)
    result = run(args.archives, args.entries, args.memory, args.threads)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
