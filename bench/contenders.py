"""The three ways of reading the benchmark data that bench.run compares.

* ``LocalContender``: the extracted copy on local disk, zarr ``DirectoryStore`` (the floor).
* ``SeedContender``: the "seed recipe", in-process
  ``s3fs.S3FileSystem`` -> ``fsspec ZipFileSystem(fo=s3.open(key))`` -> ``FSMap`` -> zarr.
* ``ZipmountContender``: ``zipmount mount s3://bucket/key MOUNTPOINT -f ...`` as a child
  process, read through zarr ``DirectoryStore(mountpoint)``.

Each has ``start(fresh)`` (fresh = nothing cached from before; otherwise a "remount"),
``group()``, ``stop()`` and ``listing(fresh)`` for the many-entries archive.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.servers import Reaper, mounted, unmount


def _zarr_group_dir(path: str):
    import zarr

    return zarr.open_group(store=zarr.DirectoryStore(path), mode="r")


def count_find(path: str) -> int:
    out = subprocess.run(["find", path], capture_output=True, check=True).stdout
    return out.count(b"\n")


class LocalContender:
    name = "local"
    remote = False

    def __init__(self, eeg_dir: str, many_dir: str):
        self.eeg_dir = eeg_dir
        self.many_dir = many_dir

    def start(self, fresh: bool) -> dict:
        return {}

    def group(self):
        return _zarr_group_dir(self.eeg_dir)

    def stop(self) -> dict:
        return {}

    def listing(self, fresh: bool) -> tuple[int, dict]:
        return count_find(self.many_dir), {}

    def stop_listing(self) -> dict:
        return {}


class SeedContender:
    """The recipe users write today; nothing persists between ``start`` calls."""

    name = "seed"
    remote = True

    def __init__(self, endpoint: str, eeg_key: str, many_key: str):
        self.endpoint = endpoint
        self.eeg_key = eeg_key
        self.many_key = many_key
        self._files: list = []

    def _s3(self):
        import s3fs

        return s3fs.S3FileSystem(
            anon=True,
            endpoint_url=self.endpoint,
            skip_instance_cache=True,
            use_listings_cache=False,
        )

    def _zipfs(self, key: str):
        from fsspec.implementations.zip import ZipFileSystem

        f = self._s3().open(key, "rb")
        self._files.append(f)
        return ZipFileSystem(fo=f, skip_instance_cache=True)

    def warm_up(self) -> None:
        """Load botocore's models etc. once, as a long-lived user process would have."""
        self._s3().info(self.eeg_key)

    def start(self, fresh: bool) -> dict:
        t0 = time.perf_counter()
        self.zfs = self._zipfs(self.eeg_key)
        return {"index_s": time.perf_counter() - t0}

    def group(self):
        import zarr

        return zarr.open_group(self.zfs.get_mapper(""), mode="r")

    def stop(self) -> dict:
        for f in self._files:
            with contextlib.suppress(Exception):
                f.close()
        self._files.clear()
        self.zfs = None
        return {}

    def listing(self, fresh: bool) -> tuple[int, dict]:
        zfs = self._zipfs(self.many_key)
        n = len(zfs.find("", withdirs=True)) + 1  # + the root, like find(1)
        return n, {}

    def stop_listing(self) -> dict:
        return self.stop()


