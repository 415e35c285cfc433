"""Contenders added for issues 9 and 11: in-process readers and the FUSE floor.

* ``ZipmountFsspecContender``: zipmount's fsspec filesystem in the benchmark process,
  ``fsspec.get_mapper("zipmount::s3://bucket/key", s3={...}, zipmount={"cache_dir": ...})``
  read by zarr-python 2 (``FSStore``: a selection's chunks in one ``getitems``).
* ``ChildContender``: a ``bench.worker`` process in another environment (zarr-python 3
  ``ZipStore`` over an s3fs file, VirtualiZarr's ``ZippedZarrParser``, or zarr-python 3
  ``LocalStore`` over a zipmount mount); every step is one command on its stdin, timed in
  the worker.
* ``FuseFloorContender``: ``bench.memfuse``, a minimal in-memory mfusepy file system holding
  the extracted copy, read through zarr ``DirectoryStore``: what Python + libfuse cost alone.

All have the interface of ``bench.contenders`` (``start(fresh)``, ``group()``, ``stop()``).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.contenders import ZipmountContender, _zarr_group_dir
from bench.servers import Reaper, mounted, unmount

REPO = Path(__file__).resolve().parent.parent


@dataclass
class ChildResult:
    """A step's result measured in another process."""

    time_s: float
    digest: str | None
    error: str | None = None


class ZipmountFsspecContender:
    """zipmount's fsspec filesystem (issue 9) in this process, with zarr-python 2."""

    name = "zipmount-fsspec"
    remote = True

    def __init__(self, endpoint: str, eeg_key: str, many_key: str, workdir: Path):
        self.endpoint = endpoint
        self.eeg_key = eeg_key
        self.many_key = many_key
        self.workdir = workdir
        self.cache_dir: str | None = None
        self.fs = None

    def _options(self) -> dict:
        return {
            "s3": {"anon": True, "endpoint_url": self.endpoint, "skip_instance_cache": True},
            "zipmount": {"cache_dir": self.cache_dir, "skip_instance_cache": True},
        }

    def warm_up(self) -> None:
        """Import the filesystem and botocore's models once, as a long-lived process has them."""
        import s3fs

        import zipmount.fsspec_fs  # noqa: F401

        s3fs.S3FileSystem(anon=True, endpoint_url=self.endpoint,
                          skip_instance_cache=True).info(self.eeg_key)

    def _fresh_cache(self, fresh: bool) -> None:
        if fresh or self.cache_dir is None:
            self.cache_dir = tempfile.mkdtemp(prefix="fsspec-cache-", dir=self.workdir)

    def start(self, fresh: bool) -> dict:
        import fsspec

        self._fresh_cache(fresh)
        t0 = time.perf_counter()
        self.mapper = fsspec.get_mapper(f"zipmount::s3://{self.eeg_key}", **self._options())
        self.fs = self.mapper.fs
        return {"index_s": time.perf_counter() - t0}

    def group(self):
        import zarr

        return zarr.open_group(self.mapper, mode="r")

    def stop(self) -> dict:
        """End the "session" as a process exit would: a later start with the same cache dir
        finds the disk tier and persisted index, not this process's memory tier."""
        self.fs = self.mapper = None
        from zipmount.engine import Engine

        # The engine is process-wide per cache dir (what a long-lived user process wants);
        # a remount here stands for a new process, so it must not find this one's memory.
        Engine.close_shared(self.cache_dir)
        return {}

    def listing(self, fresh: bool) -> tuple[int, dict]:
        import fsspec

        self._fresh_cache(fresh)
        opts = self._options()
        fs = fsspec.filesystem("zipmount", fo=f"s3://{self.many_key}", target_options=opts["s3"],
                               **opts["zipmount"])
        self.fs = fs
        return len(fs.find("", withdirs=True)) + 1, {}  # + the root, like find(1)

    def stop_listing(self) -> dict:
        return self.stop()


