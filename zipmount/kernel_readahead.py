"""The kernel's read-ahead for a FUSE mount: the ``read_ahead_kb`` of the mount's backing device.

The kernel sends a sequential reader's READs in pieces of the mount's read-ahead window: 128 KiB
by default (``/sys/class/bdi/<major:minor>/read_ahead_kb``), so streaming 512 MiB took 4,096 READ
round trips instead of 512 at 1 MiB. Only root may write it; anyone may read it. READs are also capped at
the session's ``max_pages`` (libfuse 3 asks for 256 pages, 1 MiB), so a window bigger than 1 MiB
arrives as several 1 MiB READs in flight at once. The daemon sets it once the mount answers:
before, the kernel's handling of the INIT reply would cap it at the 128 KiB it proposed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

BDI_ROOT = Path("/sys/class/bdi")


def read_ahead_file(mountpoint: str | os.PathLike[str]) -> Path:
    """The sysfs file holding the read-ahead (KiB) of the file system mounted at ``mountpoint``."""
    dev = os.stat(mountpoint).st_dev
    return BDI_ROOT / f"{os.major(dev)}:{os.minor(dev)}" / "read_ahead_kb"


def read_ahead(mountpoint: str | os.PathLike[str]) -> int | None:
    """The kernel's read-ahead window for ``mountpoint`` in bytes (None: not known here)."""
    try:
        return int(read_ahead_file(mountpoint).read_text()) * 1024
    except (OSError, ValueError):
        return None


def set_read_ahead(mountpoint: str | os.PathLike[str], nbytes: int) -> int | None:
    """Set the read-ahead window of ``mountpoint`` to ``nbytes`` (rounded to KiB) where this
    process may (root); return the window in effect afterwards, in bytes."""
    kib = max(0, nbytes // 1024)
    try:
        path = read_ahead_file(mountpoint)
        path.write_text(f"{kib}\n")
    except OSError as exc:
        log.info("kernel read-ahead of %s left at the kernel's (cannot set it: %s)", mountpoint,
                 exc.strerror or exc)
    return read_ahead(mountpoint)
