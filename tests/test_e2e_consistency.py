"""Objects replaced, added or deleted while mounted (with --ttl 1).

A reader may see the old version for a while, but every file read must be wholly one version
of the archive (never bytes of two versions mixed), and the new state must show up soon after
the TTL.
"""

from __future__ import annotations

import errno
import io
import os
import time
import zipfile

import numpy as np
import pytest
from support.archives import FIXED_DATE, _zinfo, expected_from_zip

TTL = 1
SETTLE = 20.0  # seconds allowed for the new state to appear (TTL + background revalidation)


def _version(seed: int, names: list[str]) -> bytes:
    """An archive whose members have the same names and dates in every version; `same.bin`
    keeps the same size too (only its bytes differ), the other sizes differ."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            if name == "same.bin":
                data = rng.integers(0, 256, 4 * 1024 * 1024, dtype=np.uint8).tobytes()
            else:
                data = rng.integers(0, 256, 1000 + 997 * seed + len(name), dtype=np.uint8).tobytes()
            zi = _zinfo(name, zipfile.ZIP_STORED)
            assert zi.date_time == FIXED_DATE
            zf.writestr(zi, data)
    return buf.getvalue()


A_NAMES = ["same.bin", "a.txt", "dir/b.txt", "only-in-old.txt"]
B_NAMES = ["same.bin", "a.txt", "dir/b.txt", "only-in-new.txt"]


def _read_versions(mp, old, new):
    """Read every file now visible; each must be wholly the old or the new bytes."""
    seen = {}
    for name in sorted(set(old.files) | set(new.files)):
        try:
            data = (mp / name).read_bytes()
        except FileNotFoundError:
            seen[name] = None
            continue
        if data == old.files.get(name):
            seen[name] = "old"
        elif data == new.files.get(name):
            seen[name] = "new"
        else:
            raise AssertionError(f"{name}: {len(data)} bytes that are neither version "
                                 f"(old {len(old.files.get(name, b''))}, "
                                 f"new {len(new.files.get(name, b''))}): "
                                 f"{_describe_mix(data, old.files.get(name), new.files.get(name))}")
    return seen


def _describe_mix(data: bytes, old: bytes | None, new: bytes | None, block: int = 4096) -> str:
    """Which 4 KiB blocks come from which version, as runs: 'old 0-8191, new 8192-...'."""
    runs: list[list] = []
    for off in range(0, len(data), block):
        piece = data[off : off + block]
        tag = ("old" if old is not None and piece == old[off : off + block] else
               "new" if new is not None and piece == new[off : off + block] else "other")
        if tag == "other" and new is not None and new[off:].startswith(piece):
            tag = "new(truncated)"
        elif tag == "other" and old is not None and old[off:].startswith(piece):
            tag = "old(truncated)"
        if runs and runs[-1][0] == tag:
            runs[-1][2] = off + len(piece) - 1
        else:
            runs.append([tag, off, off + len(piece) - 1])
    return ", ".join(f"{t} {a}-{b}" for t, a, b in runs[:12])


def _wait_for_new(mp, old, new):
    deadline = time.monotonic() + SETTLE
    while True:
        seen = _read_versions(mp, old, new)
        done = all(seen.get(n) == "new" for n in new.files) and all(
            seen.get(n) is None for n in set(old.files) - set(new.files))
        if done:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{SETTLE}s after the object was replaced (ttl {TTL}s) the "
                                 f"mount still shows: {seen}")
        time.sleep(0.5)


@pytest.mark.parametrize("kind", ["single", "prefix"])
def test_replaced_archive_is_never_mixed_and_shows_up(zm, s3, kind):
    """Three replacements in a row; the files are read over and over while each one is
    picked up, so reads land in the window where old and new versions meet."""
    key = f"mut/replace-{kind}/v.zip"
    versions = [expected_from_zip(_version(seed, A_NAMES if seed % 2 else B_NAMES))
                for seed in (1, 2, 3, 4)]
    assert len({len(v.files["same.bin"]) for v in versions}) == 1
    s3.put_bytes("data", key, versions[0].data)
    source = f"s3://data/{key}" if kind == "single" else f"s3://data/mut/replace-{kind}/"
    try:
        with zm.mounted(source, "--ttl", str(TTL)) as h:
            mp = h.mountpoint if kind == "single" else h.mountpoint / "v.zip"
            first = versions[0]
            assert _read_versions(mp, first, first) == {n: "old" for n in first.files}
            for old, new in zip(versions, versions[1:], strict=False):
                # leave only the start of same.bin freshly in the page cache
                with open(mp / "same.bin", "rb") as f:
                    assert f.read(8192) == old.files["same.bin"][:8192]
                s3.put_bytes("data", key, new.data)
                _wait_for_new(mp, old, new)
                top = sorted({n.split("/")[0] for n in new.files})
                assert sorted(os.listdir(mp)) == top
    finally:
        s3.s3.delete_object(Bucket="data", Key=key)


@pytest.mark.parametrize("kind", ["single", "prefix"])
def test_open_file_keeps_its_version(zm, s3, kind):
    """A file opened on the old archive, read on after the mount switched to the new one:
    the rest of its bytes must still be the old ones (or an I/O error), never the new ones."""
    key = f"mut/handle-{kind}/v.zip"
    old = expected_from_zip(_version(1, A_NAMES))
    new = expected_from_zip(_version(2, B_NAMES))
    s3.put_bytes("data", key, old.data)
    source = f"s3://data/{key}" if kind == "single" else f"s3://data/mut/handle-{kind}/"
    far = 3 * 1024 * 1024  # well past any readahead of the first read
    try:
        with zm.mounted(source, "--ttl", str(TTL)) as h:
            mp = h.mountpoint if kind == "single" else h.mountpoint / "v.zip"
            with open(mp / "same.bin", "rb", buffering=0) as f:
                assert f.read(4096) == old.files["same.bin"][:4096]
                s3.put_bytes("data", key, new.data)
                _wait_for_new_file(mp, "a.txt", new)  # the mount now serves the new archive
                f.seek(far)
                try:
                    got = f.read(65536)
                except OSError as exc:
                    assert exc.errno in (errno.EIO, errno.ESTALE), exc
                else:
                    assert got == old.files["same.bin"][far : far + 65536], (
                        "a file opened on the old archive returned "
                        + ("the NEW archive's bytes" if got == new.files["same.bin"][far : far + 65536]
                           else "bytes of neither version")
                        + f" at offset {far} after the object was replaced"
                    )
    finally:
        s3.s3.delete_object(Bucket="data", Key=key)


def _wait_for_new_file(mp, name, new):
    deadline = time.monotonic() + SETTLE
    while True:
        try:
            if (mp / name).read_bytes() == new.files[name]:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{name} still not the new version after {SETTLE}s"
        time.sleep(0.2)


def test_archives_added_and_removed_under_prefix(zm, s3, samples):
    pre = "mut/members/"
    s3.put_bytes("data", pre + "x.zip", samples.small_c.data)
    try:
        with zm.mounted(f"s3://data/{pre}", "--ttl", str(TTL)) as h:
            mp = h.mountpoint
            assert os.listdir(mp) == ["x.zip"]
            s3.put_bytes("data", pre + "y.zip", samples.small_c.data)
            deadline = time.monotonic() + SETTLE
            while sorted(os.listdir(mp)) != ["x.zip", "y.zip"]:
                assert time.monotonic() < deadline, f"new archive not listed: {os.listdir(mp)}"
                time.sleep(0.5)
            name = next(iter(samples.small_c.files))
            assert (mp / "y.zip" / name).read_bytes() == samples.small_c.files[name]
            s3.s3.delete_object(Bucket="data", Key=pre + "x.zip")
            deadline = time.monotonic() + SETTLE
            while (mp / "x.zip").exists() or sorted(os.listdir(mp)) != ["y.zip"]:
                assert time.monotonic() < deadline, f"deleted archive still listed: {os.listdir(mp)}"
                time.sleep(0.5)
    finally:
        for k in ("x.zip", "y.zip"):
            s3.s3.delete_object(Bucket="data", Key=pre + k)
