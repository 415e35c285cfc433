"""How `zipmount prefetch` splits a tree into archives and the files beside them (any directory
reads the same way as a mount; the command itself, through real mounts:
tests/test_e2e_prefetch_command.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from zipmount.cli.prefetch import find_units

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


def test_files_beside_a_suffix_named_subdirectory_are_units_too(tmp_path):
    """Issue 15 item 10: one archive's tree with a directory named like an archive."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "0.0").write_bytes(b"abc")
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / "nested.zip").mkdir()
    (tmp_path / "nested.zip" / "inner.bin").write_bytes(b"xy")
    units = find_units([str(tmp_path)], (".zip",))
    found = {f for u in units for f in u.files} | {u.path for u in units if not u.files}
    assert found == {str(tmp_path / "data" / "0.0"), str(tmp_path / "readme.txt"),
                     str(tmp_path / "nested.zip")}
    assert [u.archive for u in units if u.path == str(tmp_path / "nested.zip")] == [True]
