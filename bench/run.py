"""zipmount benchmark: zipmount vs the in-process s3fs/ZipFileSystem recipe vs a local copy.

    .venv/bin/python -m bench.run [--quick] [--delay-ms 20]

Generates the data once (``.bench/data/<full|quick>``), serves it with nginx on
127.0.0.1 (directly, and through ``bench.delay_proxy`` adding ``--delay-ms`` per
request), runs every step for every contender at 0 ms and at +delay, counts the
requests and bytes in nginx's access log, and writes
``.bench/results-<date>.md`` / ``.json`` (plus ``-requests.jsonl`` with every
request zipmount and the seed recipe made). All servers and mounts are stopped at
the end, also on error or Ctrl-C. See docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from pathlib import Path

import numpy as np

from bench.cohort import LIST_LOCATION, ensure_cohort, write_listing
from bench.contenders import (
    LocalContender,
    RssSampler,
    SeedContender,
    ZipmountContender,
    ZipmountHelp,
    rmtree_unmounted,
)
from bench.datagen import FULL, QUICK, ensure_data
from bench.extra import ExtraSteps
from bench.inproc import ChildResult
from bench.servers import DelayProxy, Nginx, Reaper, Request
from bench.workload import digest, make_windows, run_op, window_chunks

REPO = Path(__file__).resolve().parent.parent
MB = 1e6
MIB = 1 << 20

STEP_LABELS = {
    "open": "mount + open group",
    "windows": "{w} random {n}-sample windows",
    "channel": "one whole channel ({c} chunks)",
    "tiny": "{t} tiny arrays (list + read)",
    "whole_cold": "whole array, cold ({mb:.0f} MB raw)",
    "whole_warm": "whole array, warm (same mount / objects)",
    "remount_open": "remount + open group (same cache dir)",
    "remount_windows": "after remount: the same {w} windows",
    "remount_whole": "after remount: whole array",
    "list_cold": "{e} entries: mount + `find` (cold)",
    "list_index": "{e} entries: remount + `find` (persisted index)",
}
EEG_STEPS = ["open", "windows", "channel", "tiny", "whole_cold", "whole_warm",
             "remount_open", "remount_windows", "remount_whole"]
LIST_STEPS = ["list_cold", "list_index"]
ALL_CONTENDERS = ["local", "seed", "zipmount", "zipmount-fsspec", "zarr3-zipstore", "virtualizarr",
                  "zarr3-mount", "fuse-floor", "s3fs-ranged"]
ALL_STEPS = ["eeg", "list", "stream", "memory", "cohort"]


def cpu_snapshot() -> tuple[float, float, float]:
    """(CPU seconds the whole machine was busy, CPU seconds of this process and its waited-for
    children, monotonic time). The difference over a run is what *other* processes used."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0))
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user \
        + t.children_system, time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- request log summary


def summarize_requests(reqs: list[Request], archives: dict, step_end_wall: float) -> dict:
    by_path = {a["key"]: a for a in archives.values()}
    heads = gets = other = data_gets = index_gets = late = 0
    nbytes = data_bytes = 0
    sizes = []
    for r in reqs:
        if r.t_end > step_end_wall + 0.002:
            late += 1
        nbytes += r.bytes
        if r.method == "HEAD":
            heads += 1
        elif r.method == "GET":
            gets += 1
            sizes.append(r.bytes)
            a = by_path.get(r.path.lstrip("/").split("?")[0])
            rng = r.range_tuple(a["size"]) if a else None
            # a range that reaches into the central directory (or the tail that holds the
            # end-of-central-directory record) reads the index; anything before it is data
            if a is not None and rng is not None and rng[1] >= a["central_directory_offset"]:
                index_gets += 1
            else:
                data_gets += 1
                data_bytes += r.bytes
        else:
            other += 1
    return {
        "requests": len(reqs),
        "heads": heads,
        "gets": gets,
        "other": other,
        "data_gets": data_gets,
        "index_gets": index_gets,
        "bytes": nbytes,
        "data_bytes": data_bytes,
        "late_requests": late,
        "connections": len({r.connection for r in reqs}),
        "get_size_min": int(min(sizes)) if sizes else None,
        "get_size_median": int(np.median(sizes)) if sizes else None,
        "get_size_max": int(max(sizes)) if sizes else None,
        "statuses": sorted({r.status for r in reqs}),
    }


# ---------------------------------------------------------------- runner


