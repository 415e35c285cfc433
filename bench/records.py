"""The benchmark's records: what one step's requests were, and which round a table shows."""

from __future__ import annotations

import numpy as np

from bench.servers import Request


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


def find_record(records: list[dict], contender: str, step: str, delay) -> dict | None:
    """The record of a step; over several rounds, the median round (by time) with the
    spread, and the worst request counts of any round."""
    rs = [r for r in records
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

def worst_memory(records: list[dict]) -> dict | None:
    """The memory-check round with the highest peak RSS."""
    ms = [r for r in records if r.get("step") == "memory" and r.get("vmhwm_kb")]
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
