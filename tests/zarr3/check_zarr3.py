"""Read a zarr group from a directory with zarr-python 3 and compare it with expected data.

Runs in the second venv (.venv-zarr3, zarr>=3); the pytest side only launches it.

    python check_zarr3.py GROUP_DIR EXPECTED.npz [--zarr-format 2|3]

EXPECTED.npz maps array paths (relative to the group) to arrays; the optional key
`__attrs__` holds a JSON object {node path: attributes}. Exits 0 and prints "OK ..." when every
array, partial read and attribute matches; otherwise prints the mismatches and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import numpy as np
import zarr
from zarr.storage import LocalStore


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("group_dir")
    ap.add_argument("expected")
    ap.add_argument("--zarr-format", type=int, choices=(2, 3), default=None)
    args = ap.parse_args(argv)

    major = int(zarr.__version__.split(".")[0])
    if major < 3:
        print(f"zarr-python {zarr.__version__} is not >= 3", file=sys.stderr)
        return 2

    expected = np.load(args.expected)
    attrs_expected = json.loads(str(expected["__attrs__"])) if "__attrs__" in expected else {}
    store = LocalStore(args.group_dir, read_only=True)
    root = zarr.open_group(store=store, mode="r", zarr_format=args.zarr_format)
    problems: list[str] = []

    if args.zarr_format is not None and root.metadata.zarr_format != args.zarr_format:
        problems.append(f"group is zarr_format {root.metadata.zarr_format}")

    n_checked = 0
    for name in expected.files:
        if name == "__attrs__":
            continue
        want = expected[name]
        try:
            arr = root[name]
        except Exception as exc:  # noqa: BLE001 - report every problem, then fail
            problems.append(f"{name}: cannot open: {exc!r}")
            continue
        if tuple(arr.shape) != want.shape or arr.dtype != want.dtype:
            problems.append(f"{name}: shape/dtype {arr.shape}/{arr.dtype} != "
                            f"{want.shape}/{want.dtype}")
            continue
        got = arr[...]
        if not np.array_equal(np.asarray(got), want):
            problems.append(f"{name}: full read differs")
        # partial reads (for sharded arrays these are byte ranges inside one shard file)
        if want.ndim == 2 and want.shape[0] > 2 and want.shape[1] > 10:
            sl = (slice(1, want.shape[0] - 1), slice(3, want.shape[1] // 2 + 7))
            if not np.array_equal(np.asarray(arr[sl]), want[sl]):
                problems.append(f"{name}: partial read {sl} differs")
        elif want.ndim == 1 and want.shape[0] > 10:
            sl = slice(want.shape[0] // 3, want.shape[0] - 2)
            if not np.array_equal(np.asarray(arr[sl]), want[sl]):
                problems.append(f"{name}: partial read {sl} differs")
        n_checked += 1

    for node, want_attrs in attrs_expected.items():
        try:
            node_obj = root if node == "" else root[node]
            got_attrs = dict(node_obj.attrs)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"attrs of {node!r}: cannot open: {exc!r}")
            continue
        if got_attrs != want_attrs:
            problems.append(f"attrs of {node!r}: {got_attrs} != {want_attrs}")

    # Member listing (a directory listing on the mount when there is no consolidated metadata).
    try:
        members = {k for k, _ in root.members(max_depth=None)}
        missing = {k for k in expected.files if k != "__attrs__"} - members
        if missing:
            problems.append(f"group.members() misses {sorted(missing)[:5]}")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"group.members() failed: {exc!r}")

    # Concurrent reads, the way zarr-python 3 hits a filesystem (several files open at once).
    async def read_all() -> None:
        agroup = await zarr.api.asynchronous.open_group(
            store=store, mode="r", zarr_format=args.zarr_format
        )

        async def one(name: str) -> None:
            a = await agroup.getitem(name)
            got = await a.getitem(...)
            if not np.array_equal(np.asarray(got), expected[name]):
                problems.append(f"{name}: concurrent read differs")

        await asyncio.gather(*(one(n) for n in expected.files if n != "__attrs__"))

    try:
        asyncio.run(read_all())
    except Exception as exc:  # noqa: BLE001
        problems.append(f"concurrent reads failed: {exc!r}")

    if problems:
        print("MISMATCH", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
        return 1
    print(f"OK {n_checked} arrays, {len(attrs_expected)} attribute sets, "
          f"zarr-python {zarr.__version__}, zarr_format {root.metadata.zarr_format}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
