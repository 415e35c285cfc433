"""The ``cohort`` step: N = 1, 4, 8 processes reading random windows of a generated cohort of
recordings at each delayed endpoint (+delay, and the S3-like one), once after the rounds; its
table and its targets (issues 11 and 16).

Variants (``VARIANTS``): plain sampler processes (``bench.sampler``) through a fresh prefix mount
(``mount``), through one after ``zipmount prefetch --metadata-only`` (``mount-meta``), and
through the seed recipe (``seed``); and, where torch is installed, a ``DataLoader(num_workers=N)``
(``bench.loader``) through the mount and through zipmount's fsspec filesystem in the workers
(``loader-*``; ``-meta``: after the metadata-only prefetch into the cache dir they use).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from argparse import Namespace
from pathlib import Path
from typing import TYPE_CHECKING

from bench.cohort import (
    COHORT_FULL,
    COHORT_QUICK,
    PREFIX,
    CohortSpec,
    ensure_cohort,
    touched_bytes,
    write_listing,
)
from bench.common import MB, REPO, log
from bench.datagen import central_directory_offset
from bench.registry import step
from bench.runner import Named
from bench.targets import Verdicts

if TYPE_CHECKING:
    from bench.report import Report
    from bench.runner import Runner

# variant -> (module, how it reaches the data, after a metadata-only prefetch)
VARIANTS = {
    "mount": ("bench.sampler", "mount", False),
    "mount-meta": ("bench.sampler", "mount", True),
    "seed": ("bench.sampler", "seed", False),
    "loader-mount": ("bench.loader", "mount", False),
    "loader-mount-meta": ("bench.loader", "mount", True),
    "loader-fsspec": ("bench.loader", "fsspec", False),
    "loader-fsspec-meta": ("bench.loader", "fsspec", True),
}
VARIANT_LABELS = {
    "mount": "sampler, prefix mount (cold)",
    "mount-meta": "sampler, mount after `prefetch --metadata-only`",
    "seed": "sampler, seed recipe",
    "loader-mount": "DataLoader, mount (cold)",
    "loader-mount-meta": "DataLoader, mount after metadata-only",
    "loader-fsspec": "DataLoader, fsspec in workers (cold)",
    "loader-fsspec-meta": "DataLoader, fsspec after metadata-only",
}


def cohort_spec(args: Namespace) -> CohortSpec:
    return COHORT_QUICK if args.quick else COHORT_FULL


def cohort_delay(args: Namespace) -> float:
    """The plain delayed endpoint the issue-11/16 targets are stated at."""
    return args.delay_ms if args.delay_ms else 0


def cohort_endpoints(endpoints: dict) -> list:
    """The endpoints the cohort runs at: every delayed one (0 ms if there is none)."""
    delayed = [e for e in sorted(endpoints) if e > 0]
    return delayed or [e for e in endpoints if e == 0]


def variants(run: Runner) -> list[str]:
    """The variants this run can measure (the DataLoader needs torch; the mount, zipmount)."""
    out = []
    chosen = run.args.cohort_variants
    for name, (module, mode, _) in VARIANTS.items():
        if chosen and name not in chosen.split(","):
            continue
        if mode == "seed" and "seed" not in run.args.contenders:
            continue
        if mode != "seed" and not (run.want_zm and "zipmount" in run.args.contenders):
            continue
        if module == "bench.loader" and importlib.util.find_spec("torch") is None:
            continue
        out.append(name)
    return out


def prepare_cohort(run: Runner) -> None:
    """Generate the cohort (once) and its static listing before nginx serves them."""
    root = Path(run.manifest["root"])
    run.prepared["cohort"] = ensure_cohort(cohort_spec(run.args), root, log=log)
    write_listing(cohort_spec(run.args), root)
    if importlib.util.find_spec("torch") is None:
        run.notes.append("torch is not installed: the DataLoader contender of the cohort step "
                         "was left out (pip install torch)")


def _cell(r: dict | None) -> str:
    if r is None:
        return "n/a"
    if not r.get("windows"):
        return f"**failed** ({r.get('first_error') or r.get('error')})"
    return (f"{r['windows_per_s']:.0f}/s · {r['requests'] / r['windows']:.2f} req/window · "
            f"{r['bytes'] / max(1, r['chunks_touched_bytes']):.2f}× the chunks' bytes"
            + (f" · prefetch {r['prefetch_s']:.1f} s" if r.get("prefetch_s") else "")
            + (f" · **{r['errors']} errors**" if r.get("errors") else ""))


def cohort_table(report: Report) -> list[str]:
    if "cohort" not in report.args.steps:
        return []
    spec = cohort_spec(report.args)
    out = [f"### Cohort: {spec.recordings:,} recordings of {spec.channels}×{spec.samples:,} float32 "
           f"(chunks of {spec.chunk}), random {report.args.window_len}-sample windows for "
           f"{report.args.cohort_seconds:g} s", "",
           "Windows per second of N processes (or DataLoader workers), requests per window, "
           "bytes served ÷ the compressed bytes of the distinct chunks touched (central "
           "directories included); metadata-only: after `zipmount prefetch --metadata-only` "
           "(its own time shown).", ""]
    for endpoint in cohort_endpoints(report.endpoints):
        names = [v for v in VARIANTS if any(report.find(f"cohort-{v}", f"cohort_{n}", endpoint)
                                            for n in report.args.cohort_procs)]
        if not names:
            continue
        out += [f"#### {endpoint.label if hasattr(endpoint, 'label') else endpoint}", "",
                "| N | " + " | ".join(VARIANT_LABELS[v] for v in names) + " |",
                "|---|" + "---|" * len(names)]
        for n in report.args.cohort_procs:
            out.append(f"| {n} | " + " | ".join(
                _cell(report.find(f"cohort-{v}", f"cohort_{n}", endpoint)) for v in names) + " |")
        for mode, what in (("mount", "`os.listdir` of a fresh prefix mount"),
                           ("seed", "s3fs `ls` of the prefix")):
            r = report.find(f"cohort-{mode}", "cohort_list", endpoint)
            if r is not None:
                out.append(f"| list ({mode}: {what}) | {report.cell(r, True)} |"
                           + " |" * (len(names) - 1))
        out.append("")
    return out


def cohort_targets(report: Report) -> list[tuple[str, str, str]]:
    """The cohort targets of issues 11 and 16, at the plain +delay endpoint."""
    v = Verdicts()
    cd = cohort_delay(report.args)

    def find(variant: str, n: int) -> dict | None:
        return report.find(f"cohort-{variant}", f"cohort_{n}", cd)

    def rate(r: dict) -> float:
        return r["windows_per_s"]

    m1, m8, s8 = find("mount", 1), find("mount", 8), find("seed", 8)
    v.row(f"#11 cohort sampler (+{cd:g} ms): windows/s through the mount scale ≥ 6× from 1 to 8 "
          "processes", [m1, m8],
          lambda: f"{rate(m1):.0f} → {rate(m8):.0f}/s = {rate(m8) / rate(m1):.2f}×",
          lambda: rate(m8) >= 6 * rate(m1))
    q1, q8 = find("mount-meta", 1), find("mount-meta", 8)
    v.row(f"#16 cohort (+{cd:g} ms) after metadata-only, 1 process: ≥ 40 windows/s (0.8× the "
          "floor of 50/s)", [q1], lambda: f"{rate(q1):.0f}/s = {rate(q1) / 50:.2f}× the floor",
          lambda: rate(q1) >= 40)
    v.row(f"#16 cohort (+{cd:g} ms) after metadata-only, 8 processes: ≥ 250 windows/s", [q8],
          lambda: f"{rate(q8):.0f}/s = {rate(q8) / 400:.2f}× the floor of 400/s",
          lambda: rate(q8) >= 250)
    v.row(f"#16 cohort (+{cd:g} ms) after metadata-only, 8 processes: ≥ 3× the seed recipe's",
          [q8, s8], lambda: f"{rate(q8):.0f} vs {rate(s8):.0f}/s = {rate(q8) / rate(s8):.2f}×",
          lambda: rate(q8) >= 3 * rate(s8))
    v.row(f"#16 cohort (+{cd:g} ms) cold, 8 processes: ≥ 150 windows/s", [m8],
          lambda: f"{rate(m8):.0f}/s", lambda: rate(m8) >= 150)
    for variant, r in (("cold", m8), ("after metadata-only", q8)):
        v.row(f"#16 cohort (+{cd:g} ms) {variant}, 8 processes: bytes served ≤ 1.5× the chunks "
              "touched, central directories included", [r],
              lambda r=r: f"{r['bytes'] / MB:.1f} MB vs {r['chunks_touched_bytes'] / MB:.1f} MB = "
              f"{r['bytes'] / max(1, r['chunks_touched_bytes']):.2f}×",
              lambda r=r: r["bytes"] <= 1.5 * r["chunks_touched_bytes"])
    return v.rows


@step("cohort", "once", prepare=prepare_cohort, tables=cohort_table, targets=cohort_targets)
def cohort_once(run: Runner) -> None:
    for endpoint in cohort_endpoints(run.endpoints):
        log(f"cohort at {getattr(endpoint, 'label', endpoint)} (one round)")
        cohort_step(run, endpoint, run.endpoints[endpoint])


def cohort_step(run: Runner, delay, url: str) -> None:
    """Every variant at ``url`` with N = each of ``--cohort-procs``."""
    spec = cohort_spec(run.args)
    cd_cache: dict[str, tuple[int, int]] = {}
    opts = {"recordings": spec.recordings, "channels": spec.channels, "samples": spec.samples,
            "length": run.args.window_len, "chunk": spec.chunk,
            "duration": run.args.cohort_seconds}
    listed = set()
    for variant in variants(run):
        module, mode, meta = VARIANTS[variant]
        listing = "seed" if mode == "seed" else "mount"
        if listing not in listed:
            listed.add(listing)
            try:
                _cohort_listing(run, listing, delay, url, spec.recordings)
            except Exception as e:  # noqa: BLE001
                log(f"  cohort {listing} listing failed: {e}")
                run.notes.append(f"cohort {listing} listing at +{delay:g} ms failed: {e}")
        for n in run.args.cohort_procs:
            zm = None
            try:
                sub: dict = {}
                o = dict(opts, workers=n)
                if mode == "seed":
                    where = url
                else:
                    # samplers know the names; the listing is measured on its own above
                    zm = run.new_zipmount(url, {"eeg": "", "many": ""}, f"co{variant}{n}-")
                    sub = zm.mount(f"cohort/{PREFIX}", fresh=True)
                    where = zm.mountpoint
                    if meta:
                        t0 = time.perf_counter()
                        r = subprocess.run([run.args.zipmount, "prefetch", "--metadata-only",
                                            "-j", "16", zm.mountpoint], capture_output=True,
                                           text=True, timeout=run.args.step_timeout)
                        if r.returncode:
                            raise RuntimeError(f"prefetch --metadata-only: {r.stderr[-300:]}")
                        sub["prefetch_s"] = time.perf_counter() - t0
                    if mode == "fsspec":  # in the workers, over the cache dir the mount filled
                        o["cache_dir"] = zm.cache_dir
                        zm.unmount()
                        where = url
                _sampler_run(run, variant, module, mode, n, where, o, delay, sub, cd_cache)
            except Exception as e:  # noqa: BLE001
                log(f"  cohort {variant} N={n} failed: {e}")
                run.notes.append(f"cohort {variant} N={n} at +{delay:g} ms failed: {e}")
            finally:
                if zm is not None:
                    zm.cleanup()


def _cohort_listing(run: Runner, mode: str, delay, url: str, expected: int) -> None:
    """List the cohort once, as a sampler's setup does: ``os.listdir`` of a fresh prefix
    mount (mount time excluded), or one s3fs ``ls`` of the prefix (the seed recipe)."""
    zm = None
    try:
        if mode == "mount":
            zm = run.new_zipmount(url, {"eeg": "", "many": ""}, "co-list-")
            zm.mount(f"cohort/{PREFIX}", fresh=True)
            where = zm.mountpoint

            def listing() -> int:
                return len(os.listdir(where))
        else:
            import s3fs

            fs = s3fs.S3FileSystem(anon=True, endpoint_url=url, skip_instance_cache=True,
                                   use_listings_cache=False)

            def listing() -> int:
                return len(fs.ls(f"cohort/{PREFIX}"))
        n, rec = run.measure(Named(f"cohort-{mode}", True), delay, "cohort_list", listing,
                             check=False)
        rec["entries"] = n
        if n != expected:
            rec["error"] = f"listed {n} of {expected} recordings"
            run.notes.append(f"cohort {mode}: {rec['error']}")
    finally:
        if zm is not None:
            zm.cleanup()

def _sampler_run(run: Runner, variant: str, module: str, mode: str, n: int, where: str,
                 opts: dict, delay, sub: dict, cd_cache: dict[str, tuple[int, int]]) -> None:
    """``n`` sampler processes, or one DataLoader of ``n`` workers, reading for the duration."""
    procs = []
    try:
        for i in range(1 if module == "bench.loader" else n):
            o = dict(opts, seed=1000 * n + i)
            errf = open(run.work / f"sampler-{variant}-{n}-{i}.log", "wb")  # noqa: SIM115
            procs.append(run.reaper.spawn(
                [sys.executable, "-m", module, mode, where, json.dumps(o)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf, cwd=str(REPO),
                text=True))
            errf.close()
        for p in procs:
            if p.stdout.readline().strip() != "READY":
                raise RuntimeError(f"a sampler did not start (logs in {run.work})")
        mark = run.nginx.log_mark()
        # a sampler stuck in a read must not hang the run: kill them all after the timeout
        watchdog = threading.Timer(opts["duration"] + run.args.step_timeout,
                                   lambda: [p.kill() for p in procs if p.poll() is None])
        watchdog.daemon = True
        watchdog.start()
        t0 = time.perf_counter()
        for p in procs:
            p.stdin.write("GO\n")
            p.stdin.flush()
        results = [json.loads(p.stdout.readline() or "{}") for p in procs]
        watchdog.cancel()
        wall = time.perf_counter() - t0
        wall_end = time.time()
    finally:
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)
            run.reaper.stop(p)
    run.nginx.wait_quiet()
    reqs = run.nginx.log_since(mark)
    chunks = set().union(*(set(r.get("chunks", [])) for r in results))
    index_bytes = sum(_cohort_index_bytes(run, r, cd_cache) for r in reqs)
    windows = sum(r.get("windows", 0) for r in results)
    span = max([r.get("elapsed_s", 0.0) for r in results] + [1e-9])
    rec = {
        "rep": run.rep, "delay_ms": delay, "rate_mbps": getattr(delay, "rate_mbps", 0.0),
        "contender": f"cohort-{variant}", "module": module,
        "step": f"cohort_{n}", "time_s": span, "wall_s": wall, "procs": n,
        "windows": windows, "windows_per_s": windows / span,
        "errors": sum(r.get("errors", 0) for r in results),
        "first_error": next((r["first_error"] for r in results if r.get("first_error")), None),
        "recordings_opened": sum(r.get("recordings_opened", 0) for r in results),
        "requests": len(reqs), "bytes": sum(r.bytes for r in reqs), "index_bytes": index_bytes,
        "late_requests": sum(1 for r in reqs if r.t_end > wall_end + 0.002),
        "chunks_touched": len(chunks),
        "chunks_touched_bytes": touched_bytes(run.prepared["cohort"], chunks),
        "sub": sub, "error": None if windows else "no window read",
    }
    run.records.append(rec)
    log(f"  cohort {variant:18s} N={n}: {windows} windows in {span:.1f} s = "
              f"{rec['windows_per_s']:.0f}/s, {rec['requests']} req, {rec['bytes'] / MB:.1f} MB"
              + (f", prefetch {sub['prefetch_s']:.1f} s" if sub.get("prefetch_s") else "")
              + (f", {rec['errors']} errors ({rec['first_error']})" if rec["errors"] else ""))

def _cohort_index_bytes(run: Runner, r, cd_cache: dict[str, tuple[int, int]]) -> int:
    """How many bytes of a recording's central directory (and end record) a request got."""
    path = r.path.lstrip("/").split("?")[0]
    if not path.startswith(f"cohort/{PREFIX}") or r.method != "GET" or r.status >= 300:
        return 0
    if path not in cd_cache:
        p = Path(run.manifest["root"]) / path
        cd_cache[path] = (p.stat().st_size, central_directory_offset(p))
    size, cd = cd_cache[path]
    first, last = r.range_tuple(size) or (0, size - 1)
    return max(0, last + 1 - max(first, cd))
