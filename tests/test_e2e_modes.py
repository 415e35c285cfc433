"""Permission bits and mtimes as the archive stores them, through a real FUSE mount over the S3
test server (and the in-process filesystem): copies out of the mount are usable, private members
stay private, and mtimes are exactly the entries'.

The archives of a tree are made here with Info-ZIP's ``zip -ry``; its ``unzip`` is the reference.
The rule itself is in zipmount/archive/index/__init__.py's docstring and the README.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from robust.zips import RawMember, ntfs_extra, raw_zip

BUCKET = "data"
PREFIX = f"s3://{BUCKET}/modes/"
OWNER, OTHER = 4321, 4322  # the mount's uid=/gid= and another local user (no passwd entry needed)
T0 = 1_614_834_367  # 2021-03-04 05:06:07 UTC; zip's extended timestamp keeps whole seconds

# path -> (mode, content) for files, (mode, None) for directories; symlinks below
TREE: dict[str, tuple[int, bytes | None]] = {
    "readme.txt": (0o644, b"read me\n"),
    "private.txt": (0o600, b"only for the owner\n"),
    "group.txt": (0o664, b"group may write\n"),
    "run.sh": (0o755, b"#!/bin/sh\necho run\n"),
    "sub": (0o755, None),
    "sub/deep": (0o750, None),
    "sub/deep/file.txt": (0o640, b"deep\n"),
    "closed": (0o700, None),
    "closed/inside.txt": (0o644, b"inside a 0700 directory\n"),
    "emptydir": (0o755, None),
}
LINKS = {"link": "readme.txt", "sub/up": "../run.sh", "dangling": "nowhere"}
# stored -> shown: setuid and setgid dropped (the mount is nosuid anyway), sticky kept
SPECIAL = {"setuid.sh": (0o4755, 0o755), "setgid.sh": (0o2750, 0o750), "sticky": (0o1777, 0o1777)}
NTFS_NS = 1_700_000_021_722_000_000  # ...21.722 s, 100 ns resolution
NTFS_CONTENT = b"an NTFS-timestamped member (0)\n"
NOTES = b"not an archive\n"


def _as_user(uid: int, *cmd: str | os.PathLike) -> subprocess.CompletedProcess:
    """``cmd`` as ``uid`` (group ``uid``, no supplementary groups) under umask 022."""
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           "sh", "-c", 'umask 022 && exec "$@"', "sh", *map(str, cmd)],
                          capture_output=True, text=True, timeout=60, cwd="/")


def _make_tree(root: Path, files: dict[str, tuple[int, bytes | None]],
               links: dict[str, str]) -> None:
    """``files`` and ``links`` under ``root``, each with its mode and its own whole-second mtime."""
    for rel, (mode, content) in sorted(files.items()):
        path = root / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        os.chmod(path, mode)
    for rel, target in links.items():
        os.symlink(target, root / rel)
    # mtimes last, deepest first, so that making a child does not touch its parent's mtime
    names = sorted([*files, *links], key=lambda p: (-p.count("/"), p))
    for i, rel in enumerate(names):
        when = (T0 + 3600 * i) * 10**9
        os.utime(root / rel, ns=(when, when), follow_symlinks=False)


def _zip_ry(src: Path, archive: Path) -> bytes:
    """``zip -ry archive .`` in ``src``: what a user on unix makes."""
    assert shutil.which("zip"), "the zip tool is missing: run scripts/ensure-system-deps.sh"
    subprocess.run(["zip", "-qry", str(archive), "."], cwd=src, check=True)
    return archive.read_bytes()


def _dos_zip() -> bytes:
    """An archive as a DOS/Windows tool writes it: no unix mode, only DOS attributes."""
    dos = {"create_system": 0}
    return raw_zip([
        RawMember(b"docs/", external_attr=0x10, **dos),  # directory attribute
        RawMember(b"docs/report.txt", b"report\n", external_attr=0x20, **dos),  # archive bit
        RawMember(b"docs/readonly.txt", b"read-only\n", external_attr=0x21, **dos),
        RawMember(b"implied/child.txt", b"child\n", external_attr=0x20, **dos),
        # made on unix by a tool that stores no mode (the high half of the attributes is 0)
        RawMember(b"zero.txt", b"no mode stored\n", external_attr=0),
    ])


def snapshot(root: Path, *, link_times: bool = False) -> dict[str, tuple]:
    """Every path below ``root``: (``ls`` mode string, mtime in ns) of files and directories,
    ("link", target[, mtime]) of symlinks."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = os.lstat(path)
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), *([st.st_mtime_ns] if link_times else []))
            else:
                out[rel] = (stat.filemode(st.st_mode), st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def public() -> Iterator[Path]:
    """A directory every local user can reach (pytest's own temp dirs are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="zipmount-modes-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def made(s3, public: Path) -> dict[str, Path]:
    """The source trees, their archives (readable by everyone), all uploaded under PREFIX."""
    src, special = public / "src", public / "special-src"
    src.mkdir()
    special.mkdir()
    _make_tree(src, TREE, LINKS)
    _make_tree(special, {name: (stored, b"#!/bin/sh\n" if "." in name else None)
                         for name, (stored, _) in SPECIAL.items()}, {})
    archives = {"tree.zip": _zip_ry(src, public / "tree.zip"),
                "special.zip": _zip_ry(special, public / "special.zip"),
                "dos.zip": _dos_zip(),
                "ntfs.zip": raw_zip([RawMember(b"ntfs.txt", NTFS_CONTENT,
                                               extra=ntfs_extra(NTFS_NS))])}
    for name, data in archives.items():
        (public / name).write_bytes(data)
        (public / name).chmod(0o644)
        s3.put_bytes(BUCKET, f"modes/{name}", data)
    s3.put_bytes(BUCKET, "modes/notes.txt", NOTES)  # a plain object beside the archives
    return {"src": src, "special": special, "tree.zip": public / "tree.zip"}


@pytest.fixture(scope="module")
def shared(zm, made, public: Path) -> Iterator[Path]:
    """The prefix mounted as a user would share it: allow_other, owned by OWNER."""
    (public / "mp").mkdir()
    with zm.mounted(PREFIX, "-o", f"allow_other,uid={OWNER},gid={OWNER}",
                    mountpoint=public / "mp") as handle:
        yield handle.mountpoint


@pytest.fixture
def owners_dir(public: Path) -> Iterator[Path]:
    """An empty directory of OWNER's."""
    path = Path(tempfile.mkdtemp(prefix="owner-", dir=public))
    os.chown(path, OWNER, OWNER)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def s3opts(s3) -> dict:
    return {"endpoint_url": s3.endpoint_url, "key": s3.access_key, "secret": s3.secret_key,
            "client_kwargs": {"verify": str(s3.ca_bundle), "region_name": s3.region}}


def _in_process(s3opts: dict, key: str, cache: Path):
    return fsspec.filesystem("zipmount", fo=f"{PREFIX}{key}", target_options=s3opts,
                             skip_instance_cache=True, cache_dir=str(cache))


def test_a_cp_a_copy_equals_unzips_extraction_in_modes_mtimes_and_link_targets(
        shared, made, owners_dir):
    copy, unzipped = owners_dir / "copy", owners_dir / "unzipped"
    r = _as_user(OWNER, "cp", "-a", shared / "tree.zip", copy)
    assert r.returncode == 0, r.stderr
    r = _as_user(OWNER, "unzip", "-q", made["tree.zip"], "-d", unzipped)
    assert r.returncode == 0, r.stderr
    source = snapshot(made["src"])
    assert snapshot(unzipped) == source  # the reference restores what was zipped
    assert snapshot(copy) == snapshot(unzipped)
    # unzip leaves a symlink's own mtime alone; the mount shows the stored one, and cp -a keeps it
    links = {p: v for p, v in snapshot(made["src"], link_times=True).items() if v[0] == "link"}
    assert {p: v for p, v in snapshot(copy, link_times=True).items() if v[0] == "link"} == links


def test_a_copy_out_of_the_mount_can_be_removed_and_edited_by_its_non_root_owner(
        shared, owners_dir):
    copy = owners_dir / "copy"
    r = _as_user(OWNER, "cp", "-a", shared / "tree.zip", copy)
    assert r.returncode == 0, r.stderr
    r = _as_user(OWNER, "sh", "-c", 'echo edited >> "$1"', "sh", copy / "sub/deep/file.txt")
    assert r.returncode == 0, r.stderr
    r = _as_user(OWNER, "rm", "-rf", copy)
    assert r.returncode == 0, r.stderr
    assert not copy.exists()


def test_a_private_member_is_refused_to_other_users_and_readable_by_its_owner(shared):
    tree = shared / "tree.zip"
    st = os.stat(tree / "private.txt")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (OWNER, OWNER, 0o600)
    r = _as_user(OWNER, "cat", tree / "private.txt")
    assert (r.returncode, r.stdout.encode()) == (0, TREE["private.txt"][1]), r.stderr
    r = _as_user(OTHER, "cat", tree / "private.txt")
    assert r.returncode != 0 and os.strerror(errno.EACCES) in r.stderr, r
    # allow_other is on: the refusal is the member's mode, not the mount's
    r = _as_user(OTHER, "cat", tree / "readme.txt")
    assert (r.returncode, r.stdout.encode()) == (0, TREE["readme.txt"][1]), r.stderr
    r = _as_user(OTHER, "ls", tree / "closed")
    assert r.returncode != 0 and os.strerror(errno.EACCES) in r.stderr, r


def test_setuid_and_setgid_are_dropped_and_the_sticky_bit_kept(shared):
    for name, (_, shown) in SPECIAL.items():
        assert stat.S_IMODE(os.stat(shared / "special.zip" / name).st_mode) == shown, name


def test_a_dos_made_archive_shows_files_0644_and_directories_0755(shared):
    dos = shared / "dos.zip"
    want = {"": 0o755, "docs": 0o755, "docs/report.txt": 0o644, "docs/readonly.txt": 0o444,
            "implied": 0o755, "implied/child.txt": 0o644, "zero.txt": 0o644}
    got = {rel: stat.S_IMODE(os.stat(dos / rel).st_mode) for rel in want}
    assert got == want
    # the mount's own directories (prefix root, archives) too
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o755


def test_plain_objects_of_the_prefix_and_its_raw_view_are_0644(shared, s3opts, tmp_path):
    for rel in ("notes.txt", ".raw/notes.txt", ".raw/tree.zip"):
        assert stat.S_IMODE(os.stat(shared / rel).st_mode) == 0o644, rel
    r = _as_user(OTHER, "cat", shared / "notes.txt")
    assert (r.returncode, r.stdout.encode()) == (0, NOTES), r.stderr
    assert _in_process(s3opts, "", tmp_path).info("notes.txt")["mode"] == 0o644


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_the_umask_option_masks_every_mode(zm, made, umask):
    with zm.mounted(f"{PREFIX}tree.zip", "-o", f"umask={umask:03o}") as handle:
        mp = handle.mountpoint
        want = {rel: mode & ~umask for rel, (mode, _) in TREE.items()}
        got = {rel: stat.S_IMODE(os.stat(mp / rel).st_mode) for rel in TREE}
        assert got == want
        assert stat.S_IMODE(os.stat(mp).st_mode) == 0o755 & ~umask


def test_an_ntfs_mtime_is_exactly_the_entrys_through_the_mount_and_fsspec(
        shared, s3opts, tmp_path):
    # The old sub-second CRC would have carried this one into the next second.
    assert 722_000_000 + zlib.crc32(NTFS_CONTENT) % 10**9 >= 10**9
    assert os.stat(shared / "ntfs.zip" / "ntfs.txt").st_mtime_ns == NTFS_NS
    fs = _in_process(s3opts, "ntfs.zip", tmp_path)
    assert fs.info("ntfs.txt")["mtime"] == NTFS_NS / 1e9


def test_the_in_process_filesystem_reports_the_modes_the_mount_shows(shared, s3opts, tmp_path):
    stored = {rel: mode for rel, (mode, _) in TREE.items()}
    for key, paths in (("tree.zip", list(TREE)), ("dos.zip", ["docs", "docs/readonly.txt",
                                                               "zero.txt", "implied"])):
        fs = _in_process(s3opts, key, tmp_path / key)
        got = {rel: fs.info(rel)["mode"] for rel in paths}
        shown = {rel: stat.S_IMODE(os.stat(shared / key / rel).st_mode) for rel in paths}
        assert got == shown, key
        if key == "tree.zip":
            assert got == stored


def test_mount_help_says_the_mode_rule(zm):
    r = zm.run("mount", "--help")
    assert r.rc == 0, r.describe()
    text = " ".join(r.stdout.split())
    assert "permission bits the archive stores" in text and "0644" in text and "0755" in text
