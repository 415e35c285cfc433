"""One training-sampler process: random windows from random recordings of the cohort.

    python -m bench.sampler mount ROOT OPTIONS_JSON     # ROOT: a prefix mount (rNNNN.zip dirs)
    python -m bench.sampler seed ENDPOINT OPTIONS_JSON  # the seed recipe per recording

Prints ``READY`` once imported (and, for the seed recipe, botocore's models loaded), waits for a
line on stdin, then reads windows for ``duration`` seconds and prints one JSON line: windows
read, elapsed time, errors, and the chunk keys touched (``rNNNN/eeg/ch.ci``). Each process
keeps what it opened (a group per recording), as a DataLoader worker's dataset would.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from bench.cohort import BUCKET, key


def main() -> None:
    mode, where, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    import zarr

    if mode == "seed":
        import s3fs
        from fsspec.implementations.zip import ZipFileSystem

        s3 = s3fs.S3FileSystem(anon=True, endpoint_url=where, skip_instance_cache=True,
                               use_listings_cache=False)
        s3.info(f"{BUCKET}/{key(0)}")

        def open_rec(i: int):
            zfs = ZipFileSystem(fo=s3.open(f"{BUCKET}/{key(i)}", "rb"), skip_instance_cache=True)
            return zarr.open_group(zfs.get_mapper(""), mode="r")
    else:
        def open_rec(i: int):
            return zarr.open_group(zarr.DirectoryStore(f"{where}/r{i:04d}.zip"), mode="r")

    rng = np.random.default_rng(opts["seed"])
    n, ch_n, samples, length, chunk = (opts["recordings"], opts["channels"], opts["samples"],
                                       opts["length"], opts["chunk"])
    print("READY", flush=True)
    sys.stdin.readline()
    groups: dict[int, object] = {}
    touched: set[str] = set()
    windows = errors = 0
    first_error = None
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < opts["duration"]:
        i = int(rng.integers(0, n))
        ch = int(rng.integers(0, ch_n))
        off = int(rng.integers(0, samples - length))
        try:
            g = groups.get(i)
            if g is None:
                g = groups[i] = open_rec(i)
            w = g["eeg"][ch, off:off + length]
            if w.shape != (length,):
                raise ValueError(f"window of shape {w.shape}")
        except Exception as e:  # noqa: BLE001 - counted and reported, the sampler goes on
            errors += 1
            first_error = first_error or f"{type(e).__name__}: {e}"[:200]
            continue
        windows += 1
        for ci in range(off // chunk, (off + length - 1) // chunk + 1):
            touched.add(f"r{i:04d}/eeg/{ch}.{ci}")
    print(json.dumps({"windows": windows, "elapsed_s": time.perf_counter() - t0,
                      "errors": errors, "first_error": first_error,
                      "recordings_opened": len(groups), "chunks": sorted(touched)}), flush=True)


if __name__ == "__main__":
    main()
