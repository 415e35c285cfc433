"""The benchmark's targets: each a row (target, measured, verdict) for the report.

``earlier_targets`` are the first targets (PASS / FAIL / n/a), ``targets_9_11`` those of
issues 9 and 11 (met / not met / n/a); a step adds its own with ``Verdicts``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bench.common import MB

if TYPE_CHECKING:
    from bench.report import Report


def ok(r: dict | None) -> bool:
    """A record that exists, ran without error and read the right data."""
    return r is not None and not r.get("error") and r.get("correct") is not False


class Verdicts:
    """Rows of (target, measured, verdict: met / not met / n/a)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def row(self, target: str, recs: list, measured: Callable[[], str],
            cond: Callable[[], bool]) -> None:
        """Measured and judged only when every record is ``ok``."""
        if not all(ok(r) for r in recs):
            bad = any(r is not None for r in recs)
            self.rows.append((target, "–", "not met (error)" if bad else "n/a"))
            return
        self.rows.append((target, measured(), "met" if cond() else "not met"))


def earlier_targets(report: Report) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows; verdict PASS / FAIL / n/a."""
    out = []
    d = report.args.delay_ms
    zm = lambda s, dl=d: report.find("zipmount", s, dl)  # noqa: E731
    se = lambda s, dl=d: report.find("seed", s, dl)  # noqa: E731
    lo = lambda s: report.find("local", s, None)  # noqa: E731

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
        f"({len(report.touched)} chunks, {report.touched_bytes / MB:.2f} MB)",
        f"{z['bytes'] / MB:.2f} MB = {z['bytes'] / report.touched_bytes:.2f}×"
        if ok(z) else "–",
        verdict(lambda: z.get("bytes_max", z["bytes"]) <= 2 * report.touched_bytes, z),
    ))
    for dl in sorted(report.endpoints):
        z, s = zm("whole_cold", dl), se("whole_cold", dl)
        out.append((
            f"whole array cold (+{dl:g} ms): ≥ 1.5× faster than the seed recipe",
            f"zipmount {z['time_s']:.3f} s vs seed {s['time_s']:.3f} s = "
            f"{s['time_s'] / z['time_s']:.2f}×" if ok(z) and ok(s) else "–",
            verdict(lambda z=z, s=s: s["time_s"] / z["time_s"] >= 1.5, z, s),
        ))
    for dl in sorted(report.endpoints):
        z, lw = zm("whole_warm", dl), lo("whole_warm")
        out.append((
            f"warm re-read on the same mount (+{dl:g} ms): 0 requests and ≤ 1.5× local",
            f"{z['requests']} req, {z['time_s']:.3f} s vs local warm {lw['time_s']:.3f} s "
            f"= {z['time_s'] / lw['time_s']:.2f}×" if ok(z) and ok(lw) else "–",
            verdict(lambda z=z, lw=lw: z.get("requests_max", z["requests"]) == 0
                    and z["time_s"] <= 1.5 * lw["time_s"], z, lw),
        ))
    for dl in sorted(report.endpoints):
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
        f"mount + full listing of the {report.spec.many_entries:,}-entry archive, cold, "
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
    m = report.worst_memory()
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


def targets_9_11(report: Report) -> list[tuple[str, str, str]]:
    """(target, measured, verdict: met / not met / n/a) for issues 9 and 11; the steps add
    their own rows (``Step.targets``)."""
    v = Verdicts()
    row = v.row
    d = report.args.delay_ms

    def of(c: str):
        return lambda step, dl=d: report.find(c, step, dl)

    fs, se, zm = of("zipmount-fsspec"), of("seed"), of("zipmount")

    def lo(step: str):
        return report.find("local", step, None)

    # issue 9: the fsspec filesystem vs the seed recipe
    z, s = fs("whole_cold"), se("whole_cold")
    row(f"#9 fsspec whole array cold (+{d:g} ms): ≥ 2× faster than seed", [z, s],
        lambda: f"{z['time_s']:.3f} s vs {s['time_s']:.3f} s = {s['time_s'] / z['time_s']:.2f}×",
        lambda: s["time_s"] / z["time_s"] >= 2)
    z, s = fs("windows"), se("windows")
    row(f"#9 fsspec {report.args.windows} random windows (+{d:g} ms): ≥ 2.5× faster than seed", [z, s],
        lambda: f"{z['time_s']:.3f} s vs {s['time_s']:.3f} s = {s['time_s'] / z['time_s']:.2f}×",
        lambda: s["time_s"] / z["time_s"] >= 2.5)
    row(f"#9 fsspec random windows (+{d:g} ms): ≤ 1.5× the bytes of the chunks touched "
        f"({report.touched_bytes / MB:.2f} MB)", [z],
        lambda: f"{z['bytes'] / MB:.2f} MB = {z['bytes'] / report.touched_bytes:.2f}×",
        lambda: z.get("bytes_max", z["bytes"]) <= 1.5 * report.touched_bytes)
    z = fs("whole_warm")
    row(f"#9 fsspec warm re-read (+{d:g} ms): 0 requests", [z],
        lambda: f"{z.get('requests_max', z['requests'])} req (worst round)",
        lambda: z.get("requests_max", z["requests"]) == 0)
    # issue 11
    for dl in sorted(report.endpoints):
        (r, zr), (f, fr) = report.stream_rate("zipmount", dl), report.stream_rate("s3fs-ranged", dl)
        row(f"#11 stream {report.stream_mib():.0f} MiB stored member (+{dl:g} ms): ≥ 0.8× s3fs "
            "ranged reads", [r, f],
            lambda zr=zr, fr=fr: f"{zr:.0f} vs {fr:.0f} MB/s = {zr / fr:.2f}×",
            lambda zr=zr, fr=fr: zr >= 0.8 * fr)
    for dl in sorted(report.endpoints):
        z, s = zm("whole_cold", dl), se("whole_cold", dl)
        row(f"#11 whole array cold (+{dl:g} ms): ≤ 1.0× the seed recipe's time", [z, s],
            lambda z=z, s=s: f"{z['time_s']:.3f} s vs {s['time_s']:.3f} s = "
            f"{z['time_s'] / s['time_s']:.2f}×",
            lambda z=z, s=s: z["time_s"] <= s["time_s"])
    for dl in sorted(report.endpoints):
        z, lw = zm("whole_warm", dl), lo("whole_warm")
        row(f"#11 warm re-read on the same mount (+{dl:g} ms): ≤ 1.25× local, 0 requests", [z, lw],
            lambda z=z, lw=lw: f"{z['time_s']:.3f} s vs {lw['time_s']:.3f} s = "
            f"{z['time_s'] / lw['time_s']:.2f}×, {z.get('requests_max', z['requests'])} req",
            lambda z=z, lw=lw: z["time_s"] <= 1.25 * lw["time_s"]
            and z.get("requests_max", z["requests"]) == 0)
    z, floor = zm("windows"), (report.serial_floor(d) if d else None)
    row(f"#11 {report.args.windows} random windows (+{d:g} ms): ≤ 1.15× the serial floor",
        [z] if floor is not None else [None],
        lambda: f"{z['time_s']:.3f} s vs floor {floor:.3f} s = {z['time_s'] / floor:.2f}×",
        lambda: z["time_s"] <= 1.15 * floor)
    for dl in sorted(report.endpoints):
        z, lt = zm("tiny", dl), lo("tiny")
        row(f"#11 {report.spec.tiny_arrays} tiny arrays (+{dl:g} ms): ≤ 1.5× local", [z, lt],
            lambda z=z, lt=lt: f"{z['time_s']:.3f} s vs {lt['time_s']:.3f} s = "
            f"{z['time_s'] / lt['time_s']:.2f}×",
            lambda z=z, lt=lt: z["time_s"] <= 1.5 * lt["time_s"])
    z = report.find("zipmount", "list_index", 0)
    row(f"#11 mount + `find` of the {report.spec.many_entries:,}-entry archive from the persisted "
        "index (0 ms): ≤ 0.2 s", [z], lambda: f"{z['time_s']:.3f} s",
        lambda: z["time_s"] <= 0.2)
    return v.rows