class Bench(ExtraSteps):
    def __init__(self, args, reaper: Reaper):
        self.args = args
        self.reaper = reaper
        self.spec = QUICK if args.quick else FULL
        self.records: list[dict] = []
        self.requests_out: list[dict] = []
        self.notes: list[str] = []
        self.reference: dict[str, str] = {}
        self.can_drop_caches = False
        self.rep = 0
        self.env_versions: dict[str, dict] = {}
        self.t_start = time.monotonic()

    # --- helpers ---
    def drop_caches(self) -> None:
        if not self.args.drop_caches:
            return
        os.sync()
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            self.can_drop_caches = True
        except OSError as e:
            if not any("drop_caches" in n for n in self.notes):
                self.notes.append(f"could not drop the page cache ({e}); cold steps are warm")
            return
        # The object store keeps its objects hot; only the client side starts cold.
        for name in ("eeg", "many"):
            with open(self.manifest["archives"][name]["path"], "rb") as f:
                while f.read(8 * MIB):
                    pass

    def cold(self, c) -> None:
        """Start a cold step: drop the page cache, re-warm what is not under test."""
        self.drop_caches()
        zm = c if isinstance(c, ZipmountContender) else getattr(c, "mount", None)
        if isinstance(zm, ZipmountContender) and self.args.drop_caches:
            self.warm_software(zm)

    def warm_software(self, c: ZipmountContender) -> None:
        """Bring zipmount's own code (Python modules, botocore's models) back into the page
        cache, so a "cold" mount measures cold *data*, not reading site-packages from disk."""
        code = (
            "import importlib, pkgutil, zipmount, s3fs\n"
            "for m in pkgutil.walk_packages(zipmount.__path__, 'zipmount.'):\n"
            "    try: importlib.import_module(m.name)\n"
            "    except Exception: pass\n"
            f"s3fs.S3FileSystem(anon=True, endpoint_url={c.endpoint!r},"
            " skip_instance_cache=True).info("
            f"{self.manifest['archives']['eeg']['key']!r})\n"
        )
        py = Path(c.exe).resolve().parent / "python"
        subprocess.run([str(py if py.exists() else sys.executable), "-c", code],
                       capture_output=True, timeout=120, env=c._env())

    def warm_server_file(self, name: str) -> None:
        with open(self.manifest["archives"][name]["path"], "rb") as f:
            while f.read(8 * MIB):
                pass

    def keep_requests(self, reqs, delay, contender, step, t0_wall, rec) -> None:
        """Keep every request (for -requests.jsonl); note when the first one came."""
        for r in reqs:
            self.requests_out.append({
                "delay_ms": delay, "contender": contender, "step": step,
                "t": round(r.t_start - t0_wall, 4), "method": r.method,
                "path": r.path, "range": r.range, "status": r.status, "bytes": r.bytes,
                "request_time": r.request_time, "conn": r.connection,
            })
        if reqs:
            rec["first_request_s"] = round(min(r.t_start for r in reqs) - t0_wall, 4)

    def measure(self, c, delay, step: str, fn, *, check: bool = True, extra: dict | None = None):
        remote = c.remote
        mark = self.nginx.log_mark() if remote else 0
        watchdog = None
        if hasattr(c, "watchdog_kill"):
            watchdog = threading.Timer(self.args.step_timeout, c.watchdog_kill)
            watchdog.daemon = True
            watchdog.start()
        t0 = time.perf_counter()
        err = None
        value = None
        try:
            value = fn()
        except Exception as e:  # noqa: BLE001 - a failing contender must not stop the run
            err = f"{type(e).__name__}: {e}"
            log(f"  ERROR in {c.name} {step}: {err}")
            traceback.print_exc(limit=3, file=sys.stderr)
        finally:
            if watchdog is not None:
                watchdog.cancel()
        elapsed = time.perf_counter() - t0
        wall_end = time.time()
        child = value if isinstance(value, ChildResult) else None
        if child is not None:
            elapsed, value = child.time_s, None  # the worker's own time, without the pipe
        rec = {
            "rep": self.rep,
            "delay_ms": delay,
            "contender": c.name,
            "step": step,
            "time_s": elapsed,
            "error": err,
        }
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
            value, sub = value
            rec["sub"] = sub
        if extra:
            rec.update(extra)
        if remote:
            rec["settle_s"] = self.nginx.wait_quiet()
            reqs = self.nginx.log_since(mark)
            rec.update(summarize_requests(reqs, self.manifest["archives"], wall_end))
            self.keep_requests(reqs, delay, c.name, step, wall_end - elapsed, rec)
        else:
            rec.update({"requests": 0, "bytes": 0, "data_gets": 0})
        if check and err is None and (value is not None or child is not None):
            d = child.digest if child is not None else digest(value)
            rec["digest"] = d
            ref_key = step.replace("remount_", "").replace("_cold", "").replace("_warm", "")
            if c.name == "local":
                self.reference.setdefault(ref_key, d)
            elif ref_key in self.reference:
                rec["correct"] = self.reference[ref_key] == d
                if not rec["correct"]:
                    log(f"  WRONG DATA: {c.name} {step} differs from the local copy")
        self.records.append(rec)
        dl = "-" if delay is None else f"{delay:g}"
        msg = f"  {c.name:8s} {dl:>3} ms {step:16s} {elapsed:8.3f} s"
        if remote:
            msg += f"  {rec['requests']:5d} req  {rec['bytes'] / MB:9.2f} MB"
            if rec.get("late_requests"):
                msg += f"  ({rec['late_requests']} after the step)"
        log(msg)
        return value, rec

    # --- sessions ---
    def eeg_sessions(self, c, delay) -> None:
        spec = self.spec
        # session 1: explore (fresh)
        self.cold(c)
        try:
            g, _ = self.measure(c, delay, "open", lambda: self._open(c, fresh=True),
                                check=False)
            if g is None:
                raise RuntimeError("open failed")
            self.measure(c, delay, "windows", lambda: self.op(c, g, "windows"))
            ch = spec.channels - 1
            self.measure(c, delay, "channel", lambda: self.op(c, g, "channel", channel=ch))
            self.measure(c, delay, "tiny", lambda: self.op(c, g, "tiny"))
        finally:
            self._stop(c, delay, "explore")
        # session 2: bulk (fresh), then remount with the same cache
        self.cold(c)
        try:
            g, _ = self.measure(c, delay, "open2", lambda: self._open(c, fresh=True),
                                check=False)
            if g is None:
                raise RuntimeError("open failed")
            self.measure(c, delay, "whole_cold", lambda: self.op(c, g, "whole"))
            self.measure(c, delay, "whole_warm", lambda: self.op(c, g, "whole"))
        finally:
            self._stop(c, delay, "bulk")
        self.cold(c)
        try:
            g, _ = self.measure(c, delay, "remount_open", lambda: self._open(c, fresh=False),
                                check=False)
            if g is None:
                raise RuntimeError("remount failed")
            self.measure(c, delay, "remount_windows", lambda: self.op(c, g, "windows"))
            self.measure(c, delay, "remount_whole", lambda: self.op(c, g, "whole"))
        finally:
            self._stop(c, delay, "remount")

    def op(self, c, g, op: str, **kw):
        """One read step: in this process, or as a command to the contender's worker."""
        if op == "windows":
            kw = {"windows": self.windows, "length": self.args.window_len}
        if hasattr(c, "call"):
            return c.call(op, **kw)
        return run_op(g, op, **kw)

    def _open(self, c, fresh: bool = True):
        sub = c.start(fresh=fresh)
        t0 = time.perf_counter()
        g = c.group()
        sub = dict(sub)
        sub["open_group_s"] = time.perf_counter() - t0
        return g, sub

    def _stop(self, c, delay=None, session: str = "", listing: bool = False) -> None:
        try:
            st = c.stop_listing() if listing else c.stop()
        except Exception as e:  # noqa: BLE001
            log(f"  ERROR stopping {c.name}: {e}")
            return
        if st:
            self.records.append({"contender": c.name, "step": "_unmount", "delay_ms": delay,
                                 "rep": self.rep, "session": session, **st})

    def listing_sessions(self, c, delay) -> None:
        self.cold(c)
        try:
            n, rec = self.measure(c, delay, "list_cold", lambda: c.listing(fresh=True),
                                  check=False)
            rec["entries"] = n
        finally:
            self._stop(c, delay, "list_cold", listing=True)
        self.cold(c)
        try:
            n, rec = self.measure(c, delay, "list_index", lambda: c.listing(fresh=False),
                                  check=False)
            rec["entries"] = n
        finally:
            self._stop(c, delay, "list_index", listing=True)

    def memory_check(self, zm: ZipmountContender) -> None:
        a = self.manifest["archives"]["big"]
        cap = self.args.mem_cap_mib
        extra: list[str] = []
        if self.args.memcap_arg:
            extra = self.args.memcap_arg.format(mib=cap, bytes=cap * MIB).split()
        elif zm.help.memcap:
            extra = [zm.help.memcap, f"{cap}MiB"]
        else:
            self.notes.append("zipmount mount --help shows no memory-cap option; "
                              "memory check ran with the default cap")
        self.warm_server_file("big")
        members = sorted(a["members"])
        total = sum(a["members"][m]["file_size"] for m in members)
        log(f"memory check: streaming {total / MIB:.0f} MiB through the mount, cap {cap} MiB "
            f"({' '.join(extra) or 'default'})")
        endpoint_mbps = self.one_stream_mb_per_s(a["key"], a["members"][members[0]]["file_size"])
        mark = self.nginx.log_mark()
        wall_start = time.time()
        try:
            sub = zm.mount(a["key"], fresh=True, extra=extra)
            base = zm.daemon_stats()
            t0 = time.perf_counter()
            per_member = []
            with RssSampler(zm.proc.pid) as sampler:
                for m in members:
                    t1 = time.perf_counter()
                    p = subprocess.run(["cat", os.path.join(zm.mountpoint, m)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       timeout=self.args.step_timeout)
                    per_member.append({
                        "member": m, "time_s": time.perf_counter() - t1,
                        "rc": p.returncode, "stderr": p.stderr.decode(errors="replace")[-300:],
                    })
            elapsed = time.perf_counter() - t0
            end = zm.daemon_stats()
            wall_end = time.time()
        finally:
            zm.unmount()
        self.nginx.wait_quiet()
        reqs = self.nginx.log_since(mark)
        rec = {
            "rep": self.rep, "delay_ms": 0, "contender": "zipmount", "step": "memory",
            "time_s": elapsed, "streamed_bytes": total, "mb_per_s": total / MB / elapsed,
            "one_stream_mb_per_s": endpoint_mbps,
            "mem_cap_mib": cap, "memcap_args": extra, "mount": sub,
            "rss_after_mount_kb": base.get("rss_kb"), "rss_peak_sampled_kb": sampler.peak_kb,
            "vmhwm_kb": end.get("hwm_kb"), "rss_end_kb": end.get("rss_kb"),
            "cpu_s": end.get("cpu_s"), "threads": end.get("threads"),
            "members": per_member,
            "error": None if all(x["rc"] == 0 for x in per_member) else "cat failed",
        }
        rec.update(summarize_requests(reqs, self.manifest["archives"], wall_end))
        self.keep_requests(reqs, 0, "zipmount", "memory", wall_start, rec)
        self.records.append(rec)
        log(f"  memory: {elapsed:.1f} s, {rec['mb_per_s']:.0f} MB/s, VmHWM "
            f"{(rec['vmhwm_kb'] or 0) / 1024:.0f} MiB, {rec['requests']} req")

    def one_stream_mb_per_s(self, key: str, nbytes: int) -> dict[str, float]:
        """What the endpoint gives one client reading ``nbytes`` in one stream: a plain HTTP
        range GET (urllib, 1 MiB reads), and s3fs (the seed recipe's library, 8 MiB blocks)."""
        import s3fs

        req = urllib.request.Request(f"{self.nginx.url}/{key}",
                                     headers={"Range": f"bytes=0-{nbytes - 1}"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=60) as resp:
            while resp.read(MIB):
                pass
        plain = nbytes / MB / (time.perf_counter() - t0)
        fs = s3fs.S3FileSystem(anon=True, endpoint_url=self.nginx.url, skip_instance_cache=True)
        t0 = time.perf_counter()
        with fs.open(key, "rb",
                     block_size=8 * MIB, cache_type="none") as f:
            left = nbytes
            while left > 0 and (piece := f.read(min(8 * MIB, left))):
                left -= len(piece)
        return {"plain_http": plain, "s3fs": nbytes / MB / (time.perf_counter() - t0)}

    # --- main ---
    def run(self) -> int:
        args = self.args
        data_base = REPO / ".bench" / "data"
        self.manifest = ensure_data(self.spec, data_base, log=log)
        self.windows = make_windows(self.spec.channels, self.spec.samples, args.windows,
                                    args.window_len)
        self.touched = window_chunks(self.spec.chunk, self.windows, args.window_len)
        members = self.manifest["archives"]["eeg"]["members"]
        self.touched_bytes = sum(members[k]["compress_size"] for k in self.touched)

        self.load_start = os.getloadavg()
        self.cpu_start = cpu_snapshot()
        if self.load_start[0] > 1.5:
            log(f"WARNING: load average {self.load_start[0]:.1f} on {os.cpu_count()} CPUs: "
                "something else is running, the numbers will be noisy")
        self.work = Path(tempfile.mkdtemp(prefix="zipmount-bench-"))
        try:
            return self._run()
        finally:
            self.reaper.cleanup()
            if not args.keep_tmp:
                rmtree_unmounted(self.work)

    def _run(self) -> int:
        args = self.args
        if "cohort" in args.steps:
            root = Path(self.manifest["root"])
            self.cohort_manifest = ensure_cohort(self.cohort_spec(), root, log=log)
            write_listing(self.cohort_spec(), root)
        self.nginx = Nginx(self.reaper, Path(self.manifest["root"]), self.work / "nginx",
                           extra_locations=LIST_LOCATION)
        self.nginx.start()
        log(f"nginx on {self.nginx.url} serving {self.manifest['root']}")
        endpoints = {0: self.nginx.url}
        if args.delay_ms:
            px = DelayProxy(self.reaper, self.nginx.port, args.delay_ms, self.work,
                            connect_delay_ms=args.connect_delay_ms)
            px.start()
            endpoints[args.delay_ms] = px.url
            log(f"delay proxy (+{args.delay_ms:g} ms/request) on {px.url}")
        self.endpoints = endpoints

        exe = args.zipmount
        self.zm_help = None
        needs_exe = {"zipmount", "zarr3-mount"} & set(args.contenders)
        self.want_zm = bool(needs_exe)
        if self.want_zm:
            if not Path(exe).exists():
                self.notes.append(f"{exe} not found: zipmount was not benchmarked")
                log(f"{exe} not found; running without zipmount")
                self.want_zm = False
            else:
                self.zm_help = ZipmountHelp(exe)
                log(f"zipmount: anonymous={self.zm_help.anonymous} memcap={self.zm_help.memcap}")
        self.setup_extra()
        keys = {k: self.manifest["archives"][k]["key"] for k in ("eeg", "many")}

        for rep in range(args.repeat):
            self.rep = rep
            if args.repeat > 1:
                log(f"=== round {rep + 1} of {args.repeat}")
            self.one_round(endpoints, keys)
        if "cohort" in args.steps:
            log(f"cohort sampler at +{self.cohort_delay():g} ms (one round)")
            self.cohort_step(self.cohort_delay(), endpoints[self.cohort_delay()])

        self.reaper.cleanup()
        self.total_s = time.monotonic() - self.t_start
        busy1, ours1, t1 = cpu_snapshot()
        busy0, ours0, t0 = self.cpu_start
        ncpu = len(os.sched_getaffinity(0))
        self.foreign_cpu_s = max(0.0, (busy1 - busy0) - (ours1 - ours0))
        self.foreign_share = self.foreign_cpu_s / ((t1 - t0) * ncpu)
        log(f"other processes used {self.foreign_cpu_s:.0f} CPU-s during the run "
            f"({self.foreign_share:.0%} of the machine)")
        if self.foreign_share > 0.05:
            self.notes.append(
                f"other processes were busy during the run: {self.foreign_cpu_s:.0f} CPU-seconds "
                f"= {self.foreign_share:.0%} of the {ncpu} CPUs over {t1 - t0:.0f} s "
                f"(load average {self.load_start[0]:.1f} at the start): numbers are noisy")
        self.write_results()
        return 0

    def one_round(self, endpoints, keys) -> None:
        args = self.args
        steps = set(args.steps)
        want_zm = self.want_zm and "zipmount" in args.contenders
        # the floor first: its results are the reference for correctness checks
        if {"eeg", "list"} & steps:
            local = LocalContender(self.manifest["local"]["eeg"], self.manifest["local"]["many"])
            log("local copy")
            if "eeg" in steps:
                self.eeg_sessions(local, None)
            if "list" in steps:
                self.listing_sessions(local, None)
        if "fuse-floor" in args.contenders and {"eeg", "stream"} & steps:
            self.fuse_floor_round()

        for delay, url in endpoints.items():
            contenders = []
            if "seed" in args.contenders:
                contenders.append(SeedContender(url, keys["eeg"], keys["many"]))
            if want_zm:
                contenders.append(self.new_zipmount(url, keys, f"r{self.rep}d{delay:g}-"))
            if "eeg" in steps:
                contenders += self.extra_contenders(delay, url, keys)
            for c in contenders:
                log(f"{c.name} at +{delay:g} ms")
                try:
                    if hasattr(c, "warm_up"):
                        c.warm_up()
                    if getattr(c, "versions", None):
                        self.env_versions[c.name] = c.versions
                    if "eeg" in steps:
                        self.eeg_sessions(c, delay)
                except Exception as e:  # noqa: BLE001
                    log(f"  {c.name} at +{delay:g} ms aborted: {e}")
                    self.notes.append(f"{c.name} at +{delay:g} ms: eeg steps aborted: {e}")
                try:
                    if "list" in steps and hasattr(c, "listing"):
                        self.listing_sessions(c, delay)
                except Exception as e:  # noqa: BLE001
                    log(f"  {c.name} listing at +{delay:g} ms aborted: {e}")
                    self.notes.append(f"{c.name} at +{delay:g} ms: listing aborted: {e}")
                if hasattr(c, "cleanup"):
                    c.cleanup()
            if "stream" in steps:
                self.stream_step(delay, url)

        if want_zm and "memory" in steps and not args.skip_memory:
            zm = self.new_zipmount(endpoints[0], keys, f"mem-r{self.rep}-")
            try:
                self.memory_check(zm)
            except Exception as e:  # noqa: BLE001
                log(f"  memory check failed: {e}")
                self.notes.append(f"memory check failed: {e}")
            finally:
                zm.cleanup()

    # ---------------------------------------------------------------- reporting

    def find(self, contender, step, delay):
        """The record of a step; over several rounds, the median round (by time) with the
        spread, and the worst request counts of any round."""
        rs = [r for r in self.records
              if r.get("contender") == contender and r.get("step") == step
              and (contender == "local" or r.get("delay_ms") == delay)]
        if len(rs) <= 1:
            return rs[0] if rs else None
        ok = sorted((r for r in rs if not r.get("error")), key=lambda r: r["time_s"])
        if not ok:
            return rs[0]
        out = dict(ok[(len(ok) - 1) // 2])
        out["rounds"] = len(rs)
        out["time_min"], out["time_max"] = ok[0]["time_s"], ok[-1]["time_s"]
        for k in ("requests", "data_gets", "bytes"):
            if k in out:
                out[k + "_max"] = max(r.get(k, 0) for r in ok)
        if any(r.get("correct") is False for r in rs):
            out["correct"] = False
        failed = [r["error"] for r in rs if r.get("error")]
        if failed:
            out["failed_rounds"] = f"{len(failed)}/{len(rs)} rounds failed: {failed[0][:60]}"
        return out

    def worst_memory(self) -> dict | None:
        """The memory-check round with the highest peak RSS."""
        ms = [r for r in self.records if r.get("step") == "memory" and r.get("vmhwm_kb")]
        if not ms:
            return None
        for r in ms:
            r["peak_kb"] = max(r["vmhwm_kb"], r["rss_peak_sampled_kb"])
        worst = dict(max(ms, key=lambda r: r["peak_kb"]))
        worst["rounds"] = len(ms)
        worst["peaks_mib"] = [round(r["peak_kb"] / 1024) for r in ms]
        if any(r.get("error") for r in ms):
            worst["error"] = next(r["error"] for r in ms if r.get("error"))
        return worst

    def label(self, step: str) -> str:
        s = self.spec
        return STEP_LABELS[step].format(
            w=self.args.windows, n=self.args.window_len, c=-(-s.samples // s.chunk),
            t=s.tiny_arrays, mb=s.channels * s.samples * 4 / MB, e=f"{s.many_entries:,}",
        )

    @staticmethod
    def cell(r, remote: bool) -> str:
        if r is None:
            return "n/a"
        if r.get("error"):
            return f"ERROR ({r['error'][:60]})"
        def fmt(t):
            return f"{t * 1000:.0f} ms" if t < 1 else f"{t:.2f} s"

        s = fmt(r["time_s"])
        if r.get("rounds", 1) > 1:
            s += f" ({fmt(r['time_min'])}–{fmt(r['time_max'])})"
        if remote:
            s += f" · {r['requests']} req · {r['bytes'] / MB:.1f} MB"
        if r.get("correct") is False:
            s += " · **WRONG DATA**"
        if r.get("failed_rounds"):
            s += f" · **{r['failed_rounds']}**"
        return s

    @staticmethod
    def ratio(a, b) -> str:
        if not a or not b or a.get("error") or b.get("error") or not b["time_s"]:
            return "–"
        return f"{a['time_s'] / b['time_s']:.1f}×"

    def table(self, delay) -> list[str]:
        lines = [
            f"### +{delay:g} ms per request" if delay else "### 0 ms (loopback)",
            "",
            "| step | local copy | seed recipe (s3fs → ZipFileSystem) | zipmount "
            "| zipmount vs seed (speed-up) | zipmount vs local (slow-down) |",
            "|---|---|---|---|---|---|",
        ]
        for step in EEG_STEPS + LIST_STEPS:
            lo = self.find("local", step, delay)
            se = self.find("seed", step, delay)
            zm = self.find("zipmount", step, delay)
            lines.append(
                f"| {self.label(step)} | {self.cell(lo, False)} | {self.cell(se, True)} | "
                f"{self.cell(zm, True)} | {self.ratio(se, zm)} | {self.ratio(zm, lo)} |"
            )
        return lines

    def targets(self) -> list[tuple[str, str, str]]:
        """(target, measured, verdict) rows; verdict PASS / FAIL / n/a."""
        out = []
        d = self.args.delay_ms
        zm = lambda s, dl=d: self.find("zipmount", s, dl)  # noqa: E731
        se = lambda s, dl=d: self.find("seed", s, dl)  # noqa: E731
        lo = lambda s: self.find("local", s, None)  # noqa: E731

        def ok(rec) -> bool:
            return rec is not None and not rec.get("error") and rec.get("correct") is not False

        def verdict(cond, *recs) -> str:
            if not all(ok(r) for r in recs):
                return "n/a" if any(r is None for r in recs) else "FAIL"
            return "PASS" if cond() else "FAIL"

        z, s = zm("windows"), se("windows")
        out.append((
            f"random windows (+{d:g} ms): ≥ 20× faster than the seed recipe",
            f"zipmount {z['time_s']:.3f} s vs seed {s['time_s']:.3f} s = "
            f"{s['time_s'] / z['time_s']:.1f}×" if ok(z) and ok(s) else "–",
            verdict(lambda: s["time_s"] / z["time_s"] >= 20, z, s),
        ))
        out.append((
            f"random windows (+{d:g} ms): bytes served ≤ 2× the chunks touched "
            f"({len(self.touched)} chunks, {self.touched_bytes / MB:.2f} MB)",
            f"{z['bytes'] / MB:.2f} MB = {z['bytes'] / self.touched_bytes:.2f}×"
            if ok(z) else "–",
            verdict(lambda: z.get("bytes_max", z["bytes"]) <= 2 * self.touched_bytes, z),
        ))
        for dl in sorted(self.endpoints):
            z, s = zm("whole_cold", dl), se("whole_cold", dl)
            out.append((
                f"whole array cold (+{dl:g} ms): ≥ 1.5× faster than the seed recipe",
                f"zipmount {z['time_s']:.3f} s vs seed {s['time_s']:.3f} s = "
                f"{s['time_s'] / z['time_s']:.2f}×" if ok(z) and ok(s) else "–",
                verdict(lambda z=z, s=s: s["time_s"] / z["time_s"] >= 1.5, z, s),
            ))
        for dl in sorted(self.endpoints):
            z, lw = zm("whole_warm", dl), lo("whole_warm")
            out.append((
                f"warm re-read on the same mount (+{dl:g} ms): 0 requests and ≤ 1.5× local",
                f"{z['requests']} req, {z['time_s']:.3f} s vs local warm {lw['time_s']:.3f} s "
                f"= {z['time_s'] / lw['time_s']:.2f}×" if ok(z) and ok(lw) else "–",
                verdict(lambda z=z, lw=lw: z.get("requests_max", z["requests"]) == 0
                        and z["time_s"] <= 1.5 * lw["time_s"], z, lw),
            ))
        for dl in sorted(self.endpoints):
            recs = [zm(s, dl) for s in ("remount_open", "remount_windows", "remount_whole")]
            if all(ok(r) for r in recs):
                meas = ", ".join(
                    f"{r['step'].replace('remount_', '')}: {r['data_gets']} data GET / "
                    f"{r['requests']} req / {r['bytes'] / MB:.2f} MB" for r in recs)
            else:
                meas = "–"
            out.append((
                f"remount with the disk cache (+{dl:g} ms): 0 requests for data",
                meas,
                verdict(lambda recs=recs: all(r.get("data_gets_max", r["data_gets"]) == 0
                                              for r in recs), *recs),
            ))
        z = zm("list_cold", 0)
        out.append((
            f"mount + full listing of the {self.spec.many_entries:,}-entry archive, cold, "
            "0 ms: ≤ 1 s",
            f"{z['time_s']:.3f} s (mount {z['sub'].get('mount_s', 0):.3f} s + find "
            f"{z['sub'].get('find_s', 0):.3f} s, {z['entries']} entries)" if ok(z) else "–",
            verdict(lambda: z["time_s"] <= 1.0, z),
        ))
        z = zm("list_index", 0)
        out.append((
            "same, from the persisted index (second mount, same cache dir), 0 ms: ≤ 0.2 s",
            f"{z['time_s']:.3f} s (mount {z['sub'].get('mount_s', 0):.3f} s + find "
            f"{z['sub'].get('find_s', 0):.3f} s, {z['requests']} req)" if ok(z) else "–",
            verdict(lambda: z["time_s"] <= 0.2, z),
        ))
        m = self.worst_memory()
        if m is not None and m.get("vmhwm_kb"):
            peak_mib = m["peak_kb"] / 1024
            out.append((
                f"daemon RSS ≤ memory cap + 100 MiB while streaming "
                f"{m['streamed_bytes'] / (1 << 30):.1f} GiB",
                f"peak {peak_mib:.0f} MiB (VmHWM, worst of {m['rounds']} rounds) vs cap "
                f"{m['mem_cap_mib']} MiB + 100 MiB; {m['mb_per_s']:.0f} MB/s",
                ("PASS" if peak_mib <= m["mem_cap_mib"] + 100 else "FAIL")
                if not m.get("error") else "FAIL",
            ))
        else:
            out.append(("daemon RSS ≤ memory cap + 100 MiB while streaming 2 GB", "–", "n/a"))
        return out

    def machine(self) -> dict:
        def run(cmd):
            try:
                return subprocess.run(cmd, capture_output=True, text=True,
                                      timeout=30).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                return ""

        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        cpu = next((ln.split(":", 1)[1].strip() for ln in
                    Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), platform.processor())
        vers = {}
        for mod in ("s3fs", "fsspec", "zarr", "numcodecs", "numpy", "mfusepy", "aiobotocore"):
            try:
                from importlib.metadata import version

                vers[mod] = version(mod)
            except Exception:  # noqa: BLE001
                vers[mod] = "?"
        nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
        return {
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "nproc": len(os.sched_getaffinity(0)),
            "ram_gib": round(int(mem) / (1 << 20), 1),
            "cpu": cpu,
            "kernel": platform.release(),
            "python": platform.python_version(),
            "packages": vers,
            "nginx": nginx_v.replace("nginx version: ", ""),
            "git_commit": run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
            "git_dirty": bool(run(["git", "-C", str(REPO), "status", "--porcelain", "zipmount"])),
            "drop_caches": self.can_drop_caches,
            "loadavg_start": self.load_start,
            "loadavg_end": os.getloadavg(),
            "foreign_cpu_s": round(getattr(self, "foreign_cpu_s", 0.0), 1),
            "foreign_cpu_share": round(getattr(self, "foreign_share", 0.0), 3),
        }

    def observations(self) -> list[str]:
        """zipmount's requests per step, as a table."""
        rows = []
        seen = set()
        for r0 in self.records:
            if r0.get("contender") != "zipmount" or "requests" not in r0:
                continue
            if (r0["delay_ms"], r0["step"]) in seen:
                continue
            seen.add((r0["delay_ms"], r0["step"]))
            r = self.find("zipmount", r0["step"], r0["delay_ms"])
            sub = r.get("sub") or {}
            subs = ", ".join(f"{k} {v:.3f} s" for k, v in sub.items()
                             if k.endswith("_s") and isinstance(v, float))
            sizes = ("–" if r.get("get_size_min") is None else
                     f"{r['get_size_min'] / 1024:.0f} / {r['get_size_median'] / 1024:.0f} / "
                     f"{r['get_size_max'] / 1024:.0f}")
            first = r.get("first_request_s")
            rows.append(
                f"| +{r['delay_ms']:g} ms | {r['step']} | {r['time_s']:.3f} s | {r['requests']} | "
                f"{r['heads']} | {r['data_gets']} | {r['index_gets']} | {sizes} | "
                f"{r['connections']} | {'–' if first is None else f'{first:.3f} s'} | "
                f"{r['late_requests']} | {subs or '–'} |"
            )
        if not rows:
            return []
        sessions = [
            f"+{r.get('delay_ms') or 0:g} ms {r.get('session')}: {r.get('cpu_s') or 0:.1f} s CPU, "
            f"{(r.get('hwm_kb') or 0) / 1024:.0f} MiB, unmount {r.get('unmount_s') or 0:.2f} s"
            for r in self.records
            if r.get("contender") == "zipmount" and r["step"] == "_unmount" and not r.get("rep")
        ]
        return [
            "| delay | step | time | req | HEAD | data GET | index GET | GET KiB min / median / "
            "max | connections | first request at | after step | sub-times |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Daemon per mount, first round (CPU time, VmHWM, unmount time): " + "; ".join(sessions) + ".",
        ]

    def write_results(self) -> None:
        m = self.machine()
        spec = self.spec
        eeg = self.manifest["archives"]["eeg"]
        lines = [
            f"# zipmount benchmark results ({'quick' if self.args.quick else 'full'}), "
            f"{m['date']}",
            "",
            "Command: `" + shlex.join([".venv/bin/python", "-m", "bench.run", *sys.argv[1:]]) + "`"
            + f" (+{self.args.delay_ms:g} ms, {self.args.repeat} round(s); steps "
            f"{','.join(self.args.steps)}; contenders {','.join(self.args.contenders)})  ",
            f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, "
            f"Linux {m['kernel']}, Python {m['python']}, {m['nginx']}; "
            + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
            + f"; zipmount at {m['git_commit']}{' (dirty tree)' if m['git_dirty'] else ''}  ",
            *([("Other environments: " + "; ".join(
                f"{name}: " + ", ".join(f"{k} {v}" for k, v in vs.items())
                for name, vs in sorted(self.env_versions.items())) + "  ")]
              if self.env_versions else []),
            f"Data: `eeg.zip` {eeg['size'] / MB:.1f} MB, {eeg['entries']} entries "
            f"(zarr v2, {spec.channels}×{spec.samples:,} float32, chunks (1, {spec.chunk}), "
            f"Blosc zstd 5 shuffle, ZIP_STORED, + {spec.tiny_arrays} tiny arrays); "
            f"`many.zip` {spec.many_entries:,} entries; "
            f"`big.zip` {spec.big_members}×{spec.big_member_mib} MiB stored.  ",
            f"Page cache dropped before cold steps: {'yes' if m['drop_caches'] else 'NO'} "
            "(served files re-read into the page cache afterwards, so only the client side "
            "is cold).  ",
            f"The {self.args.windows} windows touch {len(self.touched)} chunks, "
            f"{self.touched_bytes / MB:.2f} MB compressed.  ",
            f"Total run time {self.total_s / 60:.1f} min; other processes used "
            f"{getattr(self, 'foreign_share', 0.0):.0%} of the machine meanwhile.",
            "",
            "Cells: wall time · requests · bytes served (nginx access log, including "
            "requests that finished up to the moment the server went quiet after the step).",
            "",
        ]
        for delay in sorted(self.endpoints):
            lines += self.table(delay) + [""]
        mem = self.worst_memory()
        if mem:
            lines += [
                "### Memory",
                "",
                f"Peak RSS per round: {', '.join(f'{p} MiB' for p in mem['peaks_mib'])}. "
                "Worst round: "
                f"streamed {mem['streamed_bytes'] / (1 << 30):.2f} GiB "
                f"({len(mem['members'])} members, `cat` each) in {mem['time_s']:.1f} s "
                f"({mem['mb_per_s']:.0f} MB/s; one stream of the same bytes from nginx: "
                f"{mem['one_stream_mb_per_s']['plain_http']:.0f} MB/s with a plain HTTP GET, "
                f"{mem['one_stream_mb_per_s']['s3fs']:.0f} MB/s with s3fs) with "
                f"`{' '.join(mem['memcap_args']) or '(default)'}`:"
                f" daemon VmHWM {(mem['vmhwm_kb'] or 0) / 1024:.0f} MiB, highest sampled VmRSS "
                f"{mem['rss_peak_sampled_kb'] / 1024:.0f} MiB, RSS after mount "
                f"{(mem['rss_after_mount_kb'] or 0) / 1024:.0f} MiB; {mem['requests']} requests, "
                f"{mem['bytes'] / MB:.0f} MB served.",
                "",
            ]
        lines += self.extra_tables()
        lines += ["### Targets of issues 9 and 11", "",
                  "| target | measured | verdict |", "|---|---|---|"]
        for t, meas, v in self.extra_targets():
            lines.append(f"| {t} | {meas} | {v if v != 'not met' else '**not met**'} |")
        lines += ["", "### Earlier targets", ""]
        if self.args.quick:
            lines += ["(--quick: a smoke test on a 3 MB archive; the targets are meant for the "
                      "full data set and are not meaningful here.)", ""]
        lines += ["| target | measured | verdict |", "|---|---|---|"]
        for t, meas, v in self.targets():
            lines.append(f"| {t} | {meas} | {'**' + v + '**' if v == 'FAIL' else v} |")
        lines.append("")
        if self.notes:
            lines += ["### Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        obs = self.observations()
        if obs:
            lines += ["### zipmount request pattern", ""] + obs + [""]
        text = "\n".join(lines)
        print(text)
        out = REPO / ".bench"
        stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
        suffix = "-quick" if self.args.quick else ""
        md = out / f"results-{stamp}{suffix}.md"
        md.write_text(text)
        payload = {
            "machine": m,
            "args": vars(self.args),
            "spec": self.manifest["spec"],
            "windows": self.windows,
            "chunks_touched": self.touched,
            "chunks_touched_bytes": self.touched_bytes,
            "archives": {k: {kk: vv for kk, vv in v.items() if kk != "members"}
                         for k, v in self.manifest["archives"].items()},
            "records": self.records,
            "targets": [{"target": t, "measured": x, "verdict": v} for t, x, v in self.targets()],
            "targets_9_11": [{"target": t, "measured": x, "verdict": v}
                             for t, x, v in self.extra_targets()],
            "environments": getattr(self, "env_versions", {}),
            "notes": self.notes,
        }
        (out / f"results-{stamp}{suffix}.json").write_text(json.dumps(payload, indent=1))
        with open(out / f"results-{stamp}{suffix}-requests.jsonl", "w") as f:
            for r in self.requests_out:
                f.write(json.dumps(r) + "\n")
        log(f"wrote {md} (+ .json, -requests.jsonl)")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small data set, for a smoke test")
    ap.add_argument("--delay-ms", type=float, default=20.0,
                    help="delay per request added by the proxy (default 20; 0 = no proxy run)")
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
            return Bench(args, reaper).run()
        except KeyboardInterrupt:
            log("interrupted; stopping servers and mounts")
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
