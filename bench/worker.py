"""A contender that runs in another Python environment (zarr-python 3), driven by the runner.

    <venv>/bin/python -m bench.worker KIND '<json options>'

KIND is one of:

* ``zarr3-zipstore``: zarr-python 3 ``ZipStore`` over an s3fs file (``s3.open(key, "rb")``);
* ``virtualizarr``: VirtualiZarr's ``ZippedZarrParser`` over an obstore ``S3Store`` (a
  ``ManifestStore``: the archive's index parsed into byte-range references at open);
* ``zarr3-local``: zarr-python 3 ``LocalStore`` on a directory (a zipmount mount).

After its imports it prints ``READY {versions}``; then it reads one JSON command per line on
stdin (``{"op": "open"}``, ``{"op": "windows", "windows": [...], "length": n}``, ``channel``,
``tiny``, ``whole``, ``close``) and answers each with one JSON line: ``time_s`` (the step
alone, without the pipe), ``digest`` of what it read (``bench.workload.digest``) or ``error``.
Libraries' own output goes to stderr, so stdout carries only these lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback

from bench.workload import digest, run_op


def _versions(mods: list[str]) -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for m in mods:
        try:
            out[m] = md.version(m)
        except md.PackageNotFoundError:
            out[m] = None
    return out


class Opener:
    def __init__(self, kind: str, opts: dict):
        self.kind = kind
        self.opts = opts
        self.closers: list = []
        import zarr  # noqa: F401 - imported before READY, as a long-lived process has it

        if kind == "zarr3-zipstore":
            import s3fs

            # botocore's models loaded once, as in a long-lived user process
            self._s3().info(opts["key"])
            self.mods = ["zarr", "s3fs", "fsspec", "numcodecs"]
            del s3fs
        elif kind == "virtualizarr":
            import obstore  # noqa: F401
            import virtualizarr  # noqa: F401

            self.mods = ["zarr", "virtualizarr", "obstore", "numcodecs"]
        elif kind == "zarr3-local":
            self.mods = ["zarr", "numcodecs"]
        else:
            raise SystemExit(f"unknown kind {kind}")

    def _s3(self):
        import s3fs

        return s3fs.S3FileSystem(anon=True, endpoint_url=self.opts["endpoint"],
                                 skip_instance_cache=True, use_listings_cache=False)

    def open(self, path: str | None = None):
        import zarr

        if self.kind == "zarr3-zipstore":
            from zarr.storage import ZipStore

            f = self._s3().open(self.opts["key"], "rb")
            store = ZipStore(f, mode="r")
            self.closers += [store.close, f.close]
            return zarr.open_group(store, mode="r")
        if self.kind == "virtualizarr":
            from obspec_utils.registry import ObjectStoreRegistry
            from obstore.store import S3Store
            from virtualizarr.parsers import ZippedZarrParser

            bucket, _, key = self.opts["key"].partition("/")
            store = S3Store(bucket, endpoint=self.opts["endpoint"], skip_signature=True,
                            region="us-east-1", client_options={"allow_http": True})
            registry = ObjectStoreRegistry({f"s3://{bucket}": store})
            manifest = ZippedZarrParser()(f"s3://{bucket}/{key}", registry)
            return zarr.open_group(manifest, mode="r")
        return zarr.open_group(zarr.storage.LocalStore(path, read_only=True), mode="r")

    def close(self) -> None:
        for c in self.closers:
            with contextlib.suppress(Exception):  # closing what may already be closed
                c()
        self.closers.clear()


def main() -> None:
    kind, opts = sys.argv[1], json.loads(sys.argv[2])
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever a library prints goes to stderr
    opener = Opener(kind, opts)
    out.write("READY " + json.dumps(_versions(opener.mods)) + "\n")
    group = None
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "exit":
            break
        t0 = time.perf_counter()
        try:
            if op == "open":
                group = opener.open(cmd.get("path"))
                ans = {"time_s": time.perf_counter() - t0}
            elif op == "close":
                opener.close()
                group = None
                ans = {"time_s": time.perf_counter() - t0}
            else:
                value = run_op(group, op, **cmd)
                ans = {"time_s": time.perf_counter() - t0, "digest": digest(value)}
        except Exception as e:  # noqa: BLE001 - reported to the runner, which goes on
            traceback.print_exc(limit=5)
            ans = {"time_s": time.perf_counter() - t0, "error": f"{type(e).__name__}: {e}"[:300]}
        out.write(json.dumps(ans) + "\n")


if __name__ == "__main__":
    main()
