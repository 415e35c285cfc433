"""Child processes of a benchmark run: nginx, the delay proxy, FUSE mounts.

Everything started here is registered in a :class:`Reaper`, which stops it on
exit (normal, error, Ctrl-C, SIGTERM): FUSE mounts are unmounted first, then the
processes are terminated by pid in reverse start order. The pids and mountpoints
are also written to a state file, so a run that was SIGKILLed is cleaned up by
the next one (only pids whose command line still matches what we started).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def mounted(path: str | os.PathLike) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 1 and parts[1].replace("\\040", " ") == target:
                return True
    return False


def unmount(path: str | os.PathLike, lazy_fallback: bool = True) -> bool:
    """Unmount a FUSE mount; returns True if it is no longer mounted."""
    if not mounted(path):
        return True
    for args in (["fusermount", "-u"], ["umount"], ["fusermount", "-u", "-z"]):
        if args[-1] == "-z" and not lazy_fallback:
            break
        subprocess.run([*args, str(path)], capture_output=True)
        for _ in range(50):
            if not mounted(path):
                return True
            time.sleep(0.02)
    return not mounted(path)


class Reaper:
    def __init__(self, state_file: Path):
        self.state_file = state_file
        self.procs: list[tuple[subprocess.Popen, list[str]]] = []
        self.mounts: list[str] = []
        self._old_handlers: dict[int, object] = {}

    # --- state file (for runs that were killed hard) ---
    def _save(self) -> None:
        state = {
            "procs": [{"pid": p.pid, "cmd": cmd} for p, cmd in self.procs if p.poll() is None],
            "mounts": [m for m in self.mounts],
        }
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state))

    def reap_stale(self, log=print) -> None:
        if not self.state_file.exists():
            return
        try:
            state = json.loads(self.state_file.read_text())
        except ValueError:
            state = {}
        for m in state.get("mounts", []):
            if mounted(m):
                log(f"cleanup: unmounting stale mount {m}")
                unmount(m)
        for entry in reversed(state.get("procs", [])):
            pid, cmd = entry["pid"], entry["cmd"]
            if _cmdline(pid) == cmd:
                log(f"cleanup: stopping stale pid {pid}: {shlex.join(cmd)[:80]}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    if _cmdline(pid) != cmd:
                        break
                    time.sleep(0.05)
                else:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        self.state_file.unlink(missing_ok=True)

    # --- registration ---
    def spawn(self, cmd: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("start_new_session", True)  # Ctrl-C reaches us only; we stop children
        p = subprocess.Popen(cmd, **kw)
        self.procs.append((p, _cmdline(p.pid) or cmd))
        self._save()
        return p

    def add_mount(self, path: str) -> None:
        self.mounts.append(os.path.realpath(path))
        self._save()

    def drop_mount(self, path: str) -> None:
        rp = os.path.realpath(path)
        if rp in self.mounts:
            self.mounts.remove(rp)
        self._save()

    def stop(self, p: subprocess.Popen, timeout: float = 10.0) -> int | None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs = [(q, c) for q, c in self.procs if q is not p]
        self._save()
        return p.returncode

    def cleanup(self) -> None:
        for m in list(reversed(self.mounts)):
            if not unmount(m):
                print(f"WARNING: could not unmount {m}", file=sys.stderr)
            self.drop_mount(m)
        for p, _ in list(reversed(self.procs)):
            self.stop(p)
        self.state_file.unlink(missing_ok=True)

    # --- signals ---
    def install_signal_handlers(self) -> None:
        def _raise(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, _raise)
        # also when started with SIGINT ignored (a background job of a non-interactive shell)
        self._old_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> Reaper:
        self.install_signal_handlers()
        return self

    def __exit__(self, *exc) -> None:
        # Block further SIGINT/SIGTERM while cleaning up, so a second Ctrl-C
        # cannot leave mounts or servers behind.
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.cleanup()
        finally:
            for s, h in old.items():
                signal.signal(s, h)


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format bench '$msec "$request" $status $body_bytes_sent "$http_range" '
                     '$request_time $connection $connection_requests';
    access_log {prefix}/access.log bench;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    types {{ application/zip zip; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    server_tokens off;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = /_status {{ stub_status; access_log off; }}
        location / {{ autoindex off; try_files $uri =404; }}  # a directory is no key: 404, as S3
{extra}
    }}
}}
"""


@dataclass
class Request:
    t_end: float
    method: str
    path: str
    status: int
    bytes: int
    range: str | None
    request_time: float
    connection: int

    @property
    def t_start(self) -> float:
        return self.t_end - self.request_time

    def range_tuple(self, size: int) -> tuple[int, int] | None:
        """Inclusive byte range actually asked for (None = whole object)."""
        if not self.range or not self.range.startswith("bytes="):
            return None
        spec = self.range[6:].split(",")[0].strip()
        a, _, b = spec.partition("-")
        if a == "":
            n = int(b)
            return max(0, size - n), size - 1
        return int(a), min(int(b) if b else size - 1, size - 1)


