"""zipmount benchmark: zipmount vs the in-process s3fs/ZipFileSystem recipe vs a local copy.

    .venv/bin/python -m bench.run [--quick] [--delay-ms 20]

Generates the data once (``.bench/data/<full|quick>``), serves it with nginx on
127.0.0.1 (directly; through ``bench.delay_proxy`` adding ``--delay-ms`` per request; and
through one that also caps each connection at ``--s3-like-mbps``), runs every step for every
contender at each of these endpoints, counts the
requests and bytes in nginx's access log, and writes
``.bench/results-<date>.md`` / ``.json`` (plus ``-requests.jsonl`` with every
request zipmount and the seed recipe made). All servers and mounts are stopped at
the end, also on error or Ctrl-C. See docs/BENCHMARKS.md.

This module is the command line; ``bench.runner`` runs the steps and contenders that
``bench.steps`` registers (``bench.registry``), ``bench.report`` writes the results.
"""

from __future__ import annotations

import argparse
import os
import sys

import bench.steps  # noqa: F401 - registers the steps and contenders
from bench.common import REPO, log
from bench.registry import CONTENDERS, STEPS
from bench.runner import Runner
from bench.servers import Reaper

ALL_CONTENDERS = list(CONTENDERS)
ALL_STEPS = list(STEPS)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small data set, for a smoke test")
    ap.add_argument("--delay-ms", type=float, default=20.0,
                    help="delay per request added by the proxy (default 20; 0 = no proxy run)")
    ap.add_argument("--s3-like-mbps", type=float, default=100.0,
                    help="a third endpoint: +delay and this many MB/s per connection, as S3 "
                    "serves one (default 100; 0 = none)")
    ap.add_argument("--cohort-procs", default="1,4,8",
                    help="sampler / DataLoader worker counts of the cohort step (default 1,4,8)")
    ap.add_argument("--cohort-variants", default=None,
                    help="comma-separated subset of the cohort step's variants (default: all of "
                    "mount, mount-meta, seed, loader-mount, loader-mount-meta, loader-fsspec, "
                    "loader-fsspec-meta that can run here)")
    ap.add_argument("--connect-delay-ms", type=float, default=0.0,
                    help="extra delay per new TCP connection through the proxy (default 0)")
    ap.add_argument("--contenders", default=",".join(ALL_CONTENDERS),
                    help="comma-separated subset of " + ",".join(ALL_CONTENDERS)
                    + " (the local copy always runs: it is the reference)")
    ap.add_argument("--steps", default=",".join(ALL_STEPS),
                    help="comma-separated subset of " + ",".join(ALL_STEPS))
    ap.add_argument("--cohort-seconds", type=float, default=None,
                    help="how long each sampler process reads (default 8, --quick 2)")
    ap.add_argument("--zipmount", default=str(REPO / ".venv" / "bin" / "zipmount"))
    ap.add_argument("--zipmount-arg", action="append", default=[],
                    help="extra argument for every zipmount mount (repeatable)")
    ap.add_argument("--zipmount-log-level", default="WARNING")
    ap.add_argument("--mem-cap-mib", type=int, default=256)
    ap.add_argument("--memcap-arg", default=None,
                    help="how to pass the memory cap, e.g. '--memory-cap {mib}MiB' "
                    "(default: detected from zipmount mount --help)")
    ap.add_argument("--windows", type=int, default=None, help="number of random windows (50)")
    ap.add_argument("--window-len", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=None,
                    help="rounds of every step; tables show the median round (default 3, "
                    "--quick 1)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--no-drop-caches", dest="drop_caches", action="store_false")
    ap.add_argument("--step-timeout", type=float, default=300.0,
                    help="kill the zipmount daemon if one step takes longer (s)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep mountpoints, caches, logs")
    a = ap.parse_args(argv)
    a.contenders = [c.strip() for c in a.contenders.split(",") if c.strip()]
    a.steps = [c.strip() for c in a.steps.split(",") if c.strip()]
    for what, given, known in (("contender", a.contenders, ALL_CONTENDERS),
                               ("step", a.steps, ALL_STEPS)):
        unknown = set(given) - set(known)
        if unknown:
            ap.error(f"unknown {what}(s): {', '.join(sorted(unknown))}")
    a.cohort_procs = [int(n) for n in a.cohort_procs.split(",") if n.strip()]
    if a.cohort_seconds is None:
        a.cohort_seconds = 2.0 if a.quick else 8.0
    if a.windows is None:
        a.windows = 20 if a.quick else 50
    if a.repeat is None:
        a.repeat = 1 if a.quick else 3
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    # import what the in-process contenders use up front, so no step pays for imports
    import fsspec.implementations.zip  # noqa: F401
    import s3fs  # noqa: F401
    import zarr  # noqa: F401

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # never probe an IMDS address
    os.chdir(REPO)
    state = REPO / ".bench" / "run" / "state.json"
    with Reaper(state) as reaper:
        reaper.reap_stale(log=log)
        try:
            return Runner(args, reaper).run()
        except KeyboardInterrupt:
            log("interrupted; stopping servers and mounts")
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
