"""``zipmount prefetch``: warm the cache by reading the files of a mount, archive by archive.

The paths (on a zipmount mount) are split into archives (directories whose names end with a
suffix, as a prefix mount shows them; a path with none below it is one archive) and, beside
them, the directories of other files, which are read by ``--jobs`` threads at once, each by one
thread in name order so that the daemon's read-ahead follows it. An archive that vanishes during
the run (replaced or deleted on the server) is reported and the run fails; the others go on.
``--metadata-only`` lists every archive (the daemon loads and persists its index) and reads only
its zarr metadata files (``ZARR_METADATA``: a few hundred bytes each, next to one another), so a
reader's first chunk of an archive costs one request. An interrupted run leaves a journal of the
archives it finished; the same command run again skips those whose size and mtime are unchanged.
A run that completes removes its journal, so the next one reads everything again (from the cache
if it is still there).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError, ZipmountError
from ..tree import DEFAULT_SUFFIXES

READ_SIZE = 1 << 20
ZARR_METADATA = frozenset({".zgroup", ".zarray", ".zattrs", ".zmetadata", "zarr.json"})


@dataclass
class Unit:
    """One archive (or one file or subtree, or the loose files of one directory) to prefetch."""

    path: str
    files: list[str] = field(default_factory=list)
    size: int = 0
    archive: bool = True  # False: files beside archives, listed when found
    listed: bool = False

    def identity(self) -> str | None:
        """What the journal records; None once the path is gone."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return f"{self.path}\t{st.st_size}\t{st.st_mtime_ns}"


class Vanished(Exception):
    """The unit's path disappeared during the run."""


class Progress:
    """Counters shared by the workers, and the one-line progress bar on a terminal."""

    def __init__(self, archives: int, tty: bool) -> None:
        self.archives = archives
        self.tty = tty
        self.done_archives = self.files = self.failed = 0
        self.bytes = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._shown = 0.0

    def add(self, *, nbytes: int = 0, files: int = 0, failed: int = 0,
            archive: bool = False) -> None:
        with self._lock:
            self.bytes += nbytes
            self.files += files
            self.failed += failed
            self.done_archives += archive
            now = time.monotonic()
            if self.tty and (now - self._shown > 0.2 or archive):
                self._shown = now
                self._show(now)

    def _show(self, now: float) -> None:
        elapsed = max(1e-6, now - self.started)
        rate = self.bytes / elapsed
        frac = self.done_archives / self.archives if self.archives else 1.0
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        width = 24
        bar = "#" * int(frac * width)
        eta_text = f"{eta:5.0f} s" if eta == eta else "    ? s"
        print(f"\r[{bar:<{width}}] {self.done_archives}/{self.archives} archives "
              f"{self.bytes / 2**20:9.1f} MiB {rate / 2**20:7.1f} MiB/s ETA {eta_text}", end="",
              file=sys.stderr, flush=True)


class RateLimit:
    """At most ``rate`` bytes per second over all workers (None: no limit)."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self.started = time.monotonic()
        self.total = 0
        self._lock = threading.Lock()

    def took(self, nbytes: int) -> None:
        if not self.rate:
            return
        with self._lock:
            self.total += nbytes
            ahead = self.total / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(ahead)


def find_units(paths: list[str], suffixes: tuple[str, ...]) -> list[Unit]:
    """The archives below ``paths`` (never listing inside one: that would load its index), and
    the files beside them."""
    units: list[Unit] = []
    for path in paths:
        if not os.path.lexists(path):
            raise ZipmountError(f"{path}: no such file or directory")
        if not os.path.isdir(path):
            units.append(Unit(path))
            continue
        found = list(_archive_dirs(path, suffixes))
        if any(u.archive for u in found):
            units.extend(found)
        else:  # no archive below: the path is one (or a part of one)
            units.append(Unit(path))
    return units


def _archive_dirs(top: str, suffixes: tuple[str, ...]) -> Iterator[Unit]:
    """The archive directories below ``top``, and a unit of the regular files of each directory
    on the way (a file beside an archive is read too)."""
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError as exc:
        raise ZipmountError(f"{top}: {exc.strerror}") from None
    loose = Unit(top, archive=False, listed=True)
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if entry.name.lower().endswith(suffixes):
                    yield Unit(entry.path)
                else:
                    yield from _archive_dirs(entry.path, suffixes)
            elif entry.is_file(follow_symlinks=False):
                loose.files.append(entry.path)
                loose.size += entry.stat(follow_symlinks=False).st_size
        except OSError as exc:
            raise ZipmountError(f"{entry.path}: {exc.strerror}") from None
    if loose.files:
        yield loose


def check_on_a_zipmount_mount(path: str) -> None:
    """Raise a one-line error unless ``path`` lies on a mount whose zipmount daemon answers."""
    from ..daemon import mount_state
    from ..stats import STATS_XATTR

    mount = _mount_of(os.path.abspath(path))
    try:
        os.getxattr(mount, STATS_XATTR)
        return
    except OSError:
        pass
    if mount_state(mount) == "stale":
        raise ZipmountError(f"{path}: the daemon of {mount} is gone; clean it with `zipmount "
                            f"umount {mount}` and mount again")
    if not os.path.lexists(path):
        raise ZipmountError(f"{path}: no such file or directory")
    raise UsageError(f"{path} is not on a zipmount mount: prefetch warms a mount's cache by "
                     "reading through it (zipmount mount SOURCE MOUNTPOINT first)")


def _mount_of(path: str) -> str:
    """The mountpoint ``path`` lies on, from the mount table (a dead mount cannot be stat'ed)."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
                  for line in table]
    real = os.path.realpath(path) if os.path.lexists(path) else path
    return max((p for p in points if real == p or real.startswith(p.rstrip("/") + "/")), key=len)


