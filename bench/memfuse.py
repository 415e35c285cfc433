"""The FUSE floor: a minimal read-only in-memory file system with zipmount's binding (mfusepy).

    python -m bench.memfuse MOUNTPOINT --tree DIR[=NAME] ... --zip-member ZIP:MEMBER[=NAME] ...

Every file of each ``--tree`` (e.g. the extracted ``eeg.zarr``) and each stored member of a zip is
loaded into memory first; the mount then answers lookups, listings and reads from dicts, with
the same kernel-cache settings a read-only mount may use (entry/attr/negative timeouts,
``keep_cache`` on open). What it costs is what Python + libfuse cost per call and per byte, the
floor for zipmount's FUSE front-end. Runs in the foreground until unmounted.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import time
import zipfile

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # the library zipmount uses, not libfuse 2
import mfusepy as fuse  # noqa: E402


class MemoryFS(fuse.Operations):
    """Files and directories held in dicts; everything read-only."""

    use_ns = True

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.dirs: dict[str, list[str]] = {"/": []}
        for path in sorted(files):
            parts = path.strip("/").split("/")
            for i in range(len(parts)):
                parent = "/" + "/".join(parts[:i])
                child = "/" + "/".join(parts[:i + 1])
                kids = self.dirs.setdefault(parent.rstrip("/") or "/", [])
                if parts[i] not in kids:
                    kids.append(parts[i])
                if i < len(parts) - 1:
                    self.dirs.setdefault(child, [])
        self.now = int(time.time() * 1e9)

    def getattr(self, path: str, fh=None) -> dict:
        if path in self.dirs:
            return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, "st_size": 0,
                    "st_mtime": self.now, "st_ctime": self.now, "st_atime": self.now}
        data = self.files.get(path)
        if data is None:
            raise fuse.FuseOSError(errno.ENOENT)
        return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": len(data),
                "st_mtime": self.now, "st_ctime": self.now, "st_atime": self.now}

    def readdir(self, path: str, fh) -> list[str]:
        return [".", "..", *self.dirs.get(path, [])]

    def open(self, path: str, fi) -> int:
        if path not in self.files:
            raise fuse.FuseOSError(errno.ENOENT)
        if fi.flags & (os.O_WRONLY | os.O_RDWR):
            raise fuse.FuseOSError(errno.EROFS)
        fi.keep_cache = 1  # the bytes never change: keep the page cache across opens
        return 0

    def read(self, path: str, size: int, offset: int, fi) -> bytes:
        return self.files[path][offset:offset + size]


def load(trees: list[str], members: list[str]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for spec in trees:
        src, _, name = spec.partition("=")
        name = name or os.path.basename(src.rstrip("/"))
        for dirpath, _dirs, fnames in os.walk(src):
            for fn in fnames:
                full = os.path.join(dirpath, fn)
                rel = os.path.relpath(full, src)
                with open(full, "rb") as f:
                    files[f"/{name}/{rel}"] = f.read()
    for spec in members:
        zpath, _, rest = spec.partition(":")
        member, _, name = rest.partition("=")
        with zipfile.ZipFile(zpath) as zf:
            files["/" + (name or member).lstrip("/")] = zf.read(member)
    return files


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.memfuse", description=__doc__.splitlines()[0])
    ap.add_argument("mountpoint")
    ap.add_argument("--tree", action="append", default=[], help="DIR[=NAME]: a tree to serve")
    ap.add_argument("--zip-member", action="append", default=[], help="ZIP:MEMBER[=NAME]")
    ap.add_argument("--ttl", type=float, default=60.0)
    a = ap.parse_args(argv)
    files = load(a.tree, a.zip_member)
    fuse.FUSE(MemoryFS(files), a.mountpoint, foreground=True, ro=True, raw_fi=True,
              fsname="memfuse", entry_timeout=a.ttl, attr_timeout=a.ttl, negative_timeout=a.ttl)


if __name__ == "__main__":
    main()
