"""A stand-in for libfuse's ``fuse_file_info``: the fields the operations read and set."""

from __future__ import annotations

from types import SimpleNamespace


def file_info(flags: int = 0) -> SimpleNamespace:
    """What libfuse hands to open/opendir/read/release (flags 0: O_RDONLY)."""
    return SimpleNamespace(flags=flags, fh=0, keep_cache=0, direct_io=0, noflush=0, cache_readdir=0)
