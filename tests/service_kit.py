"""Helpers for the service tests (tests/test_service_*.py): zipmount run the way systemd, fstab
and an operator run it — `zipmount mount --config FILE -f`, signals, sd_notify datagrams, the
background mode, mount(8) — against real S3 servers and real FUSE mounts.

Nothing is mocked: notifications arrive on a real AF_UNIX datagram socket, mounts are checked
in /proc/self/mountinfo, servers are real `moto_server` processes on 127.0.0.1. Every helper
that starts something stops it in a ``finally`` (unmount, then end the daemon).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from support.mount import (
    CmdResult,
    cleanup,
    fusermount_exe,
    is_mounted,
    run,
    wait_mounted,
)

VENV_BIN = Path(sys.executable).parent
ZIPMOUNT = VENV_BIN / "zipmount"
HELPER = VENV_BIN / "mount.fuse.zipmount"
REPO = Path(__file__).resolve().parent.parent


def require_fuse() -> None:
    """FAIL (never skip) when this machine cannot run FUSE mounts or zipmount is not installed."""
    if not os.path.exists("/dev/fuse"):
        pytest.fail("service tests need /dev/fuse (load the fuse module / run the container "
                    "with --device /dev/fuse)", pytrace=False)
    if fusermount_exe() is None:
        pytest.fail("service tests need fusermount or fusermount3 (apt-get install fuse3)",
                    pytrace=False)
    if not ZIPMOUNT.exists() or not HELPER.exists():
        pytest.fail(f"{ZIPMOUNT} / {HELPER} not found: pip install -e '.[test]' in this venv",
                    pytrace=False)


# --------------------------------------------------------------------------------------------
# storage endpoints and configs
# --------------------------------------------------------------------------------------------
@dataclass
class Endpoint:
    """How to reach one S3 server: what a config's `storage:` section and the env need."""

    url: str
    ca_bundle: Path
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def storage(self, timeout: float | None = None, env_file: Path | None = None) -> dict:
        out: dict = {"endpoint_url": self.url, "ca_bundle": str(self.ca_bundle),
                     "region": self.region}
        if timeout is not None:
            out["timeout"] = timeout
        if env_file is not None:
            out["env_file"] = str(env_file)
        return out

    def env_file(self, path: Path) -> Path:
        """A chmod-600 .env with the credentials (the way a service config gets them)."""
        path.write_text(f"STORAGE_ACCESS_KEY={self.access_key}\n"
                        f"STORAGE_SECRET_KEY={self.secret_key}\n")
        path.chmod(0o600)
        return path

    @classmethod
    def of(cls, server) -> Endpoint:  # a support.s3server.MotoS3Server
        return cls(url=server.endpoint_url, ca_bundle=Path(server.ca_bundle),
                   access_key=server.access_key, secret_key=server.secret_key,
                   region=server.region)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without inherited AWS/zipmount settings or a NOTIFY_SOCKET."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "ZIPMOUNT_", "STORAGE_"))
           and k not in ("ENDPOINT_FULL", "NOTIFY_SOCKET", "JOURNAL_STREAM")}
    nothing = "/nonexistent/zipmount-test-aws-file"
    env.update(AWS_CONFIG_FILE=nothing, AWS_SHARED_CREDENTIALS_FILE=nothing,
               AWS_EC2_METADATA_DISABLED="true", PYTHONUNBUFFERED="1",
               # background daemons without a log file log below it, not in /var/log
               XDG_STATE_HOME=os.path.join(tempfile.gettempdir(),
                                           f"zipmount-test-state-{os.getuid()}"))
    env.update(extra)
    return env


def write_config(path: Path, *, storage: dict, mounts: Sequence[tuple[str, Path]],
                 cache_dir: Path | None, level: str = "INFO", log_file: Path | None = None,
                 metrics: str | None = None, ttl: float | None = None) -> Path:
    doc: dict = {
        "storage": storage,
        "cache": {"dir": str(cache_dir)} if cache_dir else {"enabled": False},
        "logging": {"level": level, **({"file": str(log_file)} if log_file else {})},
        "mounts": [{"source": src, "mountpoint": str(mp)} for src, mp in mounts],
    }
    if ttl is not None:
        doc["cache"]["ttl"] = ttl
    if metrics:
        doc["metrics"] = {"listen": metrics}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------------------------
# sample archives (small, made here: the service tests need their own layout)
# --------------------------------------------------------------------------------------------
def make_archive(groups: dict[str, int], size: int = 300_000, seed: int = 5) -> tuple[bytes, dict]:
    """A ZIP_STORED archive with `group/fileN.bin` members of random bytes; returns
    (zip bytes, {member: content}). Members are written in the order of `groups`."""
    import random

    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for group, count in groups.items():
            for i in range(count):
                name = f"{group}/file{i}.bin"
                files[name] = rng.randbytes(size)
                zf.writestr(name, files[name])
    return buf.getvalue(), files


# --------------------------------------------------------------------------------------------
# reading through a mount without hanging the test
# --------------------------------------------------------------------------------------------
_READ_UNCACHED = r"""
import os, sys
path = sys.argv[1]
try:
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # drop the kernel's page cache
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            break
        chunks.append(b)
    os.close(fd)
except OSError as exc:
    sys.stderr.write(f"errno={exc.errno}\n")
    sys.exit(3)
sys.stdout.buffer.write(b"".join(chunks))
"""


def read_uncached(path: Path, timeout: float = 60) -> CmdResult:
    """Read PATH in a child process after dropping its pages from the kernel page cache, so the
    bytes come from the daemon. rc 3 and `errno=N` on stderr when a call failed."""
    return run([sys.executable, "-c", _READ_UNCACHED, str(path)], timeout=timeout)


