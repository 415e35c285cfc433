"""The steps, contenders and tables added for issues 9 and 11 (a mixin of ``bench.run.Bench``).

* contenders on the eeg steps: zipmount's fsspec filesystem (in process, zarr-python 2),
  zarr-python 3 ``ZipStore`` over an s3fs file and VirtualiZarr's ``ZippedZarrParser`` (in
  ``.bench/venv312``), zarr-python 3 over a zipmount mount (``.venv-zarr3``), and the FUSE floor
  (``bench.memfuse``: the extracted copy served from memory with mfusepy);
* ``stream``: one 512 MiB stored member through zipmount (``cat``), through the FUSE floor, and
  the s3fs floor (2 MiB ``cat_file`` ranges of the same bytes on 4 threads);
* ``cohort``: N = 1, 4, 8 sampler processes (``bench.sampler``) over a generated cohort, through
  a prefix mount and through the seed recipe;
* the tables of these and the targets of issues 9 and 11 with the measured ratio.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.cohort import COHORT_FULL, COHORT_QUICK, PREFIX, touched_bytes
from bench.contenders import ZipmountContender
from bench.datagen import central_directory_offset
from bench.inproc import ChildContender, FuseFloorContender, ZipmountFsspecContender
from bench.venvs import VENV312, ZARR3_VENV, ensure_venv312

REPO = Path(__file__).resolve().parent.parent
MB = 1e6
MIB = 1 << 20

EXTRA_EEG = ["zipmount-fsspec", "zarr3-zipstore", "virtualizarr", "zarr3-mount"]
LABELS = {
    "seed": "seed recipe",
    "zipmount": "zipmount mount (zarr 2)",
    "zipmount-fsspec": "zipmount fsspec (zarr 2, in process)",
    "zarr3-zipstore": "zarr 3 ZipStore(s3fs file)",
    "virtualizarr": "VirtualiZarr ZippedZarrParser",
    "zarr3-mount": "zarr 3 over the zipmount mount",
    "fuse-floor": "FUSE floor (mfusepy, in memory)",
}
STREAM_PIECE = 2 * MIB
STREAM_THREADS = 4
COHORT_PROCS = (1, 4, 8)


@dataclass
class Named:
    """A stand-in contender for a measurement that is not a zarr store (``Bench.measure``)."""

    name: str
    remote: bool


def member_data_range(zip_path: str, header_offset: int, size: int) -> tuple[int, int]:
    """[start, end) of a stored member's bytes: after its local header, name and extra field."""
    with open(zip_path, "rb") as f:
        f.seek(header_offset)
        hdr = f.read(30)
    n, m = struct.unpack("<HH", hdr[26:30])
    start = header_offset + 30 + n + m
    return start, start + size


