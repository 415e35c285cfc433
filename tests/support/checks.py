"""Comparing what a mount shows with what an archive holds, using ordinary tools."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .archives import ArchiveContents
from .mount import ERROR_PREFIX, CmdResult, run


@dataclass
class Entry:
    kind: str  # 'f' or 'd' (or other find %y letters)
    mode: int
    size: int


def find_tree(root: Path) -> dict[str, Entry]:
    """`find ROOT -mindepth 1 -printf ...`: relative path -> Entry."""
    r = run(["find", str(root), "-mindepth", "1", "-printf", r"%y %m %s %P\0"], timeout=120)
    assert r.rc == 0, r.describe()
    out: dict[str, Entry] = {}
    for rec in r.stdout_bytes.split(b"\0"):
        if not rec:
            continue
        kind, mode, size, path = rec.decode().split(" ", 3)
        out[path] = Entry(kind=kind, mode=int(mode, 8), size=int(size))
    return out


def assert_tree_matches(root: Path, expected: ArchiveContents, *, check_modes: bool = True) -> None:
    """The mounted tree under ROOT has exactly the expected files and directories, with exact
    sizes and (optionally) the read-only modes."""
    tree = find_tree(root)
    want = {**{f: "f" for f in expected.files}, **{d: "d" for d in expected.dirs}}
    missing = sorted(set(want) - set(tree))
    extra = sorted(set(tree) - set(want))
    assert not missing and not extra, f"under {root}: missing {missing[:20]}, extra {extra[:20]}"
    wrong_kind = {p: (tree[p].kind, k) for p, k in want.items() if tree[p].kind != k}
    assert not wrong_kind, f"wrong types (got, want): {wrong_kind}"
    wrong_size = {
        p: (tree[p].size, len(c)) for p, c in expected.files.items() if tree[p].size != len(c)
    }
    assert not wrong_size, f"wrong sizes (got, want): {wrong_size}"
    if check_modes:
        wrong_mode = {
            p: (oct(tree[p].mode), oct(m)) for p, m in expected.modes.items()
            if tree[p].mode != m
        }
        assert not wrong_mode, f"wrong modes (got, want): {wrong_mode}"


def read_tree(root: Path) -> tuple[dict[str, bytes], set[str]]:
    """Files (path -> bytes) and directories found under ROOT, via Python's own os calls."""
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            dirs.add(d if rel == "." else f"{rel}/{d}")
        for f in filenames:
            p = f if rel == "." else f"{rel}/{f}"
            files[p] = Path(dirpath, f).read_bytes()
    return files, dirs


def assert_files_equal(got: dict[str, bytes], want: dict[str, bytes], where: str) -> None:
    assert set(got) == set(want), (
        f"{where}: missing {sorted(set(want) - set(got))[:10]}, "
        f"extra {sorted(set(got) - set(want))[:10]}"
    )
    bad = [p for p in want if got[p] != want[p]]
    assert not bad, f"{where}: content differs for {bad[:10]}" + "".join(
        f"\n  {p}: got {len(got[p])} bytes, want {len(want[p])}" for p in bad[:5]
    )


def parse_ls_lR(output: str, root: Path) -> dict[str, dict[str, tuple[str, int]]]:
    """Parse `ls -lRnA --time-style=+%s --quoting-style=literal ROOT`:
    {relative dir: {name: (mode string, size)}}."""
    result: dict[str, dict[str, tuple[str, int]]] = {}
    current: dict[str, tuple[str, int]] | None = None
    root_s = str(root).rstrip("/")
    for line in output.splitlines():
        if not line.strip():
            continue
        if line.endswith(":") and (line[:-1] == root_s or line.startswith(root_s + "/")):
            rel = line[:-1][len(root_s) :].lstrip("/")
            current = result.setdefault(rel, {})
            continue
        if line.startswith("total "):
            continue
        assert current is not None, f"unexpected ls line before a header: {line!r}"
        parts = line.split(maxsplit=6)
        assert len(parts) == 7, f"unparsable ls line: {line!r}"
        mode, _links, _uid, _gid, size, _mtime, name = parts
        current[name] = (mode.rstrip("+."), int(size))
    return result


def assert_one_line_error(res: CmdResult, pattern: str, rc: int | tuple[int, ...] = 1) -> str:
    """The contract for failures: exit code RC, exactly one stderr line, starting with
    'zipmount: error: ', matching PATTERN (case-insensitive), and no traceback."""
    assert "Traceback" not in res.stderr, f"traceback on stderr:\n{res.describe()}"
    rcs = rc if isinstance(rc, tuple) else (rc,)
    assert res.rc in rcs, f"expected exit code {' or '.join(map(str, rcs))}:\n{res.describe()}"
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), (
        f"stderr must be exactly one line starting with {ERROR_PREFIX!r}:\n{res.describe()}"
    )
    assert re.search(pattern, lines[0], re.IGNORECASE), (
        f"error message does not match /{pattern}/i:\n{res.describe()}"
    )
    return lines[0]