def stats(mountpoint: Path) -> dict:
    r = run([ZIPMOUNT, "stats", "--json", mountpoint], timeout=30)
    assert r.rc == 0, r.describe()
    return json.loads(r.stdout)


def settled_stats(mountpoint: Path, quiet: float = 1.0, timeout: float = 20) -> dict:
    """Stats once background fetches (read-ahead, prefetch) have stopped: `requests` and
    `bytes_fetched` unchanged for QUIET seconds."""
    deadline = time.monotonic() + timeout
    last = stats(mountpoint)
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = stats(mountpoint)
        if (now["requests"], now["bytes_fetched"]) != (last["requests"], last["bytes_fetched"]):
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"the daemon kept fetching for {timeout}s: {last}")


def zipmount(*args: str | os.PathLike, env: dict | None = None, timeout: float = 90) -> CmdResult:
    return run([ZIPMOUNT, *args], env=env or clean_env(), timeout=timeout)


# --------------------------------------------------------------------------------------------
# sd_notify
# --------------------------------------------------------------------------------------------
@dataclass
class NotifyListener:
    """A real NOTIFY_SOCKET: an AF_UNIX datagram socket that records every message with the
    time it arrived, and runs `on_message(text)` for each (e.g. to check the mounts then)."""

    path: Path
    on_message: object = None
    messages: list[tuple[float, str]] = field(default_factory=list)
    checks: list[tuple[str, object]] = field(default_factory=list)
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def address(self) -> str:
        """The NOTIFY_SOCKET value: a path, or @NAME for an abstract socket (as systemd may)."""
        return str(self.path)

    def start(self) -> NotifyListener:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = str(self.path)
        self._sock.bind("\0" + name[1:] if name.startswith("@") else name)
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            text = data.decode()
            arrived = time.monotonic()
            if self.on_message is not None:  # before the message is visible to wait_for()
                self.checks.append((text, self.on_message(text)))
            self.messages.append((arrived, text))

    def wait_for(self, needle: str, timeout: float, daemon: Daemon | None = None) -> str:
        """The first message with the line NEEDLE; fails after TIMEOUT, or as soon as DAEMON
        has exited without sending it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, text in list(self.messages):
                if needle in text.split("\n"):
                    return text
            if daemon is not None and daemon.proc.poll() is not None:
                time.sleep(0.2)  # a datagram sent just before exiting
                if any(needle in t.split("\n") for t in self.texts()):
                    continue
                raise AssertionError(f"the daemon exited (rc={daemon.proc.returncode}) without "
                                     f"{needle!r}; got {self.texts()}\n--- stderr ---\n"
                                     f"{daemon.stderr()[-3000:]}")
            time.sleep(0.02)
        raise AssertionError(f"no {needle!r} on NOTIFY_SOCKET within {timeout}s; "
                             f"got {self.texts()}")

    def texts(self) -> list[str]:
        return [m for _, m in self.messages]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        if not str(self.path).startswith("@"):
            with contextlib.suppress(OSError):
                self.path.unlink()


@contextlib.contextmanager
def notify_socket(on_message=None, abstract: bool = False) -> Iterator[NotifyListener]:
    short = Path(tempfile.mkdtemp(prefix="zmn-", dir="/tmp"))  # sun_path is 108 bytes at most
    where = Path(f"@zipmount-test-{short.name}") if abstract else short / "notify"
    listener = NotifyListener(where, on_message).start()
    try:
        yield listener
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            short.rmdir()


# --------------------------------------------------------------------------------------------
# the daemon
# --------------------------------------------------------------------------------------------
@dataclass
class Daemon:
    proc: subprocess.Popen
    config: Path
    mountpoints: list[Path]
    stderr_path: Path

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon still running {timeout}s later\n--- stderr ---\n"
                                 f"{self.stderr()[-3000:]}") from None


@contextlib.contextmanager
def daemon(config: Path, mountpoints: Sequence[Path], *, env: dict | None = None,
           wait: bool = True, timeout: float = 45, args: Sequence[str] = ()) -> Iterator[Daemon]:
    """`zipmount mount --config CONFIG -f` as a child; yields once every mountpoint answers
    (unless not WAIT). Always unmounts and ends the daemon (and anything whose command line
    names CONFIG) afterwards; a leftover after a passing body fails the test."""
    logdir = Path(tempfile.mkdtemp(prefix="zm-daemon-"))
    stderr_path = logdir / "stderr.txt"
    with open(logdir / "stdout.txt", "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [str(ZIPMOUNT), "mount", "--config", str(config), "-f", *args],
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env or clean_env(),
            cwd=logdir, start_new_session=True,
        )
    handle = Daemon(proc, config, list(mountpoints), stderr_path)
    body_ok = False
    try:
        if wait:
            wait_mounted(handle.mountpoints, timeout=timeout, proc=proc, stderr=handle.stderr)
        yield handle
        body_ok = True
    finally:
        problems = cleanup(handle.mountpoints, [str(config)], [proc])
        if problems and body_ok:
            raise AssertionError("teardown left things behind: " + "; ".join(problems))


def assert_nothing_left(config: Path, mountpoints: Sequence[Path]) -> None:
    from support.mount import pids_with_marker

    mounted = [str(mp) for mp in mountpoints if is_mounted(mp)]
    assert not mounted, f"still mounted: {mounted}"
    pids = pids_with_marker(str(config))
    assert not pids, f"processes still running for {config}: {pids}"


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def fresh_dirs(base: Path, *names: str) -> list[Path]:
    out = []
    for name in names:
        p = base / name
        p.mkdir(parents=True, exist_ok=True)
        out.append(p)
    return out


SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
