"""Metadata sweep over a cohort: the ``.zgroup`` of each of many archives read once (issue 16's
target: daemon RSS within ``--memory`` + ``--index-memory`` + 120 MiB for 3,000 archives of 300
entries).

    .venv/bin/python -m bench.sweep [--archives 3000] [--entries 300] [--memory 128MiB]
                                    [--index-memory 64MiB] [--file .zgroup] [--s3]

The cohort is one generated zarr-like zip hard-linked under ``.bench/sweep/<archives>x<entries>/``
(every name is its own object to zipmount: its own cache keys and index), mounted as a prefix of
a local directory (or, with ``--s3``, of a bucket nginx serves on loopback), and swept by 8
threads reading ``<archive>/<file>`` of each archive once. The daemon's RSS is sampled all
along; its stats give the loaded indexes at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.cohort import listing_xml
from bench.contenders import RssSampler
from bench.servers import Nginx, Reaper

REPO = Path(__file__).resolve().parent.parent
ZIPMOUNT = Path(sys.executable).parent / "zipmount"
HEADROOM_MIB = 120  # the target: peak RSS <= --memory + --index-memory + this


def _template(entries: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(".zgroup", json.dumps({"zarr_format": 2}))
        zf.writestr(".zattrs", json.dumps({"patient": "x" * 40}))
        for i in range(entries - 2):
            zf.writestr(f"rkns/signals/g{i % 8}/signal/{i // 8}.0", os.urandom(64))
    return buf.getvalue()


BUCKET = "sweep"
PREFIX = "recs/"
# nginx does not list: every request for the bucket itself gets the static listing; the prefix
# is no object (a HEAD of it is 404, as S3 answers, not nginx's 403 for a directory).
LIST_LOCATION = f"""
        location ~ ^/{BUCKET}/?$ {{
            default_type application/xml;
            rewrite ^ /_list/{BUCKET}.xml break;
        }}
        location = /{BUCKET}/{PREFIX} {{ return 404; }}
"""


def make_cohort(archives: int, entries: int) -> Path:
    """The cohort's root: ``<root>/sweep/recs/rec00000.rkns`` ... (bucket ``sweep`` when served
    by nginx), with the bucket's listing in ``<root>/_list/sweep.xml``."""
    root = REPO / ".bench" / "sweep" / f"{archives}x{entries}"
    done = root / ".complete"
    if done.exists():
        return root
    recs = root / BUCKET / PREFIX
    recs.mkdir(parents=True, exist_ok=True)
    first = recs / "rec00000.rkns"
    first.write_bytes(_template(entries))
    for i in range(1, archives):
        path = recs / f"rec{i:05d}.rkns"
        if not path.exists():
            os.link(first, path)
    _write_listing(root, sorted(recs.iterdir()))
    done.touch()
    return root


def _write_listing(root: Path, paths: list[Path]) -> None:
    """A ListObjectsV2 answer naming every archive, with the size and ETag nginx serves."""
    (root / "_list").mkdir(exist_ok=True)
    (root / "_list" / f"{BUCKET}.xml").write_text(
        listing_xml(BUCKET, PREFIX, [(PREFIX + path.name, path) for path in paths]))


def _stats(mountpoint: str) -> dict:
    return json.loads(os.getxattr(mountpoint, "user.zipmount.stats"))


def run(archives: int, entries: int, memory: str, index_memory: str, threads: int,
        member: str, s3: bool) -> dict:
    cohort = make_cohort(archives, entries)
    names = sorted(p.name for p in (cohort / BUCKET / PREFIX).glob("*.rkns"))
    with tempfile.TemporaryDirectory(prefix="zm-sweep-") as tmp, \
            Reaper(Path(tmp) / "reaper.json") as reaper:
        if s3:
            nginx = Nginx(reaper, cohort, Path(tmp) / "nginx", extra_locations=LIST_LOCATION)
            nginx.start()
            where = [f"s3://{BUCKET}/{PREFIX}", "--endpoint-url", nginx.url, "--anonymous"]
        else:
            where = [f"{cohort / BUCKET / PREFIX}/"]
        mp = Path(tmp) / "mp"
        mp.mkdir()
        cmd = [str(ZIPMOUNT), "mount", where[0], str(mp), *where[1:], "--cache-dir",
               f"{tmp}/cache", "--memory", memory, "--index-memory", index_memory,
               "--suffix", ".rkns", "--log-level", "WARNING", "--log-file", f"{tmp}/daemon.log"]
        subprocess.run(cmd, check=True, stdout=sys.stderr)  # stdout is the result
        reaper.add_mount(str(mp))
        try:
            pid = int(_stats(str(mp))["pid"])
            with RssSampler(pid) as rss:
                t0 = time.monotonic()

                def read_one(name: str) -> int:
                    with open(mp / name / member, "rb") as f:
                        return len(f.read())

                with ThreadPoolExecutor(threads) as pool:
                    total = sum(pool.map(read_one, names))
                took = time.monotonic() - t0
            stats = _stats(str(mp))
        finally:
            subprocess.run([str(ZIPMOUNT), "umount", str(mp)], check=False)
            reaper.drop_mount(str(mp))
    peak_mib = rss.peak_kb / 1024
    caps_mib = _mib(memory) + _mib(index_memory)
    return {"archives": len(names), "entries": entries, "file": member,
            "source": "s3 (nginx)" if s3 else "local directory", "bytes_read": total,
            "seconds": took, "archives_per_s": len(names) / took, "peak_rss_mib": peak_mib,
            "memory_cap_mib": _mib(memory), "index_cap_mib": _mib(index_memory),
            "over_caps_mib": peak_mib - caps_mib,
            "index_memory_mib": stats.get("index_memory_bytes", 0) / 2**20,
            "open_archives": stats.get("open_archives"),
            "target_met": peak_mib <= caps_mib + HEADROOM_MIB}


def _mib(size: str) -> float:
    from zipmount.config import parse_size

    return parse_size(size) / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--archives", type=int, default=3_000)
    ap.add_argument("--entries", type=int, default=300)
    ap.add_argument("--memory", default="128MiB")
    ap.add_argument("--index-memory", default="64MiB")
    ap.add_argument("--file", default=".zgroup", help="the member read from each archive")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--s3", action="store_true",
                    help="serve the cohort over S3 (nginx on loopback) instead of a local directory")
    args = ap.parse_args(argv)
    if args.entries < 2:
        ap.error("--entries must be at least 2 (.zgroup and .zattrs)")
    result = run(args.archives, args.entries, args.memory, args.index_memory, args.threads,
                 args.file, args.s3)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
