"""Ordinary Unix tools on a real FUSE mount of single archives served by a real S3 server.

Each archive (all stored / mixed deflate+stored / with explicit directory entries) is mounted
once per module; every check compares with what Python's zipfile extracts.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
import threading
from pathlib import Path

import pytest
from support.checks import (
    assert_files_equal,
    assert_tree_matches,
    parse_ls_lR,
    read_tree,
)
from support.mount import run

ARCHIVES = ["stored", "deflated", "explicit"]


@pytest.fixture(scope="module", params=ARCHIVES)
def single(request, zm, samples):
    name = request.param
    expected = getattr(samples, name)
    with zm.mounted(f"s3://data/single/{name}.zip") as handle:
        yield handle.mountpoint, expected, handle


def test_find_lists_every_member_with_exact_size_and_mode(single):
    mp, expected, _ = single
    assert_tree_matches(mp, expected)


def test_implied_and_explicit_directories(single):
    mp, expected, _ = single
    # directories that only exist because a member path goes through them
    for d in ("deep/a/b/c/d/e", "docs/guide", "données", "日本語"):
        st = os.stat(mp / d)
        assert stat.S_ISDIR(st.st_mode), d
    assert sorted(os.listdir(mp / "deep/a/b/c/d/e")) == ["leaf.txt"]
    if expected.explicit_dirs:
        assert (mp / "empty-dir").is_dir() and os.listdir(mp / "empty-dir") == []
    assert set(os.listdir(mp)) == set(expected.children(""))


def test_ls_lR(single):
    mp, expected, _ = single
    r = run(["ls", "-lRnA", "--time-style=+%s", "--quoting-style=literal", str(mp)])
    assert r.rc == 0, r.describe()
    listing = parse_ls_lR(r.stdout, mp)
    want_dirs = {""} | expected.dirs
    assert set(listing) == want_dirs, (sorted(set(listing) ^ want_dirs))
    for d, entries in listing.items():
        children = expected.children(d)
        assert set(entries) == set(children), f"ls of {d!r}: {sorted(entries)} != {sorted(children)}"
        for name, (mode, size) in entries.items():
            path = f"{d}/{name}" if d else name
            if children[name] is None:
                assert mode == stat.filemode(stat.S_IFDIR | expected.modes[path]), (path, mode)
            else:
                assert size == children[name], (path, size, children[name])
                assert mode == stat.filemode(stat.S_IFREG | expected.modes[path]), (path, mode)


def test_cat_every_member(single):
    mp, expected, _ = single
    for name, content in expected.files.items():
        r = run(["cat", str(mp / name)])
        assert r.rc == 0, r.describe()
        assert r.stdout_bytes == content, f"cat {name}: {len(r.stdout_bytes)} vs {len(content)}"


def test_md5sum_every_member(single):
    mp, expected, _ = single
    r = run(["sh", "-c", "find . -type f -print0 | sort -z | xargs -0 md5sum"], cwd=mp)
    assert r.rc == 0, r.describe()
    got = {}
    for line in r.stdout_bytes.decode().splitlines():
        digest, name = line.split("  ", 1)
        got[name.removeprefix("./")] = digest
    want = {n: hashlib.md5(c).hexdigest() for n, c in expected.files.items()}
    assert got == want


def test_cp_r_copies_everything(single, tmp_path):
    mp, expected, _ = single
    dest = tmp_path / "copy"
    r = run(["cp", "-r", str(mp), str(dest)], timeout=120)
    assert r.rc == 0, r.describe()
    files, dirs = read_tree(dest)
    assert_files_equal(files, expected.files, "cp -r result")
    assert dirs == expected.dirs


def test_stat_reports_size_mode_type(single):
    mp, expected, _ = single
    paths = sorted(expected.files) + sorted(expected.dirs)
    r = run(["stat", "-c", "%s|%a|%F|%n", *[str(mp / p) for p in paths]])
    assert r.rc == 0, r.describe()
    lines = r.stdout.splitlines()
    assert len(lines) == len(paths)
    for p, line in zip(paths, lines, strict=True):
        size, mode, ftype, name = line.split("|", 3)
        assert name == str(mp / p)
        assert int(mode, 8) == expected.modes[p], (p, mode)
        if p in expected.files:
            assert int(size) == len(expected.files[p]), (p, size)
            assert ftype in ("regular file", "regular empty file"), (p, ftype)
            assert (ftype == "regular empty file") == (len(expected.files[p]) == 0)
        else:
            assert ftype == "directory", (p, ftype)
    # the root itself is a directory as the archive does not describe it: 0755
    r = run(["stat", "-c", "%a|%F", str(mp)])
    assert r.stdout.strip() == "755|directory", r.describe()


def test_du_apparent_sizes(single):
    mp, expected, _ = single
    r = run(["du", "-ab", str(mp)])
    assert r.rc == 0, r.describe()
    sizes = {}
    for line in r.stdout.splitlines():
        size, path = line.split("\t", 1)
        sizes[os.path.relpath(path, mp)] = int(size)
    for name, content in expected.files.items():
        assert sizes[name] == len(content), name


def test_du_disk_usage_counts_blocks(single):
    """`du` without --apparent-size sums st_blocks: a file's blocks must cover its size."""
    mp, expected, _ = single
    r = run(["du", "-s", "-B1", str(mp)])
    assert r.rc == 0, r.describe()
    used = int(r.stdout.split()[0])
    assert used >= expected.total_file_bytes, (
        f"du says {used} bytes used, files hold {expected.total_file_bytes}: st_blocks too small"
    )
    big = os.stat(mp / "data/big.bin")
    assert big.st_blocks * 512 >= big.st_size, (big.st_blocks, big.st_size)


