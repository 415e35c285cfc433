"""The training-loop contender: a ``torch.utils.data.Dataset`` of random windows over the cohort,
read by ``DataLoader(num_workers=N)`` (torch is optional: without it this contender is left out).

    python -m bench.loader mount ROOT OPTIONS_JSON       # ROOT: a prefix mount (rNNNN.zip dirs)
    python -m bench.loader fsspec ENDPOINT OPTIONS_JSON  # zipmount's fsspec filesystem in workers

Same protocol as :mod:`bench.sampler`: prints ``READY`` once every worker has started and
delivered a window (a training run pays the start-up once; an 8 s measurement must not be
mostly that), waits for a line on stdin, reads for ``duration`` seconds and prints one JSON line
with the windows read, the elapsed time, errors and the chunk keys touched (the workers go on
prefetching while the runner waits: up to two windows per worker are read before the count).
``workers`` (N) and ``cache_dir`` (fsspec) come in OPTIONS_JSON. Each worker keeps the groups it
opened, as a real dataset would.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.cohort import BUCKET, PREFIX


class RandomWindows:
    """Window ``idx``: a seeded random (recording, channel, offset); returns the samples and
    where they came from. ``open_recording(i)`` gives recording ``i``'s zarr group."""

    def __init__(self, open_recording: Callable[[int], Any], opts: dict) -> None:
        self.open_recording = open_recording
        self.opts = opts
        self.groups: dict[int, Any] = {}  # per worker: a forked worker fills its own copy

    def __len__(self) -> int:
        return 1 << 40

    def __getitem__(self, idx: int) -> tuple[np.ndarray, tuple[int, int, int]]:
        o = self.opts
        rng = np.random.default_rng((o["seed"], idx))
        i = int(rng.integers(0, o["recordings"]))
        ch = int(rng.integers(0, o["channels"]))
        off = int(rng.integers(0, o["samples"] - o["length"]))
        group = self.groups.get(i)
        if group is None:
            group = self.groups[i] = self.open_recording(i)
        return group["eeg"][ch, off:off + o["length"]], (i, ch, off)


def opener(mode: str, where: str, opts: dict) -> Callable[[int], Any]:
    import zarr

    if mode == "fsspec":
        import fsspec

        fs = fsspec.filesystem("zipmount", fo=f"s3://{BUCKET}/{PREFIX}",
                               target_options={"anon": True, "endpoint_url": where},
                               cache_dir=opts["cache_dir"], skip_instance_cache=True)
        return lambda i: zarr.open_group(fs.get_mapper(f"r{i:04d}.zip"), mode="r")
    return lambda i: zarr.open_group(zarr.DirectoryStore(f"{where}/r{i:04d}.zip"), mode="r")


def main() -> None:
    mode, where, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    import torch
    from torch.utils.data import DataLoader

    dataset = RandomWindows(opener(mode, where, opts), opts)
    loader = iter(DataLoader(dataset, batch_size=None, num_workers=opts["workers"],
                             collate_fn=lambda item: item))
    for _ in range(max(1, opts["workers"])):  # start-up: every worker delivers one window
        next(loader)
    print("READY", flush=True)
    sys.stdin.readline()
    touched: set[str] = set()
    windows = errors = 0
    first_error = None
    t0 = time.perf_counter()
    try:
        for samples, (i, ch, off) in loader:
            if samples.shape != (opts["length"],):
                errors += 1
                first_error = first_error or f"window of shape {samples.shape}"
            else:
                windows += 1
                for ci in range(off // opts["chunk"], (off + opts["length"] - 1) // opts["chunk"] + 1):
                    touched.add(f"r{i:04d}/eeg/{ch}.{ci}")
            if time.perf_counter() - t0 >= opts["duration"]:
                break
    except Exception as e:  # noqa: BLE001 - a failed worker ends the run; reported
        errors += 1
        first_error = first_error or f"{type(e).__name__}: {e}"[:200]
    elapsed = time.perf_counter() - t0
    print(json.dumps({"windows": windows, "elapsed_s": elapsed, "errors": errors,
                      "first_error": first_error, "torch": torch.__version__,
                      "chunks": sorted(touched)}), flush=True)


if __name__ == "__main__":
    main()
