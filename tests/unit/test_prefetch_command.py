"""`zipmount prefetch` over a directory tree (any directory reads the same way as a mount):
archives found by suffix, read concurrently, resumable after Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from zipmount.cli.prefetch import find_units, journal_path

MiB = 1 << 20


def _cohort(root: Path, archives: int, size: int) -> list[Path]:
    dirs = []
    for i in range(archives):
        d = root / f"site{i % 2}" / f"rec{i:02d}.rkns"
        (d / "signal").mkdir(parents=True)
        (d / "signal" / "0.0").write_bytes(os.urandom(size))
        (d / ".zattrs").write_text("{}")
        dirs.append(d)
    return dirs


def _prefetch(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "zipmount", "prefetch", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}


def test_archives_are_the_directories_named_with_a_suffix_and_nothing_inside_them_is_listed(
        tmp_path):
    dirs = _cohort(tmp_path / "mnt", 5, 10)
    (tmp_path / "mnt" / "site0" / "rec00.rkns" / "nested.zip").mkdir()
    units = find_units([str(tmp_path / "mnt")], (".rkns", ".zip"))
    assert [u.path for u in units] == sorted(str(d) for d in dirs)
    single = find_units([str(dirs[0] / "signal")], (".rkns",))
    assert [u.path for u in single] == [str(dirs[0] / "signal")]


def test_metadata_only_lists_every_archive_and_reads_only_its_zarr_metadata(tmp_path):
    _cohort(tmp_path / "mnt", 4, 1000)
    proc = _prefetch(str(tmp_path / "mnt"), "--metadata-only", env=_env(tmp_path))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    # each archive's .zattrs (2 bytes), never its 1000-byte chunk
    assert re.search(r"^prefetched 4 files, 0\.0 MiB in .* \(4 archives\)$", out, re.M), out


def test_an_interrupted_prefetch_goes_on_where_it_stopped(tmp_path, monkeypatch):
    dirs = _cohort(tmp_path / "mnt", 8, MiB)
    env = _env(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", env["XDG_STATE_HOME"])
    journal = journal_path([str(tmp_path / "mnt")], False)
    args = [str(tmp_path / "mnt"), "--jobs", "1", "--max-rate", "4MiB"]
    proc = _prefetch(*args, env=env)
    deadline = time.monotonic() + 30
    while not (journal.exists() and journal.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no archive finished in 30 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "interrupted after" in err and "run the same command again" in err, err
    done = journal.read_text().count("\n")
    assert 2 <= done < 8

    os.utime(dirs[0], ns=(1, 1))  # an archive that changed since is read again
    proc = _prefetch(*args[:1], env=env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    m = re.search(r"^prefetched (\d+) files, ([\d.]+) MiB in .* \((\d+) archives, (\d+) done before\)$",
                  out, re.M)
    assert m, out
    files, mib, archives, before = map(float, m.groups())
    assert before == done - 1 and archives == 8 - before
    assert files == 2 * archives and abs(mib - archives) < 0.01
    assert not journal.exists(), "a complete run keeps no journal"

    proc = _prefetch(*args[:1], env=env)
    out, _ = proc.communicate(timeout=60)
    assert "(8 archives)" in out, out
