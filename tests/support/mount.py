"""Run the real `zipmount` CLI and real FUSE mounts, and always clean them up.

Nothing here mocks the kernel: mounts are checked in /proc/self/mountinfo, unmounted with
`fusermount -u` (then `-uz`), and daemon processes are found by their command line (which
contains the test's unique mountpoint or config path) and killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import marks

ERROR_PREFIX = "zipmount: error: "


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------
@dataclass
class CmdResult:
    args: list[str]
    rc: int
    stdout: str
    stderr: str
    duration: float
    stdout_bytes: bytes = b""

    def describe(self) -> str:
        return (
            f"$ {' '.join(map(str, self.args))}\n-> rc={self.rc} in {self.duration:.1f}s\n"
            f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}"
        )

    def error_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.startswith(ERROR_PREFIX)]


class CommandTimeout(AssertionError):
    pass


def run(
    args: Sequence[str | os.PathLike],
    *,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    stdin: bytes | None = None,
) -> CmdResult:
    """Run ARGS, capture stdout/stderr through files (so a daemonized grandchild that keeps
    them open cannot make us wait), kill its process group on timeout."""
    args = [str(a) for a in args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=err,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        try:
            if stdin is not None:
                proc.communicate(stdin, timeout=timeout)
            else:
                proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            out.seek(0)
            err.seek(0)
            raise CommandTimeout(
                f"command did not finish within {timeout}s: {' '.join(args)}\n"
                f"--- stdout ---\n{out.read().decode(errors='replace')[-3000:]}\n"
                f"--- stderr ---\n{err.read().decode(errors='replace')[-3000:]}"
            ) from None
        duration = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        ob = out.read()
        return CmdResult(
            args=args,
            rc=proc.returncode,
            stdout=ob.decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            duration=duration,
            stdout_bytes=ob,
        )


# --------------------------------------------------------------------------------------------
# mount table and processes
# --------------------------------------------------------------------------------------------
def _unescape_mountinfo(field_: str) -> str:
    out = bytearray()
    raw = field_.encode("utf-8", "surrogateescape")
    i = 0
    while i < len(raw):
        esc = raw[i + 1 : i + 4]
        if raw[i : i + 1] == b"\\" and len(esc) == 3 and esc.isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def mount_table() -> dict[str, str]:
    """{mountpoint: fstype} from /proc/self/mountinfo (never touches the mounts themselves)."""
    table: dict[str, str] = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = left.split()
            fstype = right.split()[0] if right else ""
            table[_unescape_mountinfo(parts[4])] = fstype
    return table


def is_mounted(path: str | os.PathLike) -> bool:
    return os.path.realpath(path) in mount_table()


def mount_fstype(path: str | os.PathLike) -> str | None:
    return mount_table().get(os.path.realpath(path))


def mounts_under(base: str | os.PathLike) -> list[str]:
    base = os.path.realpath(base).rstrip("/") + "/"
    return [mp for mp in mount_table() if mp.startswith(base)]


def pids_with_marker(*markers: str | os.PathLike) -> list[int]:
    """PIDs (not ours) whose command line contains any of MARKERS (unique temp paths)."""
    wanted = [str(m).encode() for m in markers if m]
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state == b"Z":
            continue
        if any(w in cmdline for w in wanted):
            found.append(int(entry))
    return found


def kill_pids(pids: Sequence[int], grace: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    if state == b"Z":
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.05)
    return alive


def fusermount_exe() -> str | None:
    return shutil.which("fusermount") or shutil.which("fusermount3")


def force_unmount(mountpoint: str | os.PathLike) -> list[str]:
    """fusermount -u, then -uz, then umount -l. Returns the commands' complaints."""
    notes = []
    fm = fusermount_exe() or "fusermount"
    for cmd in ([fm, "-u", str(mountpoint)], [fm, "-uz", str(mountpoint)],
                ["umount", "-l", str(mountpoint)]):
        if not is_mounted(mountpoint):
            break
        try:
            r = run(cmd, timeout=15)
            if r.rc != 0:
                notes.append(f"{' '.join(cmd)}: rc={r.rc} {r.stderr.strip()}")
        except CommandTimeout as exc:
            notes.append(str(exc))
    return notes


