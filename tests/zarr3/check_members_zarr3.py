"""List every member of a zarr group read through the ``zipmount`` fsspec protocol (zarr-python 3).

Runs in the second venv (.venv-zarr3); the pytest side launches it and compares the lists with
the archive's own contents.

    python check_members_zarr3.py URL OPTIONS.json

URL is a chained URL (``zipmount::s3://bucket/key.rkns``); OPTIONS.json holds the
``storage_options`` ({"s3": {...}, "zipmount": {...}}). Prints one JSON object: for each way of
opening the group (``from_url``: ``FsspecStore.from_url`` then ``zarr.open_group(store)``;
``open_group``: ``zarr.open_group(URL, storage_options=...)``) the sorted paths of
``group.members(max_depth=None)``, each followed by ``/`` for a group.
"""

from __future__ import annotations

import json
import sys

import zarr
from zarr.storage import FsspecStore


def members(group: zarr.Group) -> list[str]:
    return sorted(name + ("/" if isinstance(node, zarr.Group) else "")
                  for name, node in group.members(max_depth=None))


def main(argv: list[str]) -> int:
    url, options_file = argv
    with open(options_file) as f:
        options = json.load(f)
    store = FsspecStore.from_url(url, storage_options=options, read_only=True)
    out = {"from_url": members(zarr.open_group(store, mode="r")),
           "open_group": members(zarr.open_group(url, storage_options=options, mode="r"))}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