def parse_log_line(line: str) -> Request | None:
    try:
        head, rest = line.split(' "', 1)
        req, rest = rest.split('" ', 1)
        status, nbytes, rest = rest.split(" ", 2)
        rng, rest = rest[1:].split('" ', 1)
        rtime, conn, _ = rest.split()
        method, path = (req.split(" ") + ["", ""])[:2]
        return Request(
            t_end=float(head),
            method=method,
            path=path,
            status=int(status),
            bytes=int(nbytes),
            range=None if rng in ("-", "") else rng,
            request_time=float(rtime),
            connection=int(conn),
        )
    except ValueError:
        return None


class Nginx:
    """nginx serving ``root`` on 127.0.0.1 as ``http://127.0.0.1:PORT/bucket/key``."""

    def __init__(self, reaper: Reaper, root: Path, prefix: Path, extra_locations: str = ""):
        self.reaper = reaper
        self.extra_locations = extra_locations
        self.root = root.resolve()
        self.prefix = prefix
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    def start(self) -> None:
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        # nginx workers run as "nobody": they must be able to read the data
        for p in [self.root, *self.root.parents]:
            if p == Path("/"):
                break
            if not os.stat(p).st_mode & 0o001:
                raise SystemExit(f"{p} is not world-searchable; nginx workers cannot read data")
        last_err = ""
        for _attempt in range(5):
            self.port = free_port()
            conf = self.prefix / "nginx.conf"
            conf.write_text(NGINX_CONF.format(prefix=self.prefix, port=self.port, root=self.root,
                                              extra=self.extra_locations))
            errf = open(self.prefix / "stderr.log", "wb")  # noqa: SIM115
            self.proc = self.reaper.spawn(
                ["nginx", "-c", str(conf), "-p", str(self.prefix)],
                stdout=errf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            errf.close()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                with contextlib.suppress(OSError):
                    self.status()
                    return
                time.sleep(0.02)
            last_err = (self.prefix / "stderr.log").read_text(errors="replace")
            self.reaper.stop(self.proc)
        raise RuntimeError(f"nginx did not start: {last_err}")

    def status(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.url}/_status", timeout=2) as r:
            text = r.read().decode()
        out: dict[str, int] = {}
        for line in text.splitlines():
            words = line.replace(":", " ").split()
            if line.startswith("Active connections"):
                out["active"] = int(words[-1])
            elif line.startswith("Reading"):
                out["reading"], out["writing"], out["waiting"] = (
                    int(words[1]),
                    int(words[3]),
                    int(words[5]),
                )
        return out

    def log_mark(self) -> int:
        try:
            return self.access_log.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, mark: int, end: int | None = None) -> list[Request]:
        with open(self.access_log, "rb") as f:
            f.seek(mark)
            data = f.read() if end is None else f.read(end - mark)
        out = []
        for line in data.decode(errors="replace").splitlines():
            r = parse_log_line(line)
            if r is not None:
                out.append(r)
        return out

    def wait_quiet(self, quiet: float = 0.3, timeout: float = 15.0) -> float:
        """Wait until no request is in progress and the log stopped growing for ``quiet`` s.

        Returns how long we waited. Background (prefetch) requests that a contender
        issues right after a step ends are thus counted in that step.
        """
        t0 = time.monotonic()
        last_size = self.log_mark()
        last_change = t0
        while time.monotonic() - t0 < timeout:
            time.sleep(0.05)
            size = self.log_mark()
            now = time.monotonic()
            if size != last_size:
                last_size, last_change = size, now
                continue
            st = self.status()
            busy = st.get("writing", 1) > 1 or st.get("reading", 0) > 0
            if busy:
                last_change = now
            elif now - last_change >= quiet:
                break
        return time.monotonic() - t0


class DelayProxy:
    def __init__(self, reaper: Reaper, upstream_port: int, delay_ms: float, logdir: Path,
                 connect_delay_ms: float = 0.0, rate_mbps: float = 0.0):
        self.reaper = reaper
        self.upstream_port = upstream_port
        self.delay_ms = delay_ms
        self.rate_mbps = rate_mbps  # per connection; 0: not capped
        self.connect_delay_ms = connect_delay_ms
        self.logdir = logdir
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        name = f"proxy-{self.delay_ms:g}ms" + (f"-{self.rate_mbps:g}MBps" if self.rate_mbps else "")
        errf = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115
        self.proc = self.reaper.spawn(
            [
                sys.executable, "-m", "bench.delay_proxy",
                "--upstream", f"127.0.0.1:{self.upstream_port}",
                "--delay-ms", str(self.delay_ms),
                "--connect-delay-ms", str(self.connect_delay_ms),
                "--rate-mbps", str(self.rate_mbps),
            ],
            stdout=subprocess.PIPE,
            stderr=errf,
            stdin=subprocess.DEVNULL,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        errf.close()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("READY "):
            self.reaper.stop(self.proc)
            raise RuntimeError(f"delay proxy did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        if self.proc is not None:
            self.reaper.stop(self.proc)
