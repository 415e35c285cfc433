"""The contenders, in the order they run and are listed in (``--contenders``).

Each is a factory building one contender object per endpoint and round (the session steps run
on it), or a round of its own; see ``bench.registry``. The objects themselves are in
``bench.contenders`` and ``bench.inproc``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import log, slug
from bench.contenders import LocalContender, SeedContender, ZipmountContender
from bench.inproc import ChildContender, FuseFloorContender, ZipmountFsspecContender
from bench.registry import contender, measured_in_a_step
from bench.runner import Named
from bench.steps.sessions import eeg_sessions
from bench.venvs import VENV312, ZARR3_VENV, ensure_venv312

if TYPE_CHECKING:
    from bench.runner import Runner


@functools.cache
def venv312_status() -> dict[str, str | None]:
    """Build .bench/venv312 once per run; {package group: None if usable, else the error}."""
    return ensure_venv312(log=log)


def zarr3_python() -> Path:
    """zarr 3 over the mount: the project's .venv-zarr3 (make test builds it), else venv312."""
    own = ZARR3_VENV / "bin" / "python"
    return own if own.exists() else VENV312 / "bin" / "python"


def venv312_check(group: str):
    def check(run: Runner) -> str | None:
        why = venv312_status().get(group)
        return f"not installable: {why}" if why else None

    return check


def zarr3_mount_check(run: Runner) -> str | None:
    if not (ZARR3_VENV / "bin" / "python").exists():
        why = venv312_status().get("zarr")
        if why:
            return f"not installable: {why}"
    return None if run.want_zm else "needs the zipmount executable"


def fsspec_check(run: Runner) -> str | None:
    try:
        import zipmount.fsspec_fs  # noqa: F401
    except ImportError as e:
        return f"not importable: {e}"
    return None


@contender("local", "local copy", per_round=True, always=True)
def local_round(run: Runner) -> None:
    """The extracted copy on local disk: the floor, and the reference every read is checked
    against (so it always runs, first)."""
    sessions = run.selected_steps("session")
    if not sessions:
        return
    local = LocalContender(run.manifest["local"]["eeg"], run.manifest["local"]["many"])
    log("local copy")
    for s in sessions:
        s.run(run, local, None)


@contender("seed", "seed recipe")
def seed(run: Runner, delay, url: str, keys: dict) -> SeedContender:
    return SeedContender(url, keys["eeg"], keys["many"])


@contender("zipmount", "zipmount mount (zarr 2)")
def zipmount(run: Runner, delay, url: str, keys: dict) -> ZipmountContender | None:
    return run.new_zipmount(url, keys, f"r{run.rep}d{slug(delay)}-") if run.want_zm else None


@contender("zipmount-fsspec", "zipmount fsspec (zarr 2, in process)", check=fsspec_check)
def zipmount_fsspec(run: Runner, delay, url: str, keys: dict) -> ZipmountFsspecContender | None:
    if "eeg" not in run.args.steps:
        return None
    return ZipmountFsspecContender(url, keys["eeg"], keys["many"], run.work)


@contender("zarr3-zipstore", "zarr 3 ZipStore(s3fs file)", check=venv312_check("zarr"))
def zarr3_zipstore(run: Runner, delay, url: str, keys: dict) -> ChildContender | None:
    if "eeg" not in run.args.steps:
        return None
    return ChildContender("zarr3-zipstore", str(VENV312 / "bin" / "python"), "zarr3-zipstore",
                          run.reaper, run.work, url, keys["eeg"])


@contender("virtualizarr", "VirtualiZarr ZippedZarrParser", check=venv312_check("virtualizarr"))
def virtualizarr(run: Runner, delay, url: str, keys: dict) -> ChildContender | None:
    if "eeg" not in run.args.steps:
        return None
    return ChildContender("virtualizarr", str(VENV312 / "bin" / "python"), "virtualizarr",
                          run.reaper, run.work, url, keys["eeg"])


@contender("zarr3-mount", "zarr 3 over the zipmount mount", check=zarr3_mount_check)
def zarr3_mount(run: Runner, delay, url: str, keys: dict) -> ChildContender | None:
    if "eeg" not in run.args.steps:
        return None
    zm = run.new_zipmount(url, keys, f"z3r{run.rep}d{slug(delay)}-")
    return ChildContender("zarr3-mount", str(zarr3_python()), "zarr3-local", run.reaper,
                          run.work, url, keys["eeg"], mount=zm)


@contender("fuse-floor", "FUSE floor (mfusepy, in memory)", per_round=True)
def fuse_floor_round(run: Runner) -> None:
    """The eeg steps and the stream through the in-memory mfusepy file system."""
    if not {"eeg", "stream"} & set(run.args.steps):
        return
    big = run.manifest["archives"]["big"]
    member = sorted(big["members"])[0]
    ff = FuseFloorContender(run.reaper, run.work, run.manifest["local"]["eeg"],
                            big["path"] if "stream" in run.args.steps else None, member)
    log("FUSE floor (bench.memfuse)")
    try:
        # mounted (and loaded into memory) before the steps: loading is not what it measures
        sub = ff.start(fresh=True)
        log(f"  memfuse mounted in {sub['mount_s']:.1f} s")
        if "eeg" in run.args.steps:
            eeg_sessions(run, ff, None)
        if "stream" in run.args.steps:
            ff.start(fresh=True)
            run.drop_caches()
            size = big["members"][member]["file_size"]
            _, rec = run.measure(Named("fuse-floor", False), None, "stream",
                                 lambda: run.cat(ff.big_path), check=False)
            rec["stream_bytes"] = size
    except Exception as e:  # noqa: BLE001
        log(f"  FUSE floor aborted: {e}")
        run.notes.append(f"FUSE floor aborted: {e}")
    finally:
        ff.cleanup()


measured_in_a_step("s3fs-ranged", "s3fs ranged reads (floor, in the stream step)")
