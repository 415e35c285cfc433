"""Where log lines go: stderr (journald), a file, or syslog for a background daemon."""

from __future__ import annotations

import logging
import os
import sys

from ..errors import UsageError


def setup_logging(level: str, log_file: str | None, background: bool = False) -> None:
    """Log to ``log_file``, else to stderr; a background daemon without a file logs to syslog."""
    handler: logging.Handler
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if log_file:
        handler = logging.FileHandler(log_file)
    elif background and os.path.exists("/dev/log"):
        from logging.handlers import SysLogHandler

        handler = SysLogHandler("/dev/log", SysLogHandler.LOG_DAEMON)
        fmt = "zipmount[%(process)d]: %(levelname)s %(name)s: %(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        if os.environ.get("JOURNAL_STREAM"):
            fmt = "%(levelname)s %(name)s: %(message)s"  # journald adds the time
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    try:
        root.setLevel(level)
    except ValueError:
        raise UsageError(f"--log-level {level!r} is not a log level") from None
    for noisy in ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3", "asyncio", "fuse"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