def cleanup(mountpoints: Sequence[str | os.PathLike], markers: Sequence[str | os.PathLike],
            procs: Sequence[subprocess.Popen] = ()) -> list[str]:
    """Unmount MOUNTPOINTS, end PROCS and every process whose cmdline has a MARKER.

    Returns a list of problems that remain (empty when all is clean)."""
    notes: list[str] = []
    for mp in mountpoints:
        notes += force_unmount(mp)
    for p in procs:
        # The daemon should leave on its own once unmounted; give it a moment, then end it.
        try:
            p.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                notes.append(f"daemon pid {p.pid} ignored SIGTERM for 10s; killing")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
    leftovers = pids_with_marker(*markers)
    if leftovers:
        kill_pids(leftovers)
    for mp in mountpoints:  # killing a daemon can leave a dead mount
        if is_mounted(mp):
            notes += force_unmount(mp)
    problems = [f"still mounted: {mp}" for mp in mountpoints if is_mounted(mp)]
    problems += [f"process still alive: {pid}" for pid in pids_with_marker(*markers)]
    return problems


# --------------------------------------------------------------------------------------------
# the zipmount CLI
# --------------------------------------------------------------------------------------------
def zipmount_exe() -> Path:
    return Path(sys.executable).parent / "zipmount"


@dataclass
class MountHandle:
    mountpoint: Path
    proc: subprocess.Popen | None
    stderr_path: Path
    args: list[str]

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