def _list_files(unit: Unit) -> None:
    if unit.listed:
        return
    if not os.path.isdir(unit.path):
        unit.files, unit.size = [unit.path], os.stat(unit.path).st_size
        return
    for dirpath, dirnames, names in os.walk(unit.path, onerror=_raise):
        dirnames.sort()
        for name in sorted(names):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                unit.files.append(full)
                unit.size += st.st_size


def _say(progress: Progress, text: str) -> None:
    print(f"{chr(10) if progress.tty else ''}zipmount: prefetch {text}", file=sys.stderr)


def _raise(exc: OSError) -> None:
    raise exc


def _prefetch_unit(unit: Unit, metadata_only: bool, progress: Progress, limit: RateLimit,
                   stop: threading.Event) -> bool:
    """Read one archive; True if every file of it was read. Raises Vanished if it is gone."""
    try:
        _list_files(unit)
    except OSError as exc:
        if not os.path.lexists(unit.path):
            raise Vanished(unit.path) from None
        _say(progress, f"{unit.path}: {exc.strerror}")
        progress.add(failed=1)
        return False
    if unit.archive and os.path.isdir(unit.path) and not unit.files:
        # What a prefix mount shows for an archive it cannot open (the reason is in its log).
        _say(progress, f"{unit.path}: the archive shows no files (unreadable? see "
                       "`zipmount logs MOUNTPOINT`)")
        progress.add(failed=1)
        return False
    if metadata_only:
        unit.files = [f for f in unit.files if os.path.basename(f) in ZARR_METADATA]
    ok = True
    buffer = bytearray(READ_SIZE)
    for name in unit.files:
        if stop.is_set():
            return False
        try:
            with open(name, "rb", buffering=0) as f:
                while not stop.is_set() and (n := f.readinto(buffer)):
                    progress.add(nbytes=n)
                    limit.took(n)
            progress.add(files=1)
        except OSError as exc:
            if not os.path.lexists(unit.path):
                raise Vanished(unit.path) from None
            ok = False
            progress.add(failed=1)
            _say(progress, f"{name}: {exc.strerror}")
    if stop.is_set():
        return False
    progress.add(archive=unit.archive)
    return ok


def journal_path(paths: list[str], metadata_only: bool) -> Path:
    """Where an interrupted run of the same command keeps what it finished."""
    key = "\0".join([*sorted(os.path.abspath(p) for p in paths), str(metadata_only)])
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "zipmount" / "prefetch" / (hashlib.sha256(key.encode()).hexdigest()[:24]
                                                   + ".done")


def cmd_prefetch(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    suffixes = tuple(s.lower() for s in (args.suffixes or DEFAULT_SUFFIXES))
    for path in args.paths:
        check_on_a_zipmount_mount(path)
    units = find_units(args.paths, suffixes)
    journal = journal_path(args.paths, args.metadata_only)
    done_before: set[str] = set()
    if not args.restart and journal.exists():
        done_before = set(journal.read_text().splitlines())
    todo, skipped = [], 0
    for unit in units:
        if unit.identity() in done_before:
            skipped += 1
        else:
            todo.append(unit)
    journal.parent.mkdir(parents=True, exist_ok=True)
    progress = Progress(sum(u.archive for u in todo), sys.stderr.isatty())
    limit = RateLimit(args.max_rate)
    stop = threading.Event()
    complete = True
    vanished: list[str] = []
    with open(journal, "a" if done_before and not args.restart else "w") as log, \
            ThreadPoolExecutor(args.jobs, thread_name_prefix="prefetch") as pool:
        pending: dict[Future[bool], Unit] = {
            pool.submit(_prefetch_unit, u, args.metadata_only, progress, limit, stop): u
            for u in todo}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    unit = pending.pop(fut)
                    try:
                        read_all = fut.result()
                    except Vanished:
                        read_all = False
                        vanished.append(unit.path)
                        _say(progress, f"{unit.path}: vanished during the run (deleted or "
                                       "replaced on the server?)")
                    identity = unit.identity() if read_all else None
                    if identity is None:
                        complete = False
                    else:
                        log.write(identity + "\n")
                        log.flush()
        except BaseException as exc:  # Ctrl-C, or a bug: the workers stop reading at once
            stop.set()
            for fut in pending:
                fut.cancel()
            if not isinstance(exc, KeyboardInterrupt):
                raise
            if progress.tty:
                print(file=sys.stderr)
            print(f"zipmount: interrupted after {progress.done_archives} of {progress.archives} "
                  "archives; run the same command again to go on", file=sys.stderr)
            return 130
    if progress.tty:
        print(file=sys.stderr)
    if complete:
        journal.unlink(missing_ok=True)
    secs = time.monotonic() - progress.started
    extra = f", {skipped} done before" if skipped else ""
    print(f"prefetched {progress.files} files, {progress.bytes / 2**20:.1f} MiB in {secs:.1f} s "
          f"({progress.done_archives} archives{extra})"
          + (f", {progress.failed} failed" if progress.failed else "")
          + (f", {len(vanished)} vanished" if vanished else ""))
    return 1 if progress.failed or vanished else 0
