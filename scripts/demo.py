"""``make demo``: an embedded S3 server (moto, HTTPS with a private CA) holding sample archives,
mounted with zipmount; prints the tree, reads arrays through zarr on the mount, shows the numbers,
then unmounts, stops the server, removes its temporary folder and says what to try next."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.archives import generic_archive, rkns_v2_archive, zarr_v3_archive  # noqa: E402
from tests.support.s3server import moto_s3_server  # noqa: E402

ZIPMOUNT = str(Path(sys.executable).with_name("zipmount"))


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show_tree(root: Path, max_depth: int = 4, per_dir: int = 3) -> None:
    """The tree under ``root``, every level down to ``max_depth``: every entry of the top level,
    ``per_dir`` entries of a directory below (then how many more)."""

    def walk(path: Path, depth: int) -> None:
        entries = sorted(path.iterdir(), key=lambda p: (not p.is_dir(), p.name))
        shown = entries if depth == 0 else entries[:per_dir]
        for entry in shown:
            indent = "  " * (depth + 1)
            if entry.is_dir() and depth + 1 < max_depth:
                print(f"  {indent}{entry.name}/")
                walk(entry, depth + 1)
            elif entry.is_dir():
                count = len(os.listdir(entry))
                print(f"  {indent}{entry.name}/  ({count} entr{'y' if count == 1 else 'ies'})")
            else:
                print(f"  {indent}{entry.name}  ({entry.stat().st_size:,} bytes)")
        if len(entries) > len(shown):
            print(f"  {'  ' * (depth + 1)}... {len(entries) - len(shown)} more")

    print(f"  {root}/")
    walk(root, 0)


WHAT_NEXT = """\
  Mount your own bucket (credentials: AWS_* variables, --profile, or --env-file with
  STORAGE_ACCESS_KEY / STORAGE_SECRET_KEY / ENDPOINT_FULL):
    .venv/bin/zipmount mount s3://BUCKET/PREFIX/ /mnt/data --endpoint-url https://HOST:PORT
    .venv/bin/zipmount ls s3://BUCKET/PREFIX/           # list without mounting
    .venv/bin/zipmount stats /mnt/data; .venv/bin/zipmount logs /mnt/data
    .venv/bin/zipmount umount /mnt/data
  Or in process, without FUSE (fsspec):
    zarr.open_group(fsspec.get_mapper("zipmount::s3://BUCKET/KEY.rkns", s3={...}), mode="r")
  All options: .venv/bin/zipmount mount --help; README.md for the rest."""


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="zipmount-demo-"))
    mountpoint = work / "mnt"
    mountpoint.mkdir()
    with moto_s3_server(work / "s3") as s3:
        step(f"embedded S3 server at {s3.endpoint_url} (TLS, private CA {s3.ca_bundle.name})")
        s3.create_bucket("lab")
        night1 = rkns_v2_archive(seed=1, n_channels=8, n_samples=200_000)
        uploads = {
            "recordings/night1.rkns": night1.data,
            "recordings/cohort-b/night2.rkns": rkns_v2_archive(seed=2).data,
            "recordings/v3/group.zip": zarr_v3_archive().data,
            "recordings/docs.zip": generic_archive().data,
            "recordings/README.txt": b"not an archive: a plain file in the mount\n",
        }
        for key, data in uploads.items():
            s3.put_bytes("lab", key, data)
            print(f"  s3://lab/{key}  {len(data):>10,} bytes")

        env = {**os.environ, "AWS_ACCESS_KEY_ID": s3.access_key,
               "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        mount_cmd = [ZIPMOUNT, "mount", "s3://lab/recordings/", str(mountpoint),
                     "--endpoint-url", s3.endpoint_url, "--ca-bundle", str(s3.ca_bundle),
                     "--cache-dir", str(work / "cache"), "--log-file", str(work / "zipmount.log")]
        step("zipmount mount s3://lab/recordings/ " + str(mountpoint))
        t0 = time.monotonic()
        out = subprocess.run(mount_cmd, env=env, check=True, capture_output=True, text=True)
        print(f"  mounted in {time.monotonic() - t0:.2f} s (background daemon)")
        print("\n".join(f"  {line}" for line in out.stdout.splitlines()))
        try:
            step("the tree (archives appear as directories, their members inside; README.txt, "
                 "not an archive, as a plain file)")
            show_tree(mountpoint)

            step("zarr-python 2 DirectoryStore on the mount")
            path = mountpoint / "night1.rkns"
            group = zarr.open_group(zarr.DirectoryStore(str(path)), mode="r")
            eeg = group["signals/eeg/data"]
            t0 = time.monotonic()
            data = eeg[:]
            secs = time.monotonic() - t0
            expected = night1.arrays["signals/eeg/data"]
            print(f"  signals/eeg/data: shape {eeg.shape}, dtype {eeg.dtype}, chunks {eeg.chunks}")
            print(f"  read {data.nbytes / 2**20:.1f} MiB in {secs:.2f} s; "
                  f"equal to the source: {np.array_equal(data, expected)}")
            print("  channel RMS: " + " ".join(f"{v:.2f}" for v in np.sqrt((data**2).mean(axis=1))))
            t0 = time.monotonic()
            eeg[:]
            print(f"  again (warm): {time.monotonic() - t0:.3f} s")

            step("zipmount stats")
            stats = json.loads(subprocess.run([ZIPMOUNT, "stats", str(mountpoint), "--json"],
                                              capture_output=True, text=True, check=True).stdout)
            for key in ("requests", "bytes_fetched", "memory_hits", "disk_hits", "reads",
                        "bytes_read", "open_archives", "read_latency_ms"):
                print(f"  {key:<16} {stats[key]}")
            ok = np.array_equal(data, expected)
        finally:
            step("zipmount umount")
            subprocess.run([ZIPMOUNT, "umount", str(mountpoint)], check=False)
            print(f"  mounted now: {os.path.ismount(mountpoint)}")
    if os.path.ismount(mountpoint):
        print(f"\n  {work} is kept: {mountpoint} is still mounted")
    else:
        shutil.rmtree(work)
        print(f"\n  server stopped; removed the demo's temporary folder {work}")
    if not ok:
        step("MISMATCH: the bytes read through the mount differ from the source")
        return 1
    step("what next")
    print(WHAT_NEXT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