@dataclass
class Zipmount:
    """Runs `zipmount` against one storage endpoint with one set of credentials."""

    workdir: Path
    endpoint_url: str | None = None
    ca_bundle: Path | None = None
    access_key: str | None = None
    secret_key: str | None = None
    region: str = "us-east-1"
    exe: Path = field(default_factory=zipmount_exe)

    # ----- environment -------------------------------------------------------------------
    def env(self, access_key: str | None = ..., secret_key: str | None = ...,  # type: ignore[assignment]
            **extra: str) -> dict[str, str]:
        """A clean environment: no inherited AWS settings, no instance-metadata lookups,
        credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY unless given as None."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "ZIPMOUNT_", "STORAGE_")) and k != "ENDPOINT_FULL"}
        nothing = str(self.workdir / "no-such-aws-file")
        env.update(
            AWS_CONFIG_FILE=nothing,
            AWS_SHARED_CREDENTIALS_FILE=nothing,
            AWS_EC2_METADATA_DISABLED="true",
            AWS_DEFAULT_REGION=self.region,
            PYTHONUNBUFFERED="1",
            XDG_STATE_HOME=str(self.workdir / "state"),  # background mounts log there
        )
        ak = self.access_key if access_key is ... else access_key
        sk = self.secret_key if secret_key is ... else secret_key
        if ak is not None:
            env["AWS_ACCESS_KEY_ID"] = ak
        if sk is not None:
            env["AWS_SECRET_ACCESS_KEY"] = sk
        env.update(extra)
        return env

    def storage_args(self) -> list[str]:
        args: list[str] = []
        if self.endpoint_url:
            args += ["--endpoint-url", self.endpoint_url]
        if self.ca_bundle:
            args += ["--ca-bundle", str(self.ca_bundle)]
        return args

    def new_dir(self, prefix: str) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.workdir))

    def mountpoint(self) -> Path:
        return self.new_dir("mp-")

    def _cache_args(self, opts: Sequence[str]) -> list[str]:
        if any(o in ("--cache-dir", "--no-disk-cache") or str(o).startswith("--cache-dir=")
               for o in opts):
            return []
        return ["--cache-dir", str(self.new_dir("cache-"))]

    # ----- one-shot commands -------------------------------------------------------------
    def run(self, *args: str | os.PathLike, storage: bool = False, env: dict | None = None,
            timeout: float = 60) -> CmdResult:
        """`zipmount ARGS` (+ endpoint/CA options when STORAGE), in an empty cwd."""
        cmd = [str(self.exe), *map(str, args)] + (self.storage_args() if storage else [])
        return run(cmd, env=env if env is not None else self.env(), timeout=timeout,
                   cwd=self.new_dir("cwd-"))

    def _mount_args(self, source: str | None, mp: Path, opts: Sequence[str | os.PathLike], *,
                    foreground: bool, storage: bool, cache: bool) -> list[str]:
        marks.require("fuse")
        opts_s = [str(o) for o in opts]
        args = ["mount", *([source, str(mp)] if source is not None else []),
                *(["-f"] if foreground else []), *opts_s]
        if storage:
            args += self.storage_args()
        if cache:
            args += self._cache_args(opts_s)
        return args

    # ----- foreground mounts -------------------------------------------------------------
    @contextlib.contextmanager
    def mounted(
        self,
        source: str | None,
        *opts: str | os.PathLike,
        mountpoint: Path | None = None,
        env: dict | None = None,
        storage: bool = True,
        cache: bool = True,
        timeout: float = 20.0,
        markers: Sequence[str | os.PathLike] = (),
        extra_mountpoints: Sequence[Path] = (),
    ) -> Iterator[MountHandle]:
        """`zipmount mount SOURCE MP -f OPTS` as a child process; yields once MP is mounted
        and answers; always unmounts, ends the daemon and checks nothing is left."""
        mp = mountpoint or self.mountpoint()
        args = [str(self.exe), *self._mount_args(source, mp, opts, foreground=True,
                                                 storage=storage, cache=cache)]
        logdir = self.new_dir("log-")
        stderr_path = logdir / "stderr.txt"
        all_mps = [mp, *extra_mountpoints]
        with open(logdir / "stdout.txt", "wb") as out, open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                args, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                env=env if env is not None else self.env(), cwd=logdir,
                start_new_session=True,
            )
        handle = MountHandle(mountpoint=mp, proc=proc, stderr_path=stderr_path, args=args)
        markers = [str(mp), *map(str, markers)]
        try:
            wait_mounted(all_mps, timeout=timeout, proc=proc, stderr=handle.stderr)
        except BaseException:
            cleanup(all_mps, markers, [proc])
            raise
        with _left_clean(all_mps, markers, [proc], handle.stderr):
            yield handle

    # ----- background (daemon) mounts ------------------------------------------------------
    @contextlib.contextmanager
    def mounted_bg(
        self,
        source: str | None,
        *opts: str | os.PathLike,
        mountpoint: Path | None = None,
        env: dict | None = None,
        storage: bool = True,
        cache: bool = True,
        timeout: float = 60.0,
        markers: Sequence[str | os.PathLike] = (),
        extra_mountpoints: Sequence[Path] = (),
    ) -> Iterator[tuple[CmdResult, Path]]:
        """`zipmount mount SOURCE MP OPTS` (no -f): yields (result, MP) after the command
        returns, whatever its exit code; always cleans up MP and any daemon afterwards."""
        mp = mountpoint or self.mountpoint()
        args = self._mount_args(source, mp, opts, foreground=False, storage=storage, cache=cache)
        with _left_clean([mp, *extra_mountpoints], [str(mp), *map(str, markers)]):
            yield self.run(*args, env=env, timeout=timeout), mp


@contextlib.contextmanager
def _left_clean(mountpoints: Sequence[Path], markers: Sequence[str],
                procs: Sequence[subprocess.Popen] = (),
                stderr: Callable[[], str] | None = None) -> Iterator[None]:
    """Always clean up afterwards; if the body passed, fail on anything left behind."""
    body_ok = False
    try:
        yield
        body_ok = True
    finally:
        problems = cleanup(mountpoints, markers, procs)
        if problems and body_ok:
            tail = f"\n--- daemon stderr ---\n{stderr()[-3000:]}" if stderr else ""
            raise AssertionError("teardown left things behind: " + "; ".join(problems) + tail)


def wait_mounted(mountpoints: Sequence[Path], *, timeout: float, proc: subprocess.Popen | None,
                 stderr) -> None:
    marks.require("fuse")
    deadline = time.monotonic() + timeout
    pending = list(mountpoints)
    while True:
        pending = [mp for mp in pending if not (is_mounted(mp) and _answers(mp))]
        if not pending:
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"zipmount exited with rc={proc.returncode} before {pending} was mounted\n"
                f"--- daemon stderr ---\n{stderr()[-4000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{pending} not mounted within {timeout}s\n--- daemon stderr ---\n"
                f"{stderr()[-4000:]}"
            )
        time.sleep(0.05)


def _answers(mp: Path) -> bool:
    """The mount answers a stat of its root (checked in a child so a hung daemon can't hang
    the test) and os.path.ismount agrees."""
    try:
        r = run(["stat", "-c", "%F", str(mp)], timeout=10)
    except CommandTimeout:
        return False
    return r.rc == 0 and os.path.ismount(mp)
