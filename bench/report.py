"""The benchmark's report: markdown tables of the records, the targets and the machine, printed
and written to ``.bench/results-<date>.md`` (+ ``.json``, ``-requests.jsonl``)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import MB, MIB, REPO, log
from bench.records import find_record, worst_memory
from bench.registry import CONTENDERS, STEPS, Step
from bench.steps.stream import STREAM_PIECE, STREAM_THREADS
from bench.targets import earlier_targets, targets_9_11

if TYPE_CHECKING:
    from bench.runner import Runner

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


class Report:
    """The tables of one run (``Runner``), from its records."""

    def __init__(self, run: Runner):
        self.run = run
        self.args = run.args
        self.spec = run.spec
        self.manifest = run.manifest
        self.endpoints = run.endpoints
        self.records = run.records
        self.notes = run.notes
        self.unavailable = run.unavailable
        self.env_versions = run.env_versions
        self.windows = run.windows
        self.touched = run.touched
        self.touched_bytes = run.touched_bytes

    def find(self, contender: str, step: str, delay) -> dict | None:
        return find_record(self.records, contender, step, delay)

    def worst_memory(self) -> dict | None:
        return worst_memory(self.records)

    def selected_steps(self) -> list[Step]:
        return [s for s in STEPS.values() if s.name in self.args.steps]

    def targets_9_11(self) -> list[tuple[str, str, str]]:
        rows = targets_9_11(self)
        for s in self.selected_steps():
            if s.targets is not None:
                rows += s.targets(self)
        return rows

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
            "drop_caches": self.run.can_drop_caches,
            "loadavg_start": self.run.load_start,
            "loadavg_end": os.getloadavg(),
            "foreign_cpu_s": round(self.run.foreign_cpu_s, 1),
            "foreign_cpu_share": round(self.run.foreign_share, 3),
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

    def write(self) -> None:
        """Print the report and write it to .bench/results-<date>.md / .json / -requests.jsonl."""
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
            f"Total run time {self.run.total_s / 60:.1f} min; other processes used "
            f"{self.run.foreign_share:.0%} of the machine meanwhile.",
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
        lines += self.contenders_table() + self.floor_table()
        for s in self.selected_steps():
            if s.tables is not None:
                lines += s.tables(self)
        targets_9_11 = self.targets_9_11()
        lines += ["### Targets of issues 9 and 11", "",
                  "| target | measured | verdict |", "|---|---|---|"]
        for t, meas, v in targets_9_11:
            lines.append(f"| {t} | {meas} | {v if v != 'not met' else '**not met**'} |")
        lines += ["", "### Earlier targets", ""]
        if self.args.quick:
            lines += ["(--quick: a smoke test on a 3 MB archive; the targets are meant for the "
                      "full data set and are not meaningful here.)", ""]
        lines += ["| target | measured | verdict |", "|---|---|---|"]
        for t, meas, v in earlier_targets(self):
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
            "targets": [{"target": t, "measured": x, "verdict": v}
                        for t, x, v in earlier_targets(self)],
            "targets_9_11": [{"target": t, "measured": x, "verdict": v}
                             for t, x, v in targets_9_11],
            "environments": self.env_versions,
            "notes": self.notes,
        }
        (out / f"results-{stamp}{suffix}.json").write_text(json.dumps(payload, indent=1))
        with open(out / f"results-{stamp}{suffix}-requests.jsonl", "w") as f:
            for r in self.run.requests_out:
                f.write(json.dumps(r) + "\n")
        log(f"wrote {md} (+ .json, -requests.jsonl)")

    def _cell_vs(self, r, base, remote: bool) -> str:
        cell = self.cell(r, remote)
        if r and base and not r.get("error") and not base.get("error") and r["time_s"]:
            cell += f" · **{base['time_s'] / r['time_s']:.2f}×**"
        return cell

    def contenders_table(self) -> list[str]:
        """Every contender built per endpoint on the eeg and list steps, vs the seed recipe."""
        lines: list[str] = []
        cols = [c.name for c in CONTENDERS.values()
                if c.make is not None and c.name in self.args.contenders]
        with_ff = "fuse-floor" in self.args.contenders
        if "eeg" in self.args.steps and len(cols) > 1:
            for delay in sorted(self.endpoints):
                lines += [
                    f"### Contenders, {'+' + format(delay, 'g') + ' ms per request' if delay else '0 ms'}"
                    " (speed-up vs the seed recipe in bold)",
                    "",
                    "| step | " + " | ".join(CONTENDERS[c].label for c in cols)
                    + (" | " + CONTENDERS["fuse-floor"].label if with_ff else "") + " |",
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

    def floor_table(self) -> list[str]:
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