def test_random_access_reads(single):
    """Seeks inside members (deflated ones too) return the same bytes as zipfile."""
    mp, expected, _ = single
    rnd = random.Random(5)
    for name in ("data/big.bin", "data/big.txt", "docs/guide/intro.md"):
        want = expected.files[name]
        with open(mp / name, "rb", buffering=0) as f:
            offsets = sorted(rnd.randrange(len(want)) for _ in range(12))
            for off in offsets[::-1] + offsets:  # backwards, then forwards
                n = rnd.choice([1, 100, 4096, 70000, 300000])
                f.seek(off)
                assert f.read(n) == want[off : off + n], (name, off, n)
            f.seek(len(want) - 10)
            assert f.read(1000) == want[-10:]
            assert f.read(10) == b""  # at EOF
        # the zarr pattern: ask for size+1, get exactly size
        with open(mp / name, "rb", buffering=0) as f:
            assert f.read(len(want) + 1) == want


def test_missing_names_give_enoent(single):
    mp, _, _ = single
    for p in ("nope", "docs/nope.md", "deep/a/missing/x", "README.txt/child"):
        with pytest.raises(OSError) as ei:
            os.stat(mp / p)
        assert ei.value.errno in (errno.ENOENT, errno.ENOTDIR), (p, ei.value)
    r = run(["cat", str(mp / "nope")])
    assert r.rc != 0 and "No such file or directory" in r.stderr, r.describe()


def test_parallel_readers_get_consistent_bytes(single):
    """Several threads reading different and identical members at once (bounded: 8 threads)."""
    mp, expected, _ = single
    names = ["data/big.bin", "data/big.txt", "data/big.bin", "docs/index.html",
             "data/big.txt", "README.txt", "日本語/テスト.txt", "data/small.bin"]
    results: dict[int, bool] = {}
    errors: list[BaseException] = []

    def work(i: int, name: str) -> None:
        try:
            results[i] = Path(mp / name).read_bytes() == expected.files[name]
        except BaseException as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, n)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert all(results.get(i) for i in range(len(names))), results


def test_executable_bit_kept(single):
    mp, _, _ = single
    st = os.stat(mp / "bin/run.sh")
    assert stat.S_IMODE(st.st_mode) == 0o755
    r = run([str(mp / "bin/run.sh")])
    assert r.rc == 0 and r.stdout == "hello from zip\n", r.describe()


def test_daemon_still_healthy(single):
    """After all of the above, the daemon is alive and logged no traceback."""
    _, _, handle = single
    assert handle.proc.poll() is None, handle.stderr()[-3000:]
    assert "Traceback" not in handle.stderr(), handle.stderr()[-3000:]


def test_a_foreground_mount_prints_nothing_from_libfuse(single):
    """`zipmount mount -f` shows zipmount's own log lines only (libfuse 3.14.0 used to warn
    "Ignoring invalid max threads value 4294967295" at every mount)."""
    mp, _, handle = single
    os.listdir(mp)
    err = handle.stderr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and all(" zipmount." in ln for ln in lines), err
