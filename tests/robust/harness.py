"""One plain-HTTP S3 server, a fault proxy in front of it, and the zipmount CLI pointed at either;
plus probes of a running daemon (/proc) and file reads that cannot hang a test."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.mount import MountHandle, Zipmount

from .faultproxy import FaultProxy, fault_proxy
from .s3http import ACCESS_KEY, SECRET_KEY, HttpS3, moto_http_server

BUCKET = "robust"


@dataclass
class Stack:
    s3: HttpS3
    proxy: FaultProxy
    zm: Zipmount  # talks to the server through the proxy
    direct: Zipmount  # talks to the server directly
    workdir: Path

    def put(self, key: str, data: bytes) -> str:
        return self.s3.put(BUCKET, key, data)

    def delete(self, key: str) -> None:
        self.s3.delete(BUCKET, key)

    def mounted(self, key: str, *opts: str, proxied: bool = True, **kw: Any
                ) -> contextlib.AbstractContextManager[MountHandle]:
        """``zipmount mount s3://BUCKET/key MP -f OPTS`` (always unmounted afterwards)."""
        zm = self.zm if proxied else self.direct
        return zm.mounted(f"s3://{BUCKET}/{key}", *opts, **kw)


@contextlib.contextmanager
def stack(workdir: Path) -> Iterator[Stack]:
    with moto_http_server(workdir / "s3") as s3, fault_proxy(s3.port) as proxy:
        s3.create_bucket(BUCKET)

        def runner(endpoint: str, sub: str) -> Zipmount:
            return Zipmount(workdir=workdir / sub, endpoint_url=endpoint, ca_bundle=None,
                            access_key=ACCESS_KEY, secret_key=SECRET_KEY)

        yield Stack(s3, proxy, runner(proxy.url, "zm"), runner(s3.endpoint_url, "zmd"), workdir)


# -- reads that cannot hang the test ------------------------------------------------------------


@dataclass
class Outcome:
    value: Any = None
    error: int | None = None  # errno of an OSError
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def __repr__(self) -> str:
        what = (f"errno {errno.errorcode.get(self.error, self.error)}" if self.error is not None
                else f"{len(self.value)} bytes" if isinstance(self.value, bytes | list)
                else repr(self.value))
        return f"<{what} after {self.elapsed:.2f}s>"


def guarded(fn: Callable[[], Any], timeout: float) -> Outcome:
    """Run ``fn`` in a thread; fail the test if it does not return within ``timeout`` seconds.

    A FUSE call stuck in the kernel cannot be interrupted from Python; the thread is left behind
    (daemon) and ends when the test's teardown unmounts.
    """
    out = Outcome()
    done = threading.Event()

    def body() -> None:
        t0 = time.monotonic()
        try:
            out.value = fn()
        except OSError as exc:
            out.error = exc.errno
        finally:
            out.elapsed = time.monotonic() - t0
            done.set()

    t0 = time.monotonic()
    threading.Thread(target=body, daemon=True, name="guarded-io").start()
    if not done.wait(timeout):
        raise AssertionError(f"file system call still blocked after {time.monotonic() - t0:.1f}s "
                             "(a hang, not a timeout)")
    return out


def read_file(path: Path | str, offset: int = 0, size: int = -1) -> bytes:
    with open(path, "rb", buffering=0) as f:
        if offset:
            f.seek(offset)
        return f.read() if size < 0 else f.read(size)


def pread_aligned(fd: int, offset: int, size: int) -> bytes:
    """pread of an O_DIRECT ``fd`` through a page-aligned buffer (fewer bytes at its end)."""
    import mmap

    buf = mmap.mmap(-1, max(4096, (size + 4095) // 4096 * 4096))
    try:
        n = os.preadv(fd, [buf], offset)
        return bytes(buf[:min(n, size)])
    finally:
        buf.close()


def read_direct(path: Path | str, offset: int, size: int) -> bytes:
    """pread with O_DIRECT: straight to the daemon, bypassing the kernel page cache."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        return pread_aligned(fd, offset, size)
    finally:
        os.close(fd)


# -- the daemon's resources ------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def rss_bytes(pid: int) -> int:
    return int(proc_status(pid)["VmRSS"].split()[0]) * 1024


def peak_rss_bytes(pid: int) -> int:
    return int(proc_status(pid)["VmHWM"].split()[0]) * 1024


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM to the current RSS (proc(5): clear_refs value 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def threads(pid: int) -> int:
    return int(proc_status(pid)["Threads"])


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def dir_usage(root: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of every file under ``root``."""
    apparent = allocated = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(os.path.join(dirpath, name))
                apparent += st.st_size
                allocated += st.st_blocks * 512
    return apparent, allocated


def cache_usage_between_writes(root: Path) -> int:
    """The bytes under the cache dir ``root``'s ``files`` while no process may reserve (the
    ledger's lock held, as every writer takes it): a walk that only evictions may race, which
    only lower the total."""
    import fcntl

    fd = os.open(root / "ledger", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return dir_usage(root / "files")[0]
    finally:
        os.close(fd)


def wait_for(cond: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()