class ExtraSteps:
    """Mixed into ``bench.run.Bench``; uses its ``measure``, ``find``, ``cell``, ``nginx``."""

    # ------------------------------------------------------------ setup

    def setup_extra(self) -> None:
        """Which extra contenders can run here; builds .bench/venv312 if it is missing."""
        self.unavailable: dict[str, str] = {}
        want = set(self.args.contenders)
        if want & {"zarr3-zipstore", "virtualizarr"}:
            status = ensure_venv312(log=self._log)
            for name, group in (("zarr3-zipstore", "zarr"), ("virtualizarr", "virtualizarr")):
                if status.get(group):
                    self.unavailable[name] = f"not installable: {status[group]}"
        # zarr 3 over the mount: the project's .venv-zarr3 (make test builds it), else venv312
        self.zarr3_python = str(ZARR3_VENV / "bin" / "python")
        if "zarr3-mount" in want and not Path(self.zarr3_python).exists():
            status = ensure_venv312(log=self._log)
            if status.get("zarr"):
                self.unavailable["zarr3-mount"] = f"not installable: {status['zarr']}"
            self.zarr3_python = str(VENV312 / "bin" / "python")
        if not self.want_zm:
            for name in ("zarr3-mount",):
                self.unavailable.setdefault(name, "needs the zipmount executable")
        try:
            import zipmount.fsspec_fs  # noqa: F401
        except ImportError as e:
            self.unavailable["zipmount-fsspec"] = f"not importable: {e}"
        for name, why in self.unavailable.items():
            if name in want:
                self.notes.append(f"{name}: {why}")

    def _log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def extra_contenders(self, delay, url: str, keys: dict) -> list:
        """The eeg-step contenders of issues 9 and 11 wanted and available, for one endpoint."""
        out = []
        want = [c for c in EXTRA_EEG if c in self.args.contenders and c not in self.unavailable]
        for name in want:
            if name == "zipmount-fsspec":
                out.append(ZipmountFsspecContender(url, keys["eeg"], keys["many"], self.work))
            elif name in ("zarr3-zipstore", "virtualizarr"):
                out.append(ChildContender(name, str(VENV312 / "bin" / "python"), name, self.reaper,
                                          self.work, url, keys["eeg"]))
            elif name == "zarr3-mount":
                zm = self.new_zipmount(url, keys, f"z3r{self.rep}d{delay:g}-")
                out.append(ChildContender(name, self.zarr3_python, "zarr3-local",
                                          self.reaper, self.work, url, keys["eeg"], mount=zm))
        return out

    def new_zipmount(self, url: str, keys: dict, label: str) -> ZipmountContender:
        return ZipmountContender(self.reaper, self.args.zipmount, self.zm_help, url, keys["eeg"],
                                 keys["many"], self.work, extra_args=self.args.zipmount_arg,
                                 log_level=self.args.zipmount_log_level, label=label)

    # ------------------------------------------------------------ FUSE floor

    def fuse_floor_round(self) -> None:
        """The eeg steps and the stream through the in-memory mfusepy file system."""
        big = self.manifest["archives"]["big"]
        member = sorted(big["members"])[0]
        ff = FuseFloorContender(self.reaper, self.work, self.manifest["local"]["eeg"],
                                big["path"] if "stream" in self.args.steps else None, member)
        self._log("FUSE floor (bench.memfuse)")
        try:
            # mounted (and loaded into memory) before the steps: loading is not what it measures
            sub = ff.start(fresh=True)
            self._log(f"  memfuse mounted in {sub['mount_s']:.1f} s")
            if "eeg" in self.args.steps:
                self.eeg_sessions(ff, None)
            if "stream" in self.args.steps:
                ff.start(fresh=True)
                self.drop_caches()
                size = big["members"][member]["file_size"]
                _, rec = self.measure(Named("fuse-floor", False), None, "stream",
                                      lambda: self._cat(ff.big_path), check=False)
                rec["stream_bytes"] = size
        except Exception as e:  # noqa: BLE001
            self._log(f"  FUSE floor aborted: {e}")
            self.notes.append(f"FUSE floor aborted: {e}")
        finally:
            ff.cleanup()

    def _cat(self, path: str) -> None:
        p = subprocess.run(["cat", path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=self.args.step_timeout)
        if p.returncode:
            raise RuntimeError(f"cat {path}: {p.stderr.decode(errors='replace')[-200:]}")

    # ------------------------------------------------------------ stream

    def stream_step(self, delay, url: str) -> None:
        """One stored 512 MiB member: the s3fs ranged-read floor and zipmount's ``cat``."""
        big = self.manifest["archives"]["big"]
        member = sorted(big["members"])[0]
        info = big["members"][member]
        start, end = member_data_range(big["path"], info["offset"], info["compress_size"])
        with open(big["path"], "rb") as f:  # the object store keeps it hot
            f.seek(start)
            left = end - start
            while left > 0 and (piece := f.read(min(8 * MIB, left))):
                left -= len(piece)
        if "s3fs-ranged" in self.args.contenders:
            _, rec = self.measure(Named("s3fs-ranged", True), delay, "stream",
                                  lambda: self._ranged(url, big["key"], start, end), check=False)
            rec["stream_bytes"] = end - start
        if self.want_zm:
            zm = self.new_zipmount(url, {"eeg": big["key"], "many": big["key"]},
                                   f"st-r{self.rep}d{delay:g}-")
            try:
                zm.mount(big["key"], fresh=True)
                _, rec = self.measure(zm, delay, "stream",
                                      lambda: self._cat(os.path.join(zm.mountpoint, member)),
                                      check=False)
                rec["stream_bytes"] = end - start
                rec["daemon_cpu_s"] = zm.daemon_stats().get("cpu_s")
            except Exception as e:  # noqa: BLE001
                self._log(f"  zipmount stream at +{delay:g} ms failed: {e}")
                self.notes.append(f"zipmount stream at +{delay:g} ms failed: {e}")
            finally:
                zm.cleanup()

    @staticmethod
    def _ranged(url: str, key: str, start: int, end: int) -> int:
        """s3fs ``cat_file`` of 2 MiB ranges on 4 threads: what the HTTP layer gives zipmount."""
        import s3fs

        fs = s3fs.S3FileSystem(anon=True, endpoint_url=url, skip_instance_cache=True)
        fs.info(key)
        offsets = range(start, end, STREAM_PIECE)
        with ThreadPoolExecutor(STREAM_THREADS) as ex:
            n = sum(ex.map(lambda o: len(fs.cat_file(key, start=o, end=min(o + STREAM_PIECE, end))),
                           offsets))
        if n != end - start:
            raise RuntimeError(f"ranged reads returned {n} of {end - start} bytes")
        return n

    # ------------------------------------------------------------ cohort

    def cohort_spec(self):
        return COHORT_QUICK if self.args.quick else COHORT_FULL

    def cohort_step(self, delay, url: str) -> None:
        """N sampler processes through a prefix mount and through the seed recipe."""
        spec = self.cohort_spec()
        self.cohort_cd: dict[str, tuple[int, int]] = {}
        opts = {"recordings": spec.recordings, "channels": spec.channels, "samples": spec.samples,
                "length": self.args.window_len, "chunk": spec.chunk,
                "duration": self.args.cohort_seconds}
        modes = [m for m, ok in (("mount", self.want_zm and "zipmount" in self.args.contenders),
                                 ("seed", "seed" in self.args.contenders)) if ok]
        for mode in modes:
            try:
                self._cohort_listing(mode, delay, url, spec.recordings)
            except Exception as e:  # noqa: BLE001
                self._log(f"  cohort {mode} listing failed: {e}")
                self.notes.append(f"cohort {mode} listing at +{delay:g} ms failed: {e}")
            for n in COHORT_PROCS:
                zm = None
                try:
                    if mode == "mount":
                        # samplers know the names; the listing is measured on its own above
                        zm = self.new_zipmount(url, {"eeg": "", "many": ""}, f"co{n}-")
                        sub = zm.mount(f"cohort/{PREFIX}", fresh=True)
                        where = zm.mountpoint
                    else:
                        where, sub = url, {}
                    self._sampler_run(mode, n, where, opts, delay, sub)
                except Exception as e:  # noqa: BLE001
                    self._log(f"  cohort {mode} N={n} failed: {e}")
                    self.notes.append(f"cohort {mode} N={n} at +{delay:g} ms failed: {e}")
                finally:
                    if zm is not None:
                        zm.cleanup()

    def _cohort_listing(self, mode: str, delay, url: str, expected: int) -> None:
        """List the cohort once, as a sampler's setup does: ``os.listdir`` of a fresh prefix
        mount (mount time excluded), or one s3fs ``ls`` of the prefix (the seed recipe)."""
        zm = None
        try:
            if mode == "mount":
                zm = self.new_zipmount(url, {"eeg": "", "many": ""}, "co-list-")
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
            n, rec = self.measure(Named(f"cohort-{mode}", True), delay, "cohort_list", listing,
                                  check=False)
            rec["entries"] = n
            if n != expected:
                rec["error"] = f"listed {n} of {expected} recordings"
                self.notes.append(f"cohort {mode}: {rec['error']}")
        finally:
            if zm is not None:
                zm.cleanup()

    def _sampler_run(self, mode: str, n: int, where: str, opts: dict, delay, sub: dict) -> None:
        procs = []
        try:
            for i in range(n):
                o = dict(opts, seed=1000 * n + i)
                errf = open(self.work / f"sampler-{mode}-{n}-{i}.log", "wb")  # noqa: SIM115
                procs.append(self.reaper.spawn(
                    [sys.executable, "-m", "bench.sampler", mode, where, json.dumps(o)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf, cwd=str(REPO),
                    text=True))
                errf.close()
            for p in procs:
                if p.stdout.readline().strip() != "READY":
                    raise RuntimeError(f"a sampler did not start (logs in {self.work})")
            mark = self.nginx.log_mark()
            # a sampler stuck in a read must not hang the run: kill them all after the timeout
            watchdog = threading.Timer(opts["duration"] + self.args.step_timeout,
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
                self.reaper.stop(p)
        self.nginx.wait_quiet()
        reqs = self.nginx.log_since(mark)
        chunks = set().union(*(set(r.get("chunks", [])) for r in results))
        index_bytes = sum(self._cohort_index_bytes(r) for r in reqs)
        windows = sum(r.get("windows", 0) for r in results)
        span = max([r.get("elapsed_s", 0.0) for r in results] + [1e-9])
        rec = {
            "rep": self.rep, "delay_ms": delay, "contender": f"cohort-{mode}",
            "step": f"cohort_{n}", "time_s": span, "wall_s": wall, "procs": n,
            "windows": windows, "windows_per_s": windows / span,
            "errors": sum(r.get("errors", 0) for r in results),
            "first_error": next((r["first_error"] for r in results if r.get("first_error")), None),
            "recordings_opened": sum(r.get("recordings_opened", 0) for r in results),
            "requests": len(reqs), "bytes": sum(r.bytes for r in reqs), "index_bytes": index_bytes,
            "late_requests": sum(1 for r in reqs if r.t_end > wall_end + 0.002),
            "chunks_touched": len(chunks),
            "chunks_touched_bytes": touched_bytes(self.cohort_manifest, chunks),
            "sub": sub, "error": None if windows else "no window read",
        }
        self.records.append(rec)
        self._log(f"  cohort {mode:5s} N={n}: {windows} windows in {span:.1f} s = "
                  f"{rec['windows_per_s']:.0f}/s, {rec['requests']} req, {rec['bytes'] / MB:.1f} MB"
                  + (f", {rec['errors']} errors ({rec['first_error']})" if rec["errors"] else ""))

    def _cohort_index_bytes(self, r) -> int:
        """How many bytes of a recording's central directory (and end record) a request got."""
        path = r.path.lstrip("/").split("?")[0]
        if not path.startswith(f"cohort/{PREFIX}") or r.method != "GET" or r.status >= 300:
            return 0
        if path not in self.cohort_cd:
            p = Path(self.manifest["root"]) / path
            self.cohort_cd[path] = (p.stat().st_size, central_directory_offset(p))
        size, cd = self.cohort_cd[path]
        first, last = r.range_tuple(size) or (0, size - 1)
        return max(0, last + 1 - max(first, cd))

    # ------------------------------------------------------------ reporting

    def _cell_vs(self, r, base, remote: bool) -> str:
        cell = self.cell(r, remote)
        if r and base and not r.get("error") and not base.get("error") and r["time_s"]:
            cell += f" · **{base['time_s'] / r['time_s']:.2f}×**"
        return cell

    def extra_tables(self) -> list[str]:
        lines: list[str] = []
        cols = [c for c in ("seed", "zipmount", *EXTRA_EEG) if c in self.args.contenders]
        with_ff = "fuse-floor" in self.args.contenders
        if "eeg" in self.args.steps and len(cols) > 1:
            from bench.run import EEG_STEPS, LIST_STEPS

            for delay in sorted(self.endpoints):
                lines += [
                    f"### Contenders, {'+' + format(delay, 'g') + ' ms per request' if delay else '0 ms'}"
                    " (speed-up vs the seed recipe in bold)",
                    "",
                    "| step | " + " | ".join(LABELS[c] for c in cols)
                    + (" | " + LABELS["fuse-floor"] if with_ff else "") + " |",
                    "|---" * (len(cols) + 1 + with_ff) + "|",
                ]
                for step in EEG_STEPS + LIST_STEPS:
                    base = self.find("seed", step, delay)
                    cells = []
                    for c in cols:
                        if c in self.unavailable:
                            cells.append(self.unavailable[c][:80])
                            continue
                        r = self.find(c, step, delay)
                        cells.append(self.cell(r, True) if c == "seed" else self._cell_vs(r, base, True))
                    if with_ff:
                        cells.append(self.cell(self.find("fuse-floor", step, None), False))
                    lines.append(f"| {self.label(step)} | " + " | ".join(cells) + " |")
                lines.append("")
        lines += self._floor_table()
        lines += self._cohort_table()
        return lines

    def stream_rate(self, contender: str, delay) -> tuple[dict | None, float | None]:
        r = self.find(contender, "stream", delay)
        if not r or r.get("error") or not r.get("time_s"):
            return r, None
        return r, r["stream_bytes"] / MB / r["time_s"]

    def stream_mib(self) -> float:
        big = self.manifest["archives"]["big"]
        return big["members"][sorted(big["members"])[0]]["file_size"] / MIB

    def serial_floor(self, delay) -> float | None:
        """Chunks touched × one round trip + the local copy's time for the same windows."""
        lo = self.find("local", "windows", None)
        if not lo or lo.get("error"):
            return None
        return len(self.touched) * delay / 1000 + lo["time_s"]

    def _floor_table(self) -> list[str]:
        rows = []
        big = self.manifest["archives"]["big"]
        size = big["members"][sorted(big["members"])[0]]["file_size"]
        if "stream" in self.args.steps:
            for delay in sorted(self.endpoints):
                for c, what in (("s3fs-ranged", f"s3fs `cat_file`, {STREAM_PIECE // MIB} MiB ranges "
                                 f"on {STREAM_THREADS} threads (floor)"), ("zipmount", "zipmount `cat`")):
                    r, rate = self.stream_rate(c, delay)
                    if r is not None:
                        cpu = f", daemon CPU {r['daemon_cpu_s']:.2f} s" if r.get("daemon_cpu_s") else ""
                        rows.append(f"| stream {size / MIB:.0f} MiB stored member, +{delay:g} ms | {what} | "
                                    f"{self.cell(r, True)} | {rate or 0:.0f} MB/s{cpu} |")
            r, rate = self.stream_rate("fuse-floor", None)
            if r is not None:
                rows.append(f"| stream {size / MIB:.0f} MiB, from memory | FUSE floor `cat` | "
                            f"{self.cell(r, False)} | {rate or 0:.0f} MB/s |")
        if "eeg" in self.args.steps:
            for delay in sorted(self.endpoints):
                f = self.serial_floor(delay)
                if f is not None:
                    rows.append(f"| {self.args.windows} random windows, +{delay:g} ms | serial floor = "
                                f"{len(self.touched)} chunks × {delay:g} ms + local "
                                f"{f - len(self.touched) * delay / 1000:.3f} s"
                                f" | {f * 1000:.0f} ms | – |")
        if not rows:
            return []
        return ["### Floors", "", "| what | how | time · req · bytes | rate |", "|---|---|---|---|",
                *rows, ""]

    def _cohort_table(self) -> list[str]:
        if "cohort" not in self.args.steps:
            return []
        delay = self.cohort_delay()
        rows = []
        for n in COHORT_PROCS:
            cells = []
            for mode in ("mount", "seed"):
                r = self.find(f"cohort-{mode}", f"cohort_{n}", delay)
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
            m, s = (self.find(f"cohort-{x}", f"cohort_{n}", delay) for x in ("mount", "seed"))
            ratio = (f"{m['windows_per_s'] / s['windows_per_s']:.2f}×"
                     if m and s and s.get("windows_per_s") else "–")
            rows.append(f"| {n} | " + " | ".join(cells) + f" | {ratio} |")
        for mode, what in (("mount", "`os.listdir` of a fresh prefix mount"),
                           ("seed", "s3fs `ls` of the prefix")):
            r = self.find(f"cohort-{mode}", "cohort_list", delay)
            if r is not None:
                rows.append(f"| list the cohort ({mode}: {what}) | {self.cell(r, True)} | | |")
        spec = self.cohort_spec()
        return [f"### Cohort sampler (+{delay:g} ms): {spec.recordings:,} recordings of "
                f"{spec.channels}×{spec.samples:,} float32 (chunks of {spec.chunk}), random "
                f"{self.args.window_len}-sample windows for {self.args.cohort_seconds:g} s per process",
                "", "| processes | prefix mount | seed recipe | mount vs seed |", "|---|---|---|---|",
                *rows, ""]

    def cohort_delay(self):
        return self.args.delay_ms if self.args.delay_ms else 0

    # ------------------------------------------------------------ targets

    def extra_targets(self) -> list[tuple[str, str, str]]:
        """(target, measured, verdict: met / not met / n/a) for issues 9 and 11."""
        out: list[tuple[str, str, str]] = []
        d = self.args.delay_ms

        def ok(r) -> bool:
            return r is not None and not r.get("error") and r.get("correct") is not False

        def row(target: str, recs: list, measured, cond) -> None:
            if not all(ok(r) for r in recs):
                bad = any(r is not None for r in recs)
                out.append((target, "–", "not met (error)" if bad else "n/a"))
                return
            out.append((target, measured(), "met" if cond() else "not met"))

        def of(c: str):
            return lambda step, dl=d: self.find(c, step, dl)

        fs, se, zm = of("zipmount-fsspec"), of("seed"), of("zipmount")

        def lo(step: str):
            return self.find("local", step, None)

        # issue 9: the fsspec filesystem vs the seed recipe
        z, s = fs("whole_cold"), se("whole_cold")
        row(f"#9 fsspec whole array cold (+{d:g} ms): ≥ 2× faster than seed", [z, s],
            lambda: f"{z['time_s']:.3f} s vs {s['time_s']:.3f} s = {s['time_s'] / z['time_s']:.2f}×",
            lambda: s["time_s"] / z["time_s"] >= 2)
        z, s = fs("windows"), se("windows")
        row(f"#9 fsspec {self.args.windows} random windows (+{d:g} ms): ≥ 2.5× faster than seed", [z, s],
            lambda: f"{z['time_s']:.3f} s vs {s['time_s']:.3f} s = {s['time_s'] / z['time_s']:.2f}×",
            lambda: s["time_s"] / z["time_s"] >= 2.5)
        row(f"#9 fsspec random windows (+{d:g} ms): ≤ 1.5× the bytes of the chunks touched "
            f"({self.touched_bytes / MB:.2f} MB)", [z],
            lambda: f"{z['bytes'] / MB:.2f} MB = {z['bytes'] / self.touched_bytes:.2f}×",
            lambda: z.get("bytes_max", z["bytes"]) <= 1.5 * self.touched_bytes)
        z = fs("whole_warm")
        row(f"#9 fsspec warm re-read (+{d:g} ms): 0 requests", [z],
            lambda: f"{z.get('requests_max', z['requests'])} req (worst round)",
            lambda: z.get("requests_max", z["requests"]) == 0)
        # issue 11
        for dl in sorted(self.endpoints):
            (r, zr), (f, fr) = self.stream_rate("zipmount", dl), self.stream_rate("s3fs-ranged", dl)
            row(f"#11 stream {self.stream_mib():.0f} MiB stored member (+{dl:g} ms): ≥ 0.8× s3fs "
                "ranged reads", [r, f],
                lambda zr=zr, fr=fr: f"{zr:.0f} vs {fr:.0f} MB/s = {zr / fr:.2f}×",
                lambda zr=zr, fr=fr: zr >= 0.8 * fr)
        for dl in sorted(self.endpoints):
            z, s = zm("whole_cold", dl), se("whole_cold", dl)
            row(f"#11 whole array cold (+{dl:g} ms): ≤ 1.0× the seed recipe's time", [z, s],
                lambda z=z, s=s: f"{z['time_s']:.3f} s vs {s['time_s']:.3f} s = "
                f"{z['time_s'] / s['time_s']:.2f}×",
                lambda z=z, s=s: z["time_s"] <= s["time_s"])
        for dl in sorted(self.endpoints):
            z, lw = zm("whole_warm", dl), lo("whole_warm")
            row(f"#11 warm re-read on the same mount (+{dl:g} ms): ≤ 1.25× local, 0 requests", [z, lw],
                lambda z=z, lw=lw: f"{z['time_s']:.3f} s vs {lw['time_s']:.3f} s = "
                f"{z['time_s'] / lw['time_s']:.2f}×, {z.get('requests_max', z['requests'])} req",
                lambda z=z, lw=lw: z["time_s"] <= 1.25 * lw["time_s"]
                and z.get("requests_max", z["requests"]) == 0)
        z, floor = zm("windows"), (self.serial_floor(d) if d else None)
        row(f"#11 {self.args.windows} random windows (+{d:g} ms): ≤ 1.15× the serial floor",
            [z] if floor is not None else [None],
            lambda: f"{z['time_s']:.3f} s vs floor {floor:.3f} s = {z['time_s'] / floor:.2f}×",
            lambda: z["time_s"] <= 1.15 * floor)
        for dl in sorted(self.endpoints):
            z, lt = zm("tiny", dl), lo("tiny")
            row(f"#11 {self.spec.tiny_arrays} tiny arrays (+{dl:g} ms): ≤ 1.5× local", [z, lt],
                lambda z=z, lt=lt: f"{z['time_s']:.3f} s vs {lt['time_s']:.3f} s = "
                f"{z['time_s'] / lt['time_s']:.2f}×",
                lambda z=z, lt=lt: z["time_s"] <= 1.5 * lt["time_s"])
        z = self.find("zipmount", "list_index", 0)
        row(f"#11 mount + `find` of the {self.spec.many_entries:,}-entry archive from the persisted "
            "index (0 ms): ≤ 0.2 s", [z], lambda: f"{z['time_s']:.3f} s",
            lambda: z["time_s"] <= 0.2)
        cd = self.cohort_delay()
        m1, m8, s8 = (self.find(c, f"cohort_{n}", cd) for c, n in
                      (("cohort-mount", 1), ("cohort-mount", 8), ("cohort-seed", 8)))
        row(f"#11 cohort sampler (+{cd:g} ms): windows/s through the mount scale ≥ 6× from 1 to 8 "
            "processes", [m1, m8],
            lambda: f"{m1['windows_per_s']:.0f} → {m8['windows_per_s']:.0f}/s = "
            f"{m8['windows_per_s'] / m1['windows_per_s']:.2f}×",
            lambda: m8["windows_per_s"] >= 6 * m1["windows_per_s"])
        row(f"#11 cohort sampler, 8 processes (+{cd:g} ms): ≥ 3× the seed recipe's windows/s", [m8, s8],
            lambda: f"{m8['windows_per_s']:.0f} vs {s8['windows_per_s']:.0f}/s = "
            f"{m8['windows_per_s'] / s8['windows_per_s']:.2f}×",
            lambda: m8["windows_per_s"] >= 3 * s8["windows_per_s"])
        row(f"#11 cohort sampler, 8 processes (+{cd:g} ms): ≤ 2× the bytes of the chunks touched", [m8],
            lambda: f"{m8['bytes'] / MB:.1f} MB vs {m8['chunks_touched_bytes'] / MB:.1f} MB = "
            f"{m8['bytes'] / max(1, m8['chunks_touched_bytes']):.2f}×",
            lambda: m8["bytes"] <= 2 * m8["chunks_touched_bytes"])
        return out
