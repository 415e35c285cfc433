"""What every contender reads, and the digest the runner compares with the local copy.

Imported by the runner and by ``bench.worker`` in other environments (zarr-python 3), so it needs
only numpy and works with zarr-python 2 and 3 groups alike.
"""

from __future__ import annotations

import hashlib

import numpy as np

OPS = ("windows", "channel", "tiny", "whole")


def digest(value) -> str | None:
    """BLAKE2 of arrays (their bytes), of lists (element-wise) and of anything else (repr)."""
    h = hashlib.blake2b(digest_size=12)
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (list, tuple)):
        for v in value:
            h.update(b"|")
            h.update(str(digest(v)).encode())
    else:
        h.update(repr(value).encode())
    return h.hexdigest()


def make_windows(channels: int, samples: int, count: int, length: int,
                 seed: int = 12345) -> list[tuple[int, int]]:
    """``count`` (channel, offset) pairs, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(0, channels)), int(rng.integers(0, samples - length)))
            for _ in range(count)]


def window_chunks(chunk: int, windows, length: int, array: str = "eeg") -> list[str]:
    """The chunk keys (zarr v2, ``array/ch.ci``) the windows touch."""
    keys = set()
    for ch, off in windows:
        for ci in range(off // chunk, (off + length - 1) // chunk + 1):
            keys.add(f"{array}/{ch}.{ci}")
    return sorted(keys)


def read_windows(g, windows, length: int) -> list:
    a = g["eeg"]
    return [a[ch, off:off + length] for ch, off in windows]


def read_tiny(g) -> list:
    """List the group, read each array and its attributes (the digest covers names and data)."""
    out = []
    for name, arr in sorted(g["tiny"].arrays(), key=lambda t: t[0]):
        dict(arr.attrs)
        out.append((name, arr[:]))
    return out


def run_op(g, op: str, *, windows=None, length: int = 0, channel: int = 0):
    """One read step on an open group: what the runner times."""
    if op == "windows":
        return read_windows(g, windows, length)
    if op == "channel":
        return g["eeg"][channel, :]
    if op == "tiny":
        return read_tiny(g)
    if op == "whole":
        return g["eeg"][:]
    raise ValueError(f"unknown op {op!r}")
