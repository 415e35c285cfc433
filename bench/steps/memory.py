"""The ``memory`` step: stream every member of ``big.zip`` through one mount under a memory
cap, sampling the daemon's RSS, and what one plain stream from the endpoint gives."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from typing import TYPE_CHECKING

from bench.common import MB, MIB, log
from bench.contenders import RssSampler, ZipmountContender
from bench.records import summarize_requests
from bench.registry import step

if TYPE_CHECKING:
    from bench.runner import Runner


@step("memory", "round", "memory check")
def memory_round(run: Runner) -> None:
    """Once per round, on the 0 ms endpoint, when zipmount runs."""
    if not (run.want_zm and "zipmount" in run.args.contenders) or run.args.skip_memory:
        return
    zm = run.new_zipmount(run.endpoints[0], run.keys, f"mem-r{run.rep}-")
    try:
        memory_check(run, zm)
    except Exception as e:  # noqa: BLE001
        log(f"  memory check failed: {e}")
        run.notes.append(f"memory check failed: {e}")
    finally:
        zm.cleanup()


def memory_check(run: Runner, zm: ZipmountContender) -> None:
    a = run.manifest["archives"]["big"]
    cap = run.args.mem_cap_mib
    extra: list[str] = []
    if run.args.memcap_arg:
        extra = run.args.memcap_arg.format(mib=cap, bytes=cap * MIB).split()
    elif zm.help.memcap:
        extra = [zm.help.memcap, f"{cap}MiB"]
    else:
        run.notes.append("zipmount mount --help shows no memory-cap option; "
                         "memory check ran with the default cap")
    run.warm_server_file("big")
    members = sorted(a["members"])
    total = sum(a["members"][m]["file_size"] for m in members)
    log(f"memory check: streaming {total / MIB:.0f} MiB through the mount, cap {cap} MiB "
        f"({' '.join(extra) or 'default'})")
    endpoint_mbps = one_stream_mb_per_s(run, a["key"], a["members"][members[0]]["file_size"])
    mark = run.nginx.log_mark()
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
                                   timeout=run.args.step_timeout)
                per_member.append({
                    "member": m, "time_s": time.perf_counter() - t1,
                    "rc": p.returncode, "stderr": p.stderr.decode(errors="replace")[-300:],
                })
        elapsed = time.perf_counter() - t0
        end = zm.daemon_stats()
        wall_end = time.time()
    finally:
        zm.unmount()
    run.nginx.wait_quiet()
    reqs = run.nginx.log_since(mark)
    rec = {
        "rep": run.rep, "delay_ms": 0, "contender": "zipmount", "step": "memory",
        "time_s": elapsed, "streamed_bytes": total, "mb_per_s": total / MB / elapsed,
        "one_stream_mb_per_s": endpoint_mbps,
        "mem_cap_mib": cap, "memcap_args": extra, "mount": sub,
        "rss_after_mount_kb": base.get("rss_kb"), "rss_peak_sampled_kb": sampler.peak_kb,
        "vmhwm_kb": end.get("hwm_kb"), "rss_end_kb": end.get("rss_kb"),
        "cpu_s": end.get("cpu_s"), "threads": end.get("threads"),
        "members": per_member,
        "error": None if all(x["rc"] == 0 for x in per_member) else "cat failed",
    }
    rec.update(summarize_requests(reqs, run.manifest["archives"], wall_end))
    run.keep_requests(reqs, 0, "zipmount", "memory", wall_start, rec)
    run.records.append(rec)
    log(f"  memory: {elapsed:.1f} s, {rec['mb_per_s']:.0f} MB/s, VmHWM "
        f"{(rec['vmhwm_kb'] or 0) / 1024:.0f} MiB, {rec['requests']} req")

def one_stream_mb_per_s(run: Runner, key: str, nbytes: int) -> dict[str, float]:
    """What the endpoint gives one client reading ``nbytes`` in one stream: a plain HTTP
    range GET (urllib, 1 MiB reads), and s3fs (the seed recipe's library, 8 MiB blocks)."""
    import s3fs

    req = urllib.request.Request(f"{run.nginx.url}/{key}",
                                 headers={"Range": f"bytes=0-{nbytes - 1}"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        while resp.read(MIB):
            pass
    plain = nbytes / MB / (time.perf_counter() - t0)
    fs = s3fs.S3FileSystem(anon=True, endpoint_url=run.nginx.url, skip_instance_cache=True)
    t0 = time.perf_counter()
    with fs.open(key, "rb",
                 block_size=8 * MIB, cache_type="none") as f:
        left = nbytes
        while left > 0 and (piece := f.read(min(8 * MIB, left))):
            left -= len(piece)
    return {"plain_http": plain, "s3fs": nbytes / MB / (time.perf_counter() - t0)}
