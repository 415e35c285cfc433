"""The benchmark runner: sets up the data, nginx and the delay proxy, runs the registered
steps and contenders (``bench.registry``) round by round, and keeps their records.

``Runner.measure`` is the one place a step is timed: it counts the requests nginx logged
during the step, checks the data against the local copy and appends the record.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

from bench.cohort import LIST_LOCATION
from bench.common import MB, MIB, REPO, Endpoint, log
from bench.contenders import ZipmountContender, ZipmountHelp, rmtree_unmounted
from bench.datagen import FULL, QUICK, ensure_data
from bench.inproc import ChildResult
from bench.records import find_record, summarize_requests
from bench.registry import CONTENDERS, STEPS
from bench.servers import DelayProxy, Nginx, Reaper
from bench.workload import digest, make_windows, run_op, window_chunks


@dataclass
class Named:
    """A stand-in contender for a measurement that is not a zarr store (``Runner.measure``)."""

    name: str
    remote: bool


def cpu_snapshot() -> tuple[float, float, float]:
    """(CPU seconds the whole machine was busy, CPU seconds of this process and its waited-for
    children, monotonic time). The difference over a run is what *other* processes used."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0))
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user \
        + t.children_system, time.monotonic()


class Runner:
    """One benchmark run: its arguments, servers, work directory and records."""

    def __init__(self, args: Namespace, reaper: Reaper):
        self.args = args
        self.reaper = reaper
        self.spec = QUICK if args.quick else FULL
        self.records: list[dict] = []
        self.requests_out: list[dict] = []
        self.notes: list[str] = []
        self.reference: dict[str, str] = {}
        self.unavailable: dict[str, str] = {}
        self.can_drop_caches = False
        self.rep = 0
        self.env_versions: dict[str, dict] = {}
        self.t_start = time.monotonic()
        self.foreign_cpu_s = 0.0
        self.foreign_share = 0.0
        self.zm_help: ZipmountHelp | None = None
        self.want_zm = False
        self.prepared: dict[str, dict] = {}  # what a step's ``prepare`` made, by step name

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
            "rate_mbps": getattr(delay, "rate_mbps", 0.0),
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

    def op(self, c, g, op: str, **kw):
        """One read step: in this process, or as a command to the contender's worker."""
        if op == "windows":
            kw = {"windows": self.windows, "length": self.args.window_len}
        if hasattr(c, "call"):
            return c.call(op, **kw)
        return run_op(g, op, **kw)

    def open_group(self, c, fresh: bool = True):
        sub = c.start(fresh=fresh)
        t0 = time.perf_counter()
        g = c.group()
        sub = dict(sub)
        sub["open_group_s"] = time.perf_counter() - t0
        return g, sub

    def stop(self, c, delay=None, session: str = "", listing: bool = False) -> None:
        try:
            st = c.stop_listing() if listing else c.stop()
        except Exception as e:  # noqa: BLE001
            log(f"  ERROR stopping {c.name}: {e}")
            return
        if st:
            self.records.append({"contender": c.name, "step": "_unmount", "delay_ms": delay,
                                 "rep": self.rep, "session": session, **st})


    def cat(self, path: str) -> None:
        p = subprocess.run(["cat", path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=self.args.step_timeout)
        if p.returncode:
            raise RuntimeError(f"cat {path}: {p.stderr.decode(errors='replace')[-200:]}")

    def new_zipmount(self, url: str, keys: dict, label: str) -> ZipmountContender:
        return ZipmountContender(self.reaper, self.args.zipmount, self.zm_help, url, keys["eeg"],
                                 keys["many"], self.work, extra_args=self.args.zipmount_arg,
                                 log_level=self.args.zipmount_log_level, label=label)

    def find(self, contender: str, step: str, delay) -> dict | None:
        """The record of a step; over several rounds, the median round (``find_record``)."""
        return find_record(self.records, contender, step, delay)

    def selected_steps(self, scope: str) -> list:
        return [s for s in STEPS.values() if s.scope == scope and s.name in self.args.steps]

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
        from bench.report import Report

        args = self.args
        for s in STEPS.values():
            if s.prepare is not None and s.name in args.steps:
                s.prepare(self)
        self.nginx = Nginx(self.reaper, Path(self.manifest["root"]), self.work / "nginx",
                           extra_locations=LIST_LOCATION)
        self.nginx.start()
        log(f"nginx on {self.nginx.url} serving {self.manifest['root']}")
        endpoints = {Endpoint(0): self.nginx.url}
        if args.delay_ms:
            for rate in (0.0, args.s3_like_mbps) if args.s3_like_mbps else (0.0,):
                px = DelayProxy(self.reaper, self.nginx.port, args.delay_ms, self.work,
                                connect_delay_ms=args.connect_delay_ms, rate_mbps=rate)
                px.start()
                endpoint = Endpoint(args.delay_ms, rate)
                endpoints[endpoint] = px.url
                log(f"delay proxy, {endpoint.label}, on {px.url}")
        self.endpoints = endpoints

        exe = args.zipmount
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
        for c in CONTENDERS.values():
            if c.check is not None and c.name in args.contenders:
                why = c.check(self)
                if why:
                    self.unavailable[c.name] = why
                    self.notes.append(f"{c.name}: {why}")
        self.keys = {k: self.manifest["archives"][k]["key"] for k in ("eeg", "many")}

        for rep in range(args.repeat):
            self.rep = rep
            if args.repeat > 1:
                log(f"=== round {rep + 1} of {args.repeat}")
            self.one_round()
        for s in self.selected_steps("once"):
            s.run(self)

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
        Report(self).write()
        return 0

    def one_round(self) -> None:
        """The contenders with a round of their own (the local copy first: its results are
        the reference for correctness checks), then per endpoint every contender's session
        steps and the endpoint steps, then the round steps."""
        args = self.args
        for c in CONTENDERS.values():
            if c.per_round is not None and (c.always or c.name in args.contenders):
                c.per_round(self)
        sessions = self.selected_steps("session")
        for delay, url in self.endpoints.items():
            made = [c.make(self, delay, url, self.keys) for c in CONTENDERS.values()
                    if c.make is not None and c.name in args.contenders
                    and c.name not in self.unavailable] if sessions else []
            for c in (c for c in made if c is not None):
                log(f"{c.name} at +{delay:g} ms")
                self.run_sessions(c, delay, sessions)
                if hasattr(c, "cleanup"):
                    c.cleanup()
            for s in self.selected_steps("endpoint"):
                s.run(self, delay, url)
        for s in self.selected_steps("round"):
            s.run(self)

    def run_sessions(self, c, delay, sessions: list) -> None:
        """Every session step on one contender; a failing step is noted, the next one runs."""
        warmed = False
        for s in sessions:
            try:
                if not warmed:
                    warmed = True
                    if hasattr(c, "warm_up"):
                        c.warm_up()
                    if getattr(c, "versions", None):
                        self.env_versions[c.name] = c.versions
                s.run(self, c, delay)
            except Exception as e:  # noqa: BLE001 - a failing contender must not stop the run
                log(f"  {c.name} {s.what} at +{delay:g} ms aborted: {e}")
                self.notes.append(f"{c.name} at +{delay:g} ms: {s.what} aborted: {e}")