def _proc_status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "Threads"):
                    out[k] = int(v.split()[0])  # kB (Threads: count)
    except OSError:
        pass
    return out


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class RssSampler:
    """Samples VmRSS of a pid every ``interval`` s in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            st = _proc_status(self.pid)
            if "VmRSS" in st:
                self.peak_kb = max(self.peak_kb, st["VmRSS"])
                self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


class ZipmountHelp:
    """What the installed ``zipmount mount`` accepts (parsed from --help)."""

    MEMCAP_CANDIDATES = (
        "--memory",
        "--memory-cap",
        "--mem-cap",
        "--cache-memory",
        "--memory-cache",
        "--memory-cache-size",
        "--cache-memory-size",
        "--max-memory",
        "--memory-limit",
        "--cache-mem",
    )

    def __init__(self, exe: str):
        self.exe = exe
        p = subprocess.run([exe, "mount", "--help"], capture_output=True, text=True, timeout=60)
        self.text = p.stdout + p.stderr
        self.options = set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", self.text))
        self.anonymous = "--anonymous" in self.options
        self.log_level = "--log-level" in self.options
        self.memcap = next((c for c in self.MEMCAP_CANDIDATES if c in self.options), None)


class ZipmountContender:
    name = "zipmount"
    remote = True

    def __init__(
        self,
        reaper: Reaper,
        exe: str,
        helpinfo: ZipmountHelp,
        endpoint: str,
        eeg_key: str,
        many_key: str,
        workdir: Path,
        extra_args: list[str] | None = None,
        log_level: str = "WARNING",
        label: str = "",
    ):
        self.reaper = reaper
        self.exe = exe
        self.help = helpinfo
        self.endpoint = endpoint
        self.eeg_key = eeg_key
        self.many_key = many_key
        self.workdir = workdir
        self.extra_args = list(extra_args or [])
        self.log_level = log_level
        self.label = label
        self.proc: subprocess.Popen | None = None
        self.mountpoint: str | None = None
        self.cache_dir: str | None = None
        self.n = 0
        self.last_log: Path | None = None
        self.killed_by_watchdog = False

    # --- process management ---
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("AWS_EC2_METADATA_DISABLED", "true")
        if not self.help.anonymous:
            # nginx ignores the signature; botocore only needs some credentials
            env.setdefault("AWS_ACCESS_KEY_ID", "zipmount-bench")
            env.setdefault("AWS_SECRET_ACCESS_KEY", "zipmount-bench")
        return env

    def mount(self, key: str, fresh: bool, extra: list[str] | None = None,
              timeout: float = 120.0) -> dict:
        if fresh or self.cache_dir is None:
            self.cache_dir = tempfile.mkdtemp(prefix="cache-", dir=self.workdir)
        self.n += 1
        mp = self.workdir / f"mnt-{self.label}{self.n}"
        mp.mkdir()
        self.mountpoint = str(mp)
        cmd = [self.exe, "mount", f"s3://{key}", self.mountpoint, "-f",
               "--endpoint-url", self.endpoint, "--cache-dir", self.cache_dir]
        if self.help.log_level:
            cmd += ["--log-level", self.log_level]
        if self.help.anonymous:
            cmd.append("--anonymous")
        cmd += self.extra_args + list(extra or [])
        self.last_log = self.workdir / f"zipmount-{self.label}{self.n}.log"
        logf = open(self.last_log, "wb")  # noqa: SIM115
        logf.write((" ".join(cmd) + "\n").encode())
        logf.flush()
        t0 = time.perf_counter()
        self.proc = self.reaper.spawn(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=self._env())
        logf.close()
        self.reaper.add_mount(self.mountpoint)
        while not mounted(self.mountpoint):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"zipmount exited with {self.proc.returncode} before mounting; "
                    f"log {self.last_log}:\n{self.last_log.read_text(errors='replace')[-2000:]}"
                )
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"zipmount did not mount within {timeout} s ({self.last_log})")
            time.sleep(0.002)
        return {"mount_s": time.perf_counter() - t0, "pid": self.proc.pid}

    def daemon_stats(self) -> dict:
        if self.proc is None:
            return {}
        st = _proc_status(self.proc.pid)
        return {
            "rss_kb": st.get("VmRSS"),
            "hwm_kb": st.get("VmHWM"),
            "threads": st.get("Threads"),
            "cpu_s": _proc_cpu_s(self.proc.pid),
        }

    def unmount(self) -> dict:
        if self.proc is None or self.mountpoint is None:
            return {}
        stats = self.daemon_stats()
        t0 = time.perf_counter()
        ok = unmount(self.mountpoint)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            stats["exit"] = "did not exit 30 s after unmount; SIGTERM"
            self.reaper.stop(self.proc)
        stats["unmount_s"] = time.perf_counter() - t0
        stats["returncode"] = self.proc.returncode
        stats["unmounted"] = ok
        self.reaper.stop(self.proc)
        self.reaper.drop_mount(self.mountpoint)
        with contextlib.suppress(OSError):
            os.rmdir(self.mountpoint)
        self.proc = None
        self.mountpoint = None
        return stats

    def watchdog_kill(self) -> None:
        """Called by the step watchdog: make blocked reads fail instead of hanging."""
        self.killed_by_watchdog = True
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        if self.mountpoint:
            subprocess.run(["fusermount", "-u", "-z", self.mountpoint], capture_output=True)

    # --- contender API ---
    def start(self, fresh: bool) -> dict:
        return self.mount(self.eeg_key, fresh)

    def group(self):
        assert self.mountpoint
        return _zarr_group_dir(self.mountpoint)

    def stop(self) -> dict:
        return self.unmount()

    def listing(self, fresh: bool) -> tuple[int, dict]:
        sub = self.mount(self.many_key, fresh)
        t0 = time.perf_counter()
        n = count_find(self.mountpoint)
        sub["find_s"] = time.perf_counter() - t0
        return n, sub

    def stop_listing(self) -> dict:
        return self.unmount()

    def cleanup(self) -> None:
        if self.proc is not None:
            self.unmount()
        # cache dirs live under workdir, removed by the runner


def rmtree_unmounted(path: Path) -> None:
    """Remove a scratch tree, but never descend into something still mounted."""
    with open("/proc/self/mounts") as f:
        mps = [line.split()[1] for line in f]
    rp = str(path.resolve())
    if any(m == rp or m.startswith(rp + "/") for m in mps):
        return
    shutil.rmtree(path, ignore_errors=True)