class ChildContender:
    """A contender in another venv (``bench.worker``); optionally over a zipmount mount."""

    remote = True

    def __init__(self, name: str, python: str, kind: str, reaper: Reaper, workdir: Path,
                 endpoint: str, eeg_key: str, mount: ZipmountContender | None = None,
                 timeout: float = 300.0):
        self.name = name
        self.python = python
        self.kind = kind
        self.reaper = reaper
        self.workdir = workdir
        self.endpoint = endpoint
        self.eeg_key = eeg_key
        self.mount = mount
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.versions: dict = {}

    def launch(self) -> None:
        opts = {"endpoint": self.endpoint, "key": self.eeg_key}
        errf = open(self.workdir / f"worker-{self.name}-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
        self.proc = self.reaper.spawn(
            [self.python, "-m", "bench.worker", self.kind, json.dumps(opts)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf, cwd=str(REPO), text=True)
        errf.close()
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.reaper.stop(self.proc)
            self.proc = None
            raise RuntimeError(f"{self.name}: worker did not start (log {errf.name})")
        self.versions = json.loads(line[6:])

    warm_up = launch

    def call(self, op: str, **kw) -> ChildResult:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name}: worker is not running")
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: worker exited during {op}")
        ans = json.loads(line)
        if ans.get("error"):
            raise RuntimeError(ans["error"])
        return ChildResult(ans["time_s"], ans.get("digest"))

    def watchdog_kill(self) -> None:
        """Called by the step watchdog: a hung worker (or mount) fails the step, not the run."""
        if self.mount is not None:
            self.mount.watchdog_kill()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def start(self, fresh: bool) -> dict:
        sub: dict = {}
        if self.mount is not None:
            sub = self.mount.mount(self.eeg_key, fresh)
        self._open_path = self.mount.mountpoint if self.mount is not None else None
        return sub

    def group(self):
        r = self.call("open", path=self._open_path)
        return r

    def stop(self) -> dict:
        with contextlib.suppress(RuntimeError):
            self.call("close")
        return self.mount.unmount() if self.mount is not None else {}

    def cleanup(self) -> None:
        if self.mount is not None:
            self.mount.cleanup()
        if self.proc is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.write('{"op": "exit"}\n')
                self.proc.stdin.flush()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            self.reaper.stop(self.proc)
            self.proc = None


class FuseFloorContender:
    """The extracted copy (and the stream member) served from memory by ``bench.memfuse``."""

    name = "fuse-floor"
    remote = False

    def __init__(self, reaper: Reaper, workdir: Path, eeg_dir: str, big_zip: str | None,
                 big_member: str | None):
        self.reaper = reaper
        self.workdir = workdir
        self.eeg_dir = eeg_dir
        self.big = (big_zip, big_member)
        self.proc: subprocess.Popen | None = None
        self.mountpoint: str | None = None
        self.n = 0

    def mount(self, timeout: float = 120.0) -> dict:
        self.n += 1
        mp = self.workdir / f"memfuse-{self.n}"
        mp.mkdir()
        self.mountpoint = str(mp)
        cmd = [sys.executable, "-m", "bench.memfuse", self.mountpoint, "--tree",
               f"{self.eeg_dir}=eeg.zarr"]
        if self.big[0]:
            cmd += ["--zip-member", f"{self.big[0]}:{self.big[1]}=big.bin"]
        logf = open(self.workdir / f"memfuse-{self.n}.log", "wb")  # noqa: SIM115
        t0 = time.perf_counter()
        self.proc = self.reaper.spawn(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=str(REPO))
        logf.close()
        self.reaper.add_mount(self.mountpoint)
        while not mounted(self.mountpoint):
            if self.proc.poll() is not None or time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"memfuse did not mount (log {logf.name})")
            time.sleep(0.005)
        return {"mount_s": time.perf_counter() - t0}

    @property
    def big_path(self) -> str:
        assert self.mountpoint
        return str(Path(self.mountpoint) / "big.bin")

    def start(self, fresh: bool) -> dict:
        if self.proc is None:
            return self.mount()
        return {}

    def group(self):
        assert self.mountpoint
        return _zarr_group_dir(str(Path(self.mountpoint) / "eeg.zarr"))

    def stop(self) -> dict:
        return {}  # one mount serves every session: loading 0.6 GB into memory is not the test

    def cleanup(self) -> None:
        if self.mountpoint:
            unmount(self.mountpoint)
            self.reaper.drop_mount(self.mountpoint)
        if self.proc is not None:
            self.reaper.stop(self.proc)
            self.proc = None
        if self.mountpoint:
            with contextlib.suppress(OSError):
                Path(self.mountpoint).rmdir()
            self.mountpoint = None
