"""Where log lines go (stderr or the journal, or a file), and ``zipmount logs MNT``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import deque

from ..errors import UsageError, ZipmountError


class _Terse(logging.Formatter):
    """``zipmount: error: MESSAGE``, as the command's own errors look."""

    def format(self, record: logging.LogRecord) -> str:
        return f"zipmount: {record.levelname.lower()}: {record.getMessage()}"


def setup_logging(level: str, log_file: str | None, terse: bool = False) -> None:
    """Log to ``log_file``, else to stderr (the journal under systemd; a background daemon always
    has one or the other, see :func:`zipmount.daemon.run_background`)."""
    handler: logging.Handler
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if log_file:
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
        if os.environ.get("JOURNAL_STREAM"):
            fmt = "%(levelname)s %(name)s: %(message)s"  # journald adds the time
    handler.setFormatter(_Terse() if terse else logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    try:
        root.setLevel(level)
    except ValueError:
        raise UsageError(f"--log-level {level!r} is not a log level") from None
    for noisy in ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3", "asyncio", "fuse"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def cmd_logs(args: argparse.Namespace) -> int:
    """``zipmount logs MNT``: where the daemon serving MNT logs, and the last lines there."""
    from ..config import default_log_file
    from ..daemon import mount_state
    from .mount import daemon_stats

    mp = os.path.abspath(args.mountpoint)
    stats = daemon_stats(mp)
    where, pid = stats.get("log"), stats.get("pid")
    if where is None:  # no daemon answers: a background mount's default log may still be there
        where = default_log_file(mp)
        if not os.path.isfile(where):
            state = {"stale": "its daemon is gone", "free": "it is not mounted"}.get(
                mount_state(mp), "no zipmount daemon answers there")
            raise ZipmountError(f"{mp}: {state}, and there is no log at {where}")
    if where in ("journal", "stderr"):
        print(f"the daemon of {mp} (pid {pid}) logs to "
              + (f"the journal: journalctl _PID={pid}" if where == "journal" else "its stderr (-f)"))
        return 0
    if args.path:
        print(where)
        return 0
    try:
        with open(where, errors="replace") as f:
            lines = deque(f, maxlen=max(0, args.lines))
    except OSError as exc:
        raise ZipmountError(f"cannot read the log {where}: {exc.strerror}") from None
    print(f"==> {where} <==")
    sys.stdout.writelines(lines)
    return 0
