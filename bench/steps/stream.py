"""The ``stream`` step: one stored 512 MiB member of ``big.zip`` through zipmount (``cat``) and
through the s3fs floor (``cat_file`` of 2 MiB ranges of the same bytes on 4 threads)."""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from bench.common import MIB, log, slug
from bench.registry import step
from bench.runner import Named

if TYPE_CHECKING:
    from bench.runner import Runner

STREAM_PIECE = 2 * MIB
STREAM_THREADS = 4


def member_data_range(zip_path: str, header_offset: int, size: int) -> tuple[int, int]:
    """[start, end) of a stored member's bytes: after its local header, name and extra field."""
    with open(zip_path, "rb") as f:
        f.seek(header_offset)
        hdr = f.read(30)
    n, m = struct.unpack("<HH", hdr[26:30])
    start = header_offset + 30 + n + m
    return start, start + size


@step("stream", "endpoint")
def stream_step(run: Runner, delay, url: str) -> None:
    """One stored 512 MiB member: the s3fs ranged-read floor and zipmount's ``cat``."""
    big = run.manifest["archives"]["big"]
    member = sorted(big["members"])[0]
    info = big["members"][member]
    start, end = member_data_range(big["path"], info["offset"], info["compress_size"])
    with open(big["path"], "rb") as f:  # the object store keeps it hot
        f.seek(start)
        left = end - start
        while left > 0 and (piece := f.read(min(8 * MIB, left))):
            left -= len(piece)
    if "s3fs-ranged" in run.args.contenders:
        _, rec = run.measure(Named("s3fs-ranged", True), delay, "stream",
                             lambda: ranged_read(url, big["key"], start, end), check=False)
        rec["stream_bytes"] = end - start
    if run.want_zm:
        zm = run.new_zipmount(url, {"eeg": big["key"], "many": big["key"]},
                              f"st-r{run.rep}d{slug(delay)}-")
        try:
            zm.mount(big["key"], fresh=True)
            _, rec = run.measure(zm, delay, "stream",
                                 lambda: run.cat(os.path.join(zm.mountpoint, member)),
                                  check=False)
            rec["stream_bytes"] = end - start
            rec["daemon_cpu_s"] = zm.daemon_stats().get("cpu_s")
        except Exception as e:  # noqa: BLE001
            log(f"  zipmount stream at +{delay:g} ms failed: {e}")
            run.notes.append(f"zipmount stream at +{delay:g} ms failed: {e}")
        finally:
            zm.cleanup()

def ranged_read(url: str, key: str, start: int, end: int) -> int:
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
