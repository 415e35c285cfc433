"""Read a zarr group through the ``zipmount`` fsspec protocol with zarr-python 3 (and xarray).

Runs in the second venv (.venv-zarr3: zarr>=3, xarray, zipmount); the pytest side launches it.

    python check_fsspec_zarr3.py URL OPTIONS.json EXPECTED.npz [--zarr-format 2|3] [--xarray]

URL is a chained URL (``zipmount::s3://bucket/key.zip``); OPTIONS.json holds the
``storage_options`` ({"s3": {...}, "zipmount": {...}}). EXPECTED.npz maps array paths to
arrays (as tests/support/archives.save_expected_npz writes).
Without --xarray: ``zarr.open_group(URL, storage_options=..., mode="r")``, every array read
whole, in part and concurrently. With --xarray: ``xarray.open_zarr(URL, ...)``, each expected
name a variable. Exits 0 printing "OK ..." when everything matches, else lists the mismatches
and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import numpy as np
import zarr


def check_zarr(url: str, options: dict, expected: dict[str, np.ndarray],
               zarr_format: int | None) -> tuple[list[str], str]:
    problems: list[str] = []
    root = zarr.open_group(url, storage_options=options, mode="r", zarr_format=zarr_format)
    if zarr_format is not None and root.metadata.zarr_format != zarr_format:
        problems.append(f"group is zarr_format {root.metadata.zarr_format}")
    for name in expected:
        want = expected[name]
        arr = root[name]
        if tuple(arr.shape) != want.shape or arr.dtype != want.dtype:
            problems.append(f"{name}: shape/dtype {arr.shape}/{arr.dtype} != {want.shape}/{want.dtype}")
            continue
        if not np.array_equal(np.asarray(arr[...]), want):
            problems.append(f"{name}: full read differs")
        if want.ndim >= 1 and want.shape[-1] > 10:  # a partial read (a byte range in a shard)
            sl = (*(slice(None),) * (want.ndim - 1), slice(want.shape[-1] // 3, want.shape[-1] - 2))
            if not np.array_equal(np.asarray(arr[sl]), want[sl]):
                problems.append(f"{name}: partial read differs")

    async def read_all() -> None:  # several arrays at once, as zarr-python 3 clients do
        group = await zarr.api.asynchronous.open_group(url, storage_options=options, mode="r",
                                                       zarr_format=zarr_format)

        async def one(name: str) -> None:
            got = await (await group.getitem(name)).getitem(...)
            if not np.array_equal(np.asarray(got), expected[name]):
                problems.append(f"{name}: concurrent read differs")

        await asyncio.gather(*(one(n) for n in expected))

    asyncio.run(read_all())
    return problems, f"zarr_format {root.metadata.zarr_format}"


def check_xarray(url: str, options: dict, expected: dict[str, np.ndarray]) -> tuple[list[str], str]:
    import xarray as xr

    problems: list[str] = []
    ds = xr.open_zarr(url, storage_options=options)
    for name in expected:
        if name not in ds.variables:
            problems.append(f"{name}: not a variable of the dataset ({sorted(ds.variables)})")
            continue
        if not np.array_equal(ds[name].values, expected[name]):
            problems.append(f"{name}: values differ")
    eeg = next((n for n in expected if ds[n].ndim == 2), None) if not problems else None
    if eeg is not None:  # a computed reduction, lazily through dask
        got = ds[eeg].mean(dim=ds[eeg].dims[-1]).values
        if not np.allclose(got, expected[eeg].mean(axis=-1), rtol=1e-5):
            problems.append(f"{eeg}: mean over {ds[eeg].dims[-1]} differs")
    return problems, f"xarray {xr.__version__}, {len(ds.variables)} variables"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("options")
    ap.add_argument("expected")
    ap.add_argument("--zarr-format", type=int, choices=(2, 3), default=None)
    ap.add_argument("--xarray", action="store_true")
    args = ap.parse_args(argv)
    if int(zarr.__version__.split(".")[0]) < 3:
        print(f"zarr-python {zarr.__version__} is not >= 3", file=sys.stderr)
        return 2
    with open(args.options) as f:
        options = json.load(f)
    npz = np.load(args.expected)
    expected = {name: npz[name] for name in npz.files if name != "__attrs__"}
    try:
        if args.xarray:
            problems, what = check_xarray(args.url, options, expected)
        else:
            problems, what = check_zarr(args.url, options, expected, args.zarr_format)
    except Exception as exc:  # noqa: BLE001 - any failure is a mismatch, reported in one line
        problems, what = [f"failed: {exc!r}"], ""
    if problems:
        print("MISMATCH", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
        return 1
    print(f"OK {len(expected)} arrays, zarr-python {zarr.__version__}, {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
