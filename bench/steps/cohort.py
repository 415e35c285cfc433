"""The ``cohort`` step: N = 1, 4, 8 sampler processes (``bench.sampler``) reading random windows
of a generated cohort of recordings, through a prefix mount and through the seed recipe, at
the +delay endpoint, once after the rounds; its table and its targets."""

from __future__ import annotations

import contextlib
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

COHORT_PROCS = (1, 4, 8)



def cohort_spec(args: Namespace) -> CohortSpec:
    return COHORT_QUICK if args.quick else COHORT_FULL

def cohort_delay(args: Namespace) -> float:
    return args.delay_ms if args.delay_ms else 0


def prepare_cohort(run: Runner) -> None:
    """Generate the cohort (once) and its static listing before nginx serves them."""
    root = Path(run.manifest["root"])
    run.prepared["cohort"] = ensure_cohort(cohort_spec(run.args), root, log=log)
    write_listing(cohort_spec(run.args), root)


def cohort_table(report: Report) -> list[str]:
    if "cohort" not in report.args.steps:
        return []
    delay = cohort_delay(report.args)
    rows = []
    for n in COHORT_PROCS:
        cells = []
        for mode in ("mount", "seed"):
            r = report.find(f"cohort-{mode}", f"cohort_{n}", delay)
            if r is None:
                cells.append("n/a")
                continue
            cells.append(
                f"{r['windows_per_s']:.0f} windows/s ({r['windows']} in {r['time_s']:.1f} s) · "
                f"{r['requests']} req · {r['bytes'] / MB:.1f} MB served (of it central directories "
                f"{r.get('index_bytes', 0) / MB:.2f} MB) · chunks touched "
                f"{r['chunks_touched_bytes'] / MB:.1f} MB = "
                f"{r['bytes'] / max(1, r['chunks_touched_bytes']):.2f}×"
                + (f" · **{r['errors']} errors**" if r.get("errors") else ""))
        m, s = (report.find(f"cohort-{x}", f"cohort_{n}", delay) for x in ("mount", "seed"))
        ratio = (f"{m['windows_per_s'] / s['windows_per_s']:.2f}×"
                 if m and s and s.get("windows_per_s") else "–")
        rows.append(f"| {n} | " + " | ".join(cells) + f" | {ratio} |")
    for mode, what in (("mount", "`os.listdir` of a fresh prefix mount"),
                       ("seed", "s3fs `ls` of the prefix")):
        r = report.find(f"cohort-{mode}", "cohort_list", delay)
        if r is not None:
            rows.append(f"| list the cohort ({mode}: {what}) | {report.cell(r, True)} | | |")
    spec = cohort_spec(report.args)
    return [f"### Cohort sampler (+{delay:g} ms): {spec.recordings:,} recordings of "
            f"{spec.channels}×{spec.samples:,} float32 (chunks of {spec.chunk}), random "
            f"{report.args.window_len}-sample windows for {report.args.cohort_seconds:g} s per process",
            "", "| processes | prefix mount | seed recipe | mount vs seed |", "|---|---|---|---|",
            *rows, ""]


def cohort_targets(report: Report) -> list[tuple[str, str, str]]:
    """The cohort targets of issue 11."""
    v = Verdicts()
    cd = cohort_delay(report.args)
    m1, m8, s8 = (report.find(c, f"cohort_{n}", cd) for c, n in
                  (("cohort-mount", 1), ("cohort-mount", 8), ("cohort-seed", 8)))
    v.row(f"#11 cohort sampler (+{cd:g} ms): windows/s through the mount scale ≥ 6× from 1 to 8 "
          "processes", [m1, m8],
        lambda: f"{m1['windows_per_s']:.0f} → {m8['windows_per_s']:.0f}/s = "
        f"{m8['windows_per_s'] / m1['windows_per_s']:.2f}×",
        lambda: m8["windows_per_s"] >= 6 * m1["windows_per_s"])
    v.row(f"#11 cohort sampler, 8 processes (+{cd:g} ms): ≥ 3× the seed recipe's windows/s", [m8, s8],
          lambda: f"{m8['windows_per_s']:.0f} vs {s8['windows_per_s']:.0f}/s = "
        f"{m8['windows_per_s'] / s8['windows_per_s']:.2f}×",
        lambda: m8["windows_per_s"] >= 3 * s8["windows_per_s"])
    v.row(f"#11 cohort sampler, 8 processes (+{cd:g} ms): ≤ 2× the bytes of the chunks touched", [m8],
          lambda: f"{m8['bytes'] / MB:.1f} MB vs {m8['chunks_touched_bytes'] / MB:.1f} MB = "
        f"{m8['bytes'] / max(1, m8['chunks_touched_bytes']):.2f}×",
        lambda: m8["bytes"] <= 2 * m8["chunks_touched_bytes"])
    return v.rows


@step("cohort", "once", prepare=prepare_cohort, tables=cohort_table, targets=cohort_targets)
def cohort_once(run: Runner) -> None:
    delay = cohort_delay(run.args)
    log(f"cohort sampler at +{delay:g} ms (one round)")
    cohort_step(run, delay, run.endpoints[delay])


def cohort_step(run: Runner, delay, url: str) -> None:
    """N sampler processes through a prefix mount and through the seed recipe."""
    spec = cohort_spec(run.args)
    cd_cache: dict[str, tuple[int, int]] = {}
    opts = {"recordings": spec.recordings, "channels": spec.channels, "samples": spec.samples,
            "length": run.args.window_len, "chunk": spec.chunk,
            "duration": run.args.cohort_seconds}
    modes = [m for m, ok in (("mount", run.want_zm and "zipmount" in run.args.contenders),
                             ("seed", "seed" in run.args.contenders)) if ok]
    for mode in modes:
        try:
            _cohort_listing(run, mode, delay, url, spec.recordings)
        except Exception as e:  # noqa: BLE001
            log(f"  cohort {mode} listing failed: {e}")
            run.notes.append(f"cohort {mode} listing at +{delay:g} ms failed: {e}")
        for n in COHORT_PROCS:
            zm = None
            try:
                if mode == "mount":
                    # samplers know the names; the listing is measured on its own above
                    zm = run.new_zipmount(url, {"eeg": "", "many": ""}, f"co{n}-")
                    sub = zm.mount(f"cohort/{PREFIX}", fresh=True)
                    where = zm.mountpoint
                else:
                    where, sub = url, {}
                _sampler_run(run, mode, n, where, opts, delay, sub, cd_cache)
            except Exception as e:  # noqa: BLE001
                log(f"  cohort {mode} N={n} failed: {e}")
                run.notes.append(f"cohort {mode} N={n} at +{delay:g} ms failed: {e}")
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

def _sampler_run(run: Runner, mode: str, n: int, where: str, opts: dict, delay, sub: dict,
                 cd_cache: dict[str, tuple[int, int]]) -> None:
    procs = []
    try:
        for i in range(n):
            o = dict(opts, seed=1000 * n + i)
            errf = open(run.work / f"sampler-{mode}-{n}-{i}.log", "wb")  # noqa: SIM115
            procs.append(run.reaper.spawn(
                [sys.executable, "-m", "bench.sampler", mode, where, json.dumps(o)],
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
        "rep": run.rep, "delay_ms": delay, "contender": f"cohort-{mode}",
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
    log(f"  cohort {mode:5s} N={n}: {windows} windows in {span:.1f} s = "
              f"{rec['windows_per_s']:.0f}/s, {rec['requests']} req, {rec['bytes'] / MB:.1f} MB"
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
