"""Daemon layer: build the layers for a config, mount, report readiness, serve, unmount.

Every mount of one config runs in one process (one FUSE session thread each) and shares one block
cache. Background mode never forks a process that has threads (fsspec/s3fs run an event-loop
thread): the CLI starts a fresh child process and waits on a pipe until the child reports that
every mount answers, or why it could not.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config import Config, MountConfig, human_size
from .engine import Engine
from .errors import SourceError, UsageError, ZipmountError
from .kernel_readahead import set_read_ahead
from .source import Source
from .tree import Tree

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 20.0


def stderr_is_the_journal() -> bool:
    """True if stderr is systemd's journal stream (JOURNAL_STREAM names its device:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return bool(stream) and stream == f"{st.st_dev}:{st.st_ino}"


def notify(message: str) -> None:
    """sd_notify(3): send ``message`` to systemd if we run under ``Type=notify``."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd: %s", exc)


def mount_state(mountpoint: str) -> str:
    """'mounted', 'stale' (a dead FUSE mount), or 'free'."""
    try:
        os.stat(mountpoint)
        if not os.path.ismount(mountpoint):
            return "free"
        # The kernel answers stat() of a dead FUSE mount from its attribute cache until the
        # attr timeout ends; statfs() always goes to the daemon, so it tells a dead one.
        os.statvfs(mountpoint)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO):
            return "stale"
        return "free"
    return "mounted"


def unmount(mountpoint: str, lazy: bool = False) -> bool:
    """Unmount a FUSE mount (also a stale one); True once nothing is mounted there."""
    flags = "-uz" if lazy else "-u"
    for cmd in (["fusermount3", flags, mountpoint], ["fusermount", flags, mountpoint],
                ["umount", *(["-l"] if lazy else []), mountpoint]):
        try:
            subprocess.run(cmd, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if mount_state(mountpoint) == "free":
            return True
    return mount_state(mountpoint) == "free"


def check_mountpoint(mountpoint: str) -> None:
    """Raise a one-line error unless ``mountpoint`` is an empty-enough directory we can mount on.

    A stale mount left by a killed daemon is cleaned first.
    """
    state = mount_state(mountpoint)
    if state == "stale":
        log.warning("cleaning a stale mount at %s (left by a killed daemon)", mountpoint)
        unmount(mountpoint, lazy=True)
        state = mount_state(mountpoint)
    if state == "mounted":
        raise ZipmountError(f"mountpoint {mountpoint} is busy: something is already mounted there")
    if not os.path.lexists(mountpoint):
        raise UsageError(f"mountpoint {mountpoint} does not exist (mkdir -p it first)")
    if not os.path.isdir(mountpoint):
        raise UsageError(f"mountpoint {mountpoint} is not a directory")


@dataclass
class MountedTree:
    config: MountConfig
    tree: Tree
    thread: threading.Thread | None = None
    error: BaseException | None = None


class Daemon:
    """One process serving every mount of a config over one shared cache."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.engine = Engine(config.storage, config.cache)
        self.stats = self.engine.stats
        self.trees: list[MountedTree] = []
        self._stop = threading.Event()
        self.stats.providers.append(self._describe)

    def _describe(self) -> dict[str, object]:
        """What ``zipmount stats``, ``logs`` and ``umount`` read about this daemon."""
        return {"mounts": len(self.trees),
                "mountpoints": [t.config.mountpoint for t in self.trees],
                "log": self.config.log_file or ("journal" if stderr_is_the_journal() else "stderr"),
                "offline": self.config.offline}

    # -- life cycle -----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Connect every source and check every mountpoint; nothing is mounted yet."""
        for mount in self.config.mounts:
            check_mountpoint(mount.mountpoint)
            source, path = self.engine.source(mount.source)
            if self.config.offline:
                log.warning("--offline: serving %s from the cache without checking %s first",
                            mount.source, source.options.endpoint_url or source.location)
            else:
                check_live(source, path)
            tree = self.engine.tree_for(source, path, suffixes=mount.suffixes, root=mount.root,
                                         archives_only=mount.archives_only)
            self.trees.append(MountedTree(mount, tree))

    def mount_all(self) -> None:
        """Start one FUSE session per tree and wait until each answers."""
        from .fuse import session  # noqa: F401 - here, so a missing libfuse 3 is a one-line error
        for tree in self.trees:
            thread = threading.Thread(target=self._serve, args=(tree,), daemon=True,
                                      name=f"fuse {tree.config.mountpoint}")
            tree.thread = thread
            thread.start()
        deadline = time.monotonic() + MOUNT_TIMEOUT
        for tree in self.trees:
            while not _answers(tree.config.mountpoint):
                if tree.error is not None or tree.thread is None or not tree.thread.is_alive():
                    raise ZipmountError(f"mounting {tree.config.mountpoint} failed: "
                                        f"{tree.error or 'FUSE exited (see the log)'}")
                if time.monotonic() > deadline:
                    raise ZipmountError(f"mounting {tree.config.mountpoint} timed out")
                time.sleep(0.02)
            log.info("mounted %s on %s", tree.config.source, tree.config.mountpoint)
            window = set_read_ahead(tree.config.mountpoint, tree.config.read_ahead)
            log.info("kernel read-ahead for %s: %s", tree.config.mountpoint,
                     "unknown" if window is None else f"{window // 1024} KiB")

    def _serve(self, tree: MountedTree) -> None:
        from .fuse.operations import ZipOperations
        from .fuse.session import serve

        opts = tree.config.options
        ops = ZipOperations(tree.tree, self.stats, uid=opts.uid, gid=opts.gid,
                            umask=opts.umask, ttl=self.config.cache.ttl)
        try:
            serve(ops, tree.config.mountpoint, fsname=_fsname(tree.config.source),
                  allow_other=opts.allow_other)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            tree.error = exc
            log.error("FUSE session for %s ended: %s", tree.config.mountpoint, exc)
        finally:
            if not any(t.thread and t.thread.is_alive() and t is not tree for t in self.trees):
                self._stop.set()  # the last mount is gone (e.g. `zipmount umount`): exit now

    def run(self, on_ready: Callable[[], None]) -> int:
        """Serve until SIGTERM/SIGINT/SIGHUP or until every mount is unmounted; return 0."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: self._stop.set())
        try:
            self.prepare()
            if self.config.metrics_listen:
                from .metrics import serve_metrics

                try:
                    serve_metrics(self.config.metrics_listen, self.stats)
                except OSError as exc:
                    raise ZipmountError(f"metrics endpoint {self.config.metrics_listen}: "
                                        f"{exc.strerror}") from None
            self.mount_all()
        except BaseException:
            self.shutdown()
            raise
        c = self.config.cache
        log.info("cache: %s in memory, %s", human_size(c.memory),
                 f"{human_size(c.size)} on disk in {c.dir}" if c.dir else "no disk cache")
        on_ready()
        notify(f"READY=1\nSTATUS={self.status()}")
        while not self._stop.wait(5):
            notify(f"STATUS={self.status()}")
        notify("STOPPING=1")
        self.shutdown()
        return 0

    def status(self) -> str:
        g = self.engine.gauges()
        return (f"{len(self.trees)} mount(s), {g['open_archives']} archive(s) open, cache "
                f"{g['memory_cache_bytes'] / 2**20:.0f} MiB memory, "
                f"{g['disk_cache_bytes'] / 2**20:.0f} MiB disk")

    def shutdown(self) -> None:
        for tree in self.trees:
            if tree.thread is not None and mount_state(tree.config.mountpoint) != "free":
                if not unmount(tree.config.mountpoint):
                    log.warning("%s is busy; detaching it lazily", tree.config.mountpoint)
                    unmount(tree.config.mountpoint, lazy=True)
                log.info("unmounted %s", tree.config.mountpoint)
        for tree in self.trees:
            if tree.thread is not None:
                tree.thread.join(timeout=10)
        self.engine.close()


def check_live(source: Source, path: str) -> None:
    """Ask the endpoint for ``path`` now (credentials, TLS, the object or prefix), even when the
    cache could serve it without a request: a broken mount fails here, not at the first read."""
    try:
        source.stat(path)
    except SourceError as exc:
        endpoint = source.options.endpoint_url or ""
        text = str(exc)
        if text.startswith("TLS error") and endpoint.startswith("https://") and \
                _speaks_plain_http(endpoint):
            raise SourceError(f"{endpoint} answers plain HTTP, not TLS: use --endpoint-url "
                              f"http://{endpoint[len('https://'):]}") from None
        if text.startswith(("cannot reach", "timed out")):
            raise SourceError(f"{text}; to serve what the cache holds, mount with "
                              "--offline") from None
        raise


def _speaks_plain_http(endpoint: str) -> bool:
    """True if ``endpoint`` (an https:// URL) answers an HTTP request without TLS."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 443, timeout=3)
    try:
        conn.request("HEAD", "/")
        return conn.getresponse().status > 0
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _answers(mountpoint: str) -> bool:
    if not os.path.ismount(mountpoint):
        return False
    try:
        os.stat(mountpoint)
        return True
    except OSError:
        return False


def _fsname(source: str) -> str:
    return "zipmount:" + source.replace(",", "_").replace(" ", "_")


# Below a decoded cell (512 KiB) and a response piece: cells churning through the memory tier
# from the heap left it fragmented, ~60 MiB above the cap (docs/BENCHMARKS.md, as below).
MMAP_THRESHOLD = 256 * 1024


def _return_big_buffers_to_the_os() -> None:
    """Pin glibc's mmap threshold at MMAP_THRESHOLD and the trim threshold at 8 MiB; use two
    arenas.

    glibc raises the mmap threshold (up to 32 MiB) each time a big buffer is freed, after which
    multi-MiB response buffers come from the heap and the heap keeps the pages: a long stream
    then holds far more than the memory cap. Pinning it also pins the trim threshold at its
    128 KiB default, so every freed socket buffer or joined block at the top of the heap would
    go back to the OS and be faulted in again; 8 MiB keeps most of them. The measurements:
    docs/BENCHMARKS.md, "Measurements behind choices in the code".
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 8 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX: per-thread arenas each keep their freed pages


def run_foreground(config: Config, ready_fd: int | None = None) -> int:
    """Serve ``config`` in this process. With ``ready_fd``, report readiness on that pipe."""
    _return_big_buffers_to_the_os()

    def report(message: str) -> None:
        if ready_fd is not None:
            try:
                os.write(ready_fd, message.encode() + b"\n")
                os.close(ready_fd)
            except OSError:
                pass

    daemon = Daemon(config)
    try:
        return daemon.run(on_ready=lambda: report("ready"))
    except ZipmountError as exc:
        report(f"error: {exc}")
        raise


@dataclass
class Started:
    """A background daemon that answers: its pid and where it logs."""

    pid: int
    log: str


def run_background(argv: list[str], config: Config) -> Started:
    """Start ``zipmount <argv> --foreground`` detached; return once it answers, or raise why not.

    Without a log file the daemon logs to the journal under systemd, else to
    :func:`~zipmount.config.default_log_file` of its first mountpoint.
    """
    import sys

    from .config import default_log_file

    log_file = config.log_file
    if not log_file and not stderr_is_the_journal():
        log_file = default_log_file(config.mounts[0].mountpoint)
        argv = [*argv, "--log-file", log_file]
    if log_file:
        try:
            os.makedirs(os.path.dirname(log_file), exist_ok=True)
            out = open(log_file, "ab")  # noqa: SIM115 - the child's stdout/stderr
        except OSError as exc:
            raise UsageError(f"cannot write the log file {log_file}: {exc.strerror}") from None
    read_fd, write_fd = os.pipe()
    with contextlib.ExitStack() as stack:
        if log_file:
            stack.enter_context(out)
        child = subprocess.Popen(
            [sys.executable, "-m", "zipmount", *argv, "--foreground", "--ready-fd", str(write_fd)],
            pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
            stdout=out if log_file else subprocess.DEVNULL,
            stderr=out if log_file else None,  # None: the journal stream systemd gave us
            start_new_session=True,
        )
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        message = pipe.readline().strip()
    if message == "ready":
        return Started(child.pid, log_file or "the journal")
    child.wait(timeout=60)
    if message.startswith("error: "):
        raise ZipmountError(message[len("error: "):])
    raise ZipmountError(f"the daemon exited with status {child.returncode} before mounting"
                        + (f" (see {log_file})" if log_file else ""))
