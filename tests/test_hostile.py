"""Hostile and broken archives, and a hostile environment (security).

Archives are generated here, byte by byte where zipfile would refuse to write the lie, and served
from a real moto S3 server through a real FUSE prefix mount. Contract:

- an archive that cannot be indexed (truncated, garbage central directory, not a zip, 0 bytes)
  shows as an empty directory plus one log line, and never affects its siblings;
- a corrupt member (CRC mismatch, corrupt compressed data, decompressed size different from the
  declared one) reads as EIO and is logged, without a traceback;
- an encrypted member is EACCES, an unsupported compression method EIO, both logged;
- names are made safe: relative, no ``..``, no NUL or control characters, components of at most
  255 bytes; duplicates: the last entry keeps the name, earlier ones are ``name (1).ext``...; a
  file and a directory with one name: the directory keeps it, the file is ``name (1)``;
  symlinks are shown as symlinks, never followed by the daemon;
- cp437 and UTF-8 names and the Info-ZIP Unicode Path field (0x7075) are decoded (other code
  pages, links, times, specials and overlaps: tests/test_e2e_fidelity.py).

Security: read-only at every entry point (kernel and daemon), uid/gid/umask honoured,
allow_other only when asked, TLS verification on by default, secrets never in logs, error
messages or command lines, and a warning for a secrets file that others can read.
"""

from __future__ import annotations

import errno
import io
import mmap
import os
import re
import stat
import subprocess
import zipfile
import zlib
from pathlib import Path

import pytest
from robust.faultproxy import fault_proxy
from robust.harness import BUCKET, guarded, peak_rss_bytes, read_file, reset_peak_rss, stack
from robust.s3http import SECRET_KEY
from robust.zips import (
    S_DIR,
    S_LINK,
    RawMember,
    deflate,
    plain_zip,
    random_bytes,
    raw_zip,
    unicode_path_extra,
)
from support.checks import assert_one_line_error
from support.fuseinfo import file_info
from support.mount import pids_with_marker, run

from zipmount.fuse.operations import FuseError

GOOD = {"hello.txt": b"hello, world\n", "data/blob.bin": random_bytes("good", 300_000)}
BOMB_SIZE = 64 * 2**20
LIAR_SIZE = 2**32 - 1
LINKS = {"escape": "/etc/passwd", "up": "../../../../../../etc/shadow", "rel": "hello.txt"}


def _nested_zip(depth: int) -> bytes:
    inner = plain_zip({"core.txt": b"the middle\n"})
    for i in range(depth):
        inner = plain_zip({f"level{i}.zip": inner, f"pad{i}.zip": inner})
    return inner


def hostile_archives() -> dict[str, bytes]:
    good = plain_zip(GOOD)
    a: dict[str, bytes] = {"good.zip": good}
    a["truncated.zip"] = good[: len(good) // 2]
    members = [RawMember(b"x.txt", b"x" * 100), RawMember(b"y.txt", b"y" * 100, method=8)]
    cd_len = len(raw_zip(members)) - raw_zip(members).index(b"PK\x01\x02") - 22
    a["garbage-cd.zip"] = raw_zip(members, cd_override=random_bytes("cd", cd_len))
    a["notzip.zip"] = b"%PDF-1.7 this is not a zip\n" + random_bytes("nz", 20_000)
    a["empty.zip"] = b""
    a["crc.zip"] = raw_zip([
        RawMember(b"ok.txt", b"fine\n" * 50, method=8),
        RawMember(b"bad.txt", b"corrupted?\n" * 400, method=8, crc=0x12345678),
    ])
    a["corrupt.zip"] = raw_zip([
        RawMember(b"deflate.bin", b"a" * 1000, method=8, payload=b"\xff" * 64),
        RawMember(b"bzip2.bin", b"a" * 1000, method=12, payload=b"BZh9" + b"\x00" * 60),
        RawMember(b"lzma.bin", b"a" * 1000, method=14, payload=b"\x09\x14\x05\x00" + b"\xff" * 60),
    ])
    a["bomb.zip"] = raw_zip([
        RawMember(b"zeros.bin", payload=deflate(b"\0" * BOMB_SIZE, 9), method=8,
                  crc=zlib.crc32(b"\0" * BOMB_SIZE), file_size=BOMB_SIZE),
        RawMember(b"liar.bin", b"tiny" * 250, method=8, file_size=LIAR_SIZE),
        RawMember(b"nested.zip", _nested_zip(4)),
    ])
    a["sizes.zip"] = raw_zip([
        RawMember(b"shorter.bin", b"s" * 1000, method=8, file_size=5000),  # CRC of the 1000
        RawMember(b"longer.bin", b"l" * 5000, method=8, file_size=1000),
        RawMember(b"stored.bin", b"t" * 1000, method=0, file_size=3000),
        RawMember(b"fine.bin", b"f" * 1000, method=8),
    ])
    deep = b"/".join([b"d" * 40] * 60) + b"/deep.txt"  # 2.5 KB path
    a["names.zip"] = raw_zip([RawMember(n, c) for n, c in [
        (b"../../etc/passwd", b"not the real passwd\n"),
        (b"/abs/file.txt", b"absolute\n"),
        (b"a/../../b.txt", b"dotdot\n"),
        (b"nul\x00hidden.txt", b"nul\n"),
        (b"ctl\x01\x1b[31m\x7f.txt", b"control\n"),
        (b"L" * 4096, b"long component\n"),
        (deep, b"deep\n"),
        (b"dup.txt", b"first\n"),
        (b"dup.txt", b"second\n"),
        (b"same", b"i am a file\n"),
        (b"same/child.txt", b"child\n"),
        (b"other/x.txt", b"x\n"),
        (b"other", b"file after dir\n"),
        (b"./dot/./x.txt", b"dot\n"),
        (b"///", b"nothing\n"),
        (b"..", b"nothing\n"),
    ]] + [RawMember(b"back\\slash\\file.txt", b"backslash\n", create_system=0,  # DOS: a separator
                    external_attr=0x20)])
    a["links.zip"] = raw_zip([
        *[RawMember(k.encode(), v.encode(), external_attr=S_LINK) for k, v in LINKS.items()],
        RawMember(b"hello.txt", b"hello\n"),
        RawMember(b"dirlink", b"/etc", external_attr=S_LINK),
        RawMember(b"dirlink/passwd", b"archive's own passwd\n"),
        RawMember(b"realdir/", b"", external_attr=S_DIR),
    ])
    a["encrypted.zip"] = raw_zip([
        RawMember(b"secret.txt", payload=random_bytes("enc", 112), plain=b"?" * 100, flags=1),
        RawMember(b"public.txt", b"public\n"),
    ])
    a["methods.zip"] = raw_zip([
        RawMember(b"zstd.bin", payload=random_bytes("zstd", 200), plain=b"z" * 500, method=93),
        RawMember(b"implode.bin", payload=random_bytes("imp", 200), plain=b"i" * 500, method=6),
        RawMember(b"stored.txt", b"stored\n"),
    ])
    ok = io.BytesIO()
    with zipfile.ZipFile(ok, "w") as zf:
        for method in (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA, zipfile.ZIP_DEFLATED):
            zf.writestr(zipfile.ZipInfo(f"m{method}.txt"), b"supported %d\n" % method * 500,
                        compress_type=method)
    a["supported.zip"] = ok.getvalue()
    upath_raw = b"fallback-name.txt"
    a["encodings.zip"] = raw_zip([
        RawMember(b"caf\x82 \x9a.txt", b"cp437\n"),  # cp437: e-acute, U-umlaut
        RawMember("日本語/テスト.txt".encode(), b"utf8\n", flags=0x800),
        RawMember(upath_raw, b"upath\n", extra=unicode_path_extra(upath_raw, "ünïcødé.txt")),
        RawMember(b"stale-upath.txt", b"stale\n",
                  extra=unicode_path_extra(b"something else", "ignored.txt")),
    ])
    return a


ARCHIVES = hostile_archives()
BROKEN = ["truncated.zip", "garbage-cd.zip", "notzip.zip", "empty.zip"]


@pytest.fixture(scope="module")
def st(tmp_path_factory):
    with stack(tmp_path_factory.mktemp("hostile")) as s:
        for name, data in ARCHIVES.items():
            s.put(f"hostile/{name}", data)
        yield s


@pytest.fixture(scope="module")
def hm(st):
    """One prefix mount over every hostile archive and a good one."""
    with st.mounted("hostile/", "--ttl", "3600", "--timeout", "10", "--cache-size", "100MiB",
                    "--log-level", "INFO") as h:
        yield h
        log = h.stderr()
        assert "Traceback" not in log, f"a hostile archive caused a traceback:\n{log[-4000:]}"
        assert h.proc.poll() is None, "the daemon died"


def _errno(fn) -> int | None:
    out = guarded(fn, 30)
    return out.error


def _logged(h, *patterns: str) -> None:
    log = h.stderr()
    for p in patterns:
        assert re.search(p, log), f"log lacks /{p}/:\n{log[-3000:]}"


# -- broken archives ------------------------------------------------------------------------------


def test_broken_archives_are_empty_dirs_and_never_affect_siblings(hm):
    mp = hm.mountpoint
    assert sorted(os.listdir(mp)) == sorted(ARCHIVES)
    for name in BROKEN:
        assert stat.S_ISDIR(os.stat(mp / name).st_mode), name
        assert os.listdir(mp / name) == [], name
        assert _errno(lambda n=name: os.stat(mp / n / "anything")) == errno.ENOENT
        _logged(hm, rf"ERROR .*cannot open archive {BUCKET}/hostile/{re.escape(name)}")
    assert read_file(mp / "good.zip" / "hello.txt") == GOOD["hello.txt"]
    assert read_file(mp / "good.zip" / "data" / "blob.bin") == GOOD["data/blob.bin"]


def test_crc_mismatch_in_deflated_member_is_eio_and_logged(hm):
    mp = hm.mountpoint / "crc.zip"
    assert read_file(mp / "ok.txt") == b"fine\n" * 50
    assert _errno(lambda: read_file(mp / "bad.txt")) == errno.EIO
    _logged(hm, r"WARNING .*bad\.txt.*CRC")


@pytest.mark.parametrize("name", ["deflate.bin", "bzip2.bin", "lzma.bin"])
def test_corrupt_compressed_data_is_eio_and_logged(hm, name):
    assert _errno(lambda: read_file(hm.mountpoint / "corrupt.zip" / name)) == errno.EIO
    _logged(hm, rf"WARNING .*{re.escape(name)}")


def test_declared_size_different_from_actual_is_eio(hm):
    mp = hm.mountpoint / "sizes.zip"
    assert os.stat(mp / "shorter.bin").st_size == 5000
    for name in ("shorter.bin", "longer.bin", "stored.bin"):
        assert _errno(lambda n=name: read_file(mp / n)) == errno.EIO, name
        _logged(hm, rf"WARNING .*{re.escape(name)}")
    assert read_file(mp / "fine.bin") == b"f" * 1000


def test_zip_bomb_streams_in_bounded_memory(hm):
    mp = hm.mountpoint / "bomb.zip"
    pid = hm.pid
    assert os.stat(mp / "zeros.bin").st_size == BOMB_SIZE
    reset_peak_rss(pid)
    before = peak_rss_bytes(pid)
    zeros = bytes(1 << 20)
    with open(mp / "zeros.bin", "rb") as f:
        total = 0
        while chunk := f.read(1 << 20):
            assert chunk == zeros[: len(chunk)]
            total += len(chunk)
        assert total == BOMB_SIZE
        f.seek(BOMB_SIZE - 100_000)  # a jump backwards restarts or spills, both bounded
        f.seek(BOMB_SIZE // 3)
        assert f.read(4096) == bytes(4096)
    grew = peak_rss_bytes(pid) - before
    assert grew < 48 * 2**20, f"daemon grew {grew / 2**20:.0f} MiB decompressing a bomb"


def test_lying_declared_size_reads_as_eio(hm):
    mp = hm.mountpoint / "bomb.zip"
    assert os.stat(mp / "liar.bin").st_size == LIAR_SIZE
    assert _errno(lambda: read_file(mp / "liar.bin", 0, 1 << 20)) == errno.EIO
    _logged(hm, r"WARNING .*liar\.bin")


def test_nested_zips_are_plain_files(hm):
    mp = hm.mountpoint / "bomb.zip"
    st_ = os.lstat(mp / "nested.zip")
    assert stat.S_ISREG(st_.st_mode)
    data = read_file(mp / "nested.zip")
    assert data == _nested_zip(4)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # it is a zip, shown as bytes only
        assert sorted(zf.namelist()) == ["level3.zip", "pad3.zip"]


# -- names ------------------------------------------------------------------------------------


def test_hostile_names_are_made_safe(hm):
    mp = hm.mountpoint / "names.zip"
    files: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(mp):
        for n in dirnames + filenames:
            assert len(n.encode()) <= 255 and "\0" not in n, n
            assert not any(ord(c) < 32 or ord(c) == 127 for c in n), repr(n)
            assert n not in (".", "..")
            full = os.path.join(dirpath, n)
            assert os.path.realpath(full).startswith(str(mp) + "/"), full
        for n in filenames:
            full = os.path.join(dirpath, n)
            files[os.path.relpath(full, mp)] = read_file(full)
    long_name = next(n for n in os.listdir(mp) if n.startswith("LLLL"))
    deep = "/".join(["d" * 40] * 60) + "/deep.txt"
    assert files == {
        "etc/passwd": b"not the real passwd\n",
        "abs/file.txt": b"absolute\n",
        "a/b.txt": b"dotdot\n",
        "back/slash/file.txt": b"backslash\n",
        "nul": b"nul\n",
        "ctl__[31m_.txt": b"control\n",
        long_name: b"long component\n",
        deep: b"deep\n",
        "dup.txt": b"second\n",
        "dup (1).txt": b"first\n",
        "same/child.txt": b"child\n",
        "same (1)": b"i am a file\n",
        "other/x.txt": b"x\n",
        "other (1)": b"file after dir\n",
        "dot/x.txt": b"dot\n",
    }
    assert os.path.isdir(mp / "same") and os.path.isdir(mp / "other")
    _logged(hm, r"duplicate name 'dup\.txt'", r"file and a directory named 'same'")


def test_symlinks_are_shown_never_followed(hm):
    mp = hm.mountpoint / "links.zip"
    for name, target in LINKS.items():
        st_ = os.lstat(mp / name)
        assert stat.S_ISLNK(st_.st_mode), name
        assert os.readlink(mp / name) == target
        assert st_.st_size == len(target)  # the link's own size, not its target's
    # a symlink that is also a directory of the archive is the directory: no path leads
    # through a link inside the daemon; the link is still there, renamed
    assert stat.S_ISDIR(os.lstat(mp / "dirlink").st_mode)
    assert os.readlink(mp / "dirlink (1)") == "/etc"
    assert read_file(mp / "dirlink" / "passwd") == b"archive's own passwd\n"
    assert os.readlink(mp / "rel") == "hello.txt"
    assert read_file(mp / "rel") == b"hello\n"  # the kernel follows it, inside the mount
    assert sorted(os.listdir(mp)) == sorted([*LINKS, "hello.txt", "dirlink", "dirlink (1)",
                                             "realdir"])


def test_name_encodings(hm):
    mp = hm.mountpoint / "encodings.zip"
    assert sorted(os.listdir(mp)) == sorted(["café Ü.txt", "日本語", "ünïcødé.txt",
                                             "stale-upath.txt"])
    assert read_file(mp / "café Ü.txt") == b"cp437\n"
    assert read_file(mp / "日本語" / "テスト.txt") == b"utf8\n"
    assert read_file(mp / "ünïcødé.txt") == b"upath\n"
    assert read_file(mp / "stale-upath.txt") == b"stale\n"


# -- members that cannot be read ------------------------------------------------------------------


def test_encrypted_member_is_eacces_and_logged(hm):
    mp = hm.mountpoint / "encrypted.zip"
    assert _errno(lambda: read_file(mp / "secret.txt")) == errno.EACCES
    _logged(hm, r"secret\.txt.*encrypted")
    assert read_file(mp / "public.txt") == b"public\n"


def test_unsupported_compression_is_eio_and_logged(hm):
    mp = hm.mountpoint / "methods.zip"
    for name, method in (("zstd.bin", 93), ("implode.bin", 6)):
        assert _errno(lambda n=name: read_file(mp / n)) == errno.EIO, name
        _logged(hm, rf"{re.escape(name)}.*unsupported compression method {method}")
    assert read_file(mp / "stored.txt") == b"stored\n"
    for method in (12, 14, 8):
        assert read_file(hm.mountpoint / "supported.zip" / f"m{method}.txt") == \
            b"supported %d\n" % method * 500


# -- security ---------------------------------------------------------------------------------


def _as_user(uid: int, gid: int, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                           *cmd], capture_output=True, text=True, timeout=30)


def _mount_options(mp: Path) -> set[str]:
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == str(mp):
                return set(fields[3].split(","))
    raise AssertionError(f"{mp} not in /proc/mounts")


WRITE_ATTEMPTS = {
    "open O_WRONLY": lambda p: os.open(p / "hello.txt", os.O_WRONLY),
    "open O_RDWR": lambda p: os.open(p / "hello.txt", os.O_RDWR),
    "open O_TRUNC": lambda p: os.open(p / "hello.txt", os.O_RDONLY | os.O_TRUNC),
    "open O_APPEND": lambda p: os.open(p / "hello.txt", os.O_WRONLY | os.O_APPEND),
    "create": lambda p: os.open(p / "new.txt", os.O_WRONLY | os.O_CREAT, 0o644),
    "mkdir": lambda p: os.mkdir(p / "newdir"),
    "rmdir": lambda p: os.rmdir(p / "data"),
    "unlink": lambda p: os.unlink(p / "hello.txt"),
    "rename": lambda p: os.rename(p / "hello.txt", p / "renamed.txt"),
    "symlink": lambda p: os.symlink("hello.txt", p / "link"),
    "link": lambda p: os.link(p / "hello.txt", p / "hard"),
    "chmod": lambda p: os.chmod(p / "hello.txt", 0o777),
    "chown": lambda p: os.chown(p / "hello.txt", 1, 1),
    "utime": lambda p: os.utime(p / "hello.txt", (0, 0)),
    "truncate": lambda p: os.truncate(p / "hello.txt", 0),
    "setxattr": lambda p: os.setxattr(p / "hello.txt", "user.x", b"1"),
    "removexattr": lambda p: os.removexattr(p / "hello.txt", "user.x"),
    "mkfifo": lambda p: os.mkfifo(p / "fifo"),
    "mknod": lambda p: os.mknod(p / "node", stat.S_IFREG | 0o644),
}


def test_read_only_at_every_kernel_entry_point(st, hm):
    mp = hm.mountpoint / "good.zip"
    before = st.s3.s3.list_objects_v2(Bucket=BUCKET, Prefix="hostile/")["Contents"]
    for what, attempt in WRITE_ATTEMPTS.items():
        out = guarded(lambda a=attempt: a(mp), 30)
        assert out.error in (errno.EROFS, errno.EPERM, errno.EACCES), f"{what}: {out}"
        if isinstance(out.value, int):
            os.close(out.value)
    fd = os.open(mp / "hello.txt", os.O_RDONLY)
    try:
        with pytest.raises(PermissionError):
            mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_WRITE)
    finally:
        os.close(fd)
    assert not os.access(mp / "hello.txt", os.W_OK)
    assert "ro" in _mount_options(hm.mountpoint)
    assert read_file(mp / "hello.txt") == GOOD["hello.txt"]
    after = st.s3.s3.list_objects_v2(Bucket=BUCKET, Prefix="hostile/")["Contents"]
    assert [(o["Key"], o["ETag"]) for o in after] == [(o["Key"], o["ETag"]) for o in before]


def test_read_only_at_every_daemon_entry_point(tmp_path):
    """The operations object refuses writes itself (a kernel without the ro flag, or a future
    fusepy, must not reach a write path): every write-like operation answers EROFS."""
    from zipmount.config import CacheConfig
    from zipmount.engine import Engine
    from zipmount.fuse.operations import ZipOperations
    from zipmount.source import StorageOptions

    path = tmp_path / "a.zip"
    path.write_bytes(ARCHIVES["good.zip"])
    engine = Engine(StorageOptions(), CacheConfig(memory=8 << 20))
    ops = ZipOperations(engine.open_tree(str(path)), engine.stats)
    calls = {
        "chmod": ("/hello.txt", 0o777), "chown": ("/hello.txt", 1, 1),
        "create": ("/new", 0o644), "link": ("/hard", "/hello.txt"), "mkdir": ("/d", 0o755),
        "mknod": ("/n", 0o644, 0), "rename": ("/hello.txt", "/x"), "rmdir": ("/data",),
        "setxattr": ("/hello.txt", "user.x", b"1", 0), "removexattr": ("/hello.txt", "user.x"),
        "symlink": ("/l", "hello.txt"), "truncate": ("/hello.txt", 0),
        "unlink": ("/hello.txt",), "utimens": ("/hello.txt", None),
        "write": ("/hello.txt", b"x", 0, 1),
    }
    for name, args in calls.items():
        with pytest.raises(FuseError) as ei:
            getattr(ops, name)(*args)
        assert ei.value.errno == errno.EROFS, name
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND,
                  os.O_WRONLY | os.O_CREAT):
        with pytest.raises(FuseError) as ei:
            ops.open("/hello.txt", file_info(flags))
        assert ei.value.errno == errno.EROFS, oct(flags)
    with pytest.raises(FuseError) as ei:
        ops.access("/hello.txt", os.W_OK)
    assert ei.value.errno == errno.EROFS
    fi = file_info(os.O_RDONLY)  # the daemon runs mfusepy with raw_fi: open/read/release get it
    ops.open("/hello.txt", fi)
    assert ops.read("/hello.txt", 100, 0, fi) == GOOD["hello.txt"]
    ops.release("/hello.txt", fi)
    assert path.read_bytes() == ARCHIVES["good.zip"]
    engine.close()


@pytest.fixture
def public_mp():
    """A mountpoint other users can reach (pytest's own temp dirs are 0700)."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="zipmount-robust-", dir="/tmp"))
    base.chmod(0o755)
    (base / "mp").mkdir()
    yield base / "mp"
    shutil.rmtree(base, ignore_errors=True)


def test_uid_gid_umask_and_allow_other(st, public_mp):
    uid, gid, other = 4321, 4322, 5555
    with st.mounted("hostile/good.zip", "-o", f"uid={uid},gid={gid},umask=027,allow_other",
                    mountpoint=public_mp) as h:
        mp = h.mountpoint
        assert "allow_other" in _mount_options(mp)
        for rel, want in (("hello.txt", 0o640), ("data", 0o750), ("", 0o750)):
            s = os.stat(mp / rel) if rel else os.stat(mp)
            assert (s.st_uid, s.st_gid) == (uid, gid), rel
            assert stat.S_IMODE(s.st_mode) == want, (rel, oct(s.st_mode))
        # the kernel enforces the modes (default_permissions): owner and group read, others not
        assert _as_user(uid, other, "cat", str(mp / "hello.txt")).stdout == "hello, world\n"
        assert _as_user(other, gid, "cat", str(mp / "hello.txt")).stdout == "hello, world\n"
        r = _as_user(other, other, "cat", str(mp / "hello.txt"))
        assert r.returncode != 0 and "Permission denied" in r.stderr, r


def test_allow_other_only_when_asked(st, public_mp):
    with st.mounted("hostile/good.zip", mountpoint=public_mp) as h:
        mp = h.mountpoint
        assert "allow_other" not in _mount_options(mp)
        assert "ro" in _mount_options(mp)
        r = _as_user(5555, 5555, "stat", str(mp / "hello.txt"))
        assert r.returncode != 0 and "Permission denied" in r.stderr, r
        s = os.stat(mp / "hello.txt")
        assert (s.st_uid, s.st_gid) == (os.getuid(), os.getgid())


def test_tls_verification_on_by_default(st, tmp_path):
    import ssl

    from support.tlsgen import make_ca, make_server_cert

    ca = make_ca(tmp_path / "ca", "robust test CA")
    cert = make_server_cert(ca, tmp_path / "server")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert_path, cert.key_path)
    with fault_proxy(st.s3.port, tls=ctx) as tls_proxy:
        res = st.zm.run("mount", f"s3://{BUCKET}/hostile/good.zip", st.zm.mountpoint(),
                        "--endpoint-url", tls_proxy.url, "--timeout", "10",
                        "--cache-dir", st.zm.new_dir("cache-"))
        assert_one_line_error(res, r"tls|ssl|certificate")
        assert tls_proxy.tls_failures >= 1 and not tls_proxy.log(), "no request may pass"
        with st.zm.mounted(f"s3://{BUCKET}/hostile/good.zip", "--endpoint-url", tls_proxy.url,
                           "--ca-bundle", str(ca.cert_path), storage=False) as h:
            assert read_file(h.mountpoint / "hello.txt") == GOOD["hello.txt"]


def _secret_free(text: str, where: str) -> None:
    assert SECRET_KEY not in text, f"the secret key appears in {where}"
    assert SECRET_KEY[:12] not in text, f"part of the secret key appears in {where}"


def test_secrets_never_in_logs_errors_or_process_titles(st, tmp_path):
    cfg = tmp_path / "zipmount.yaml"
    cfg.write_text(f"storage:\n  endpoint_url: {st.proxy.url}\n  access_key: {st.zm.access_key}\n"
                   f"  secret_key: {SECRET_KEY}\n  timeout: 5\n")
    cfg.chmod(0o600)
    env = st.zm.env(access_key=None, secret_key=None)
    with st.zm.mounted(f"s3://{BUCKET}/hostile/", "--config", str(cfg), "--log-level", "DEBUG",
                       "--ttl", "1", env=env, storage=False) as h:
        mp = h.mountpoint
        assert read_file(mp / "good.zip" / "hello.txt") == GOOD["hello.txt"]
        assert _errno(lambda: read_file(mp / "crc.zip" / "bad.txt")) == errno.EIO
        os.listdir(mp / "truncated.zip")
        st.proxy.down()  # errors from the network layer, with DEBUG logging
        try:
            _errno(lambda: read_file(mp / "good.zip" / "data" / "blob.bin"))
        finally:
            st.proxy.up()
        with open(f"/proc/{h.pid}/cmdline", "rb") as f:
            _secret_free(f.read().decode(errors="replace"), "/proc/PID/cmdline")
        ps = run(["ps", "-eo", "pid,args", "--width", "4000"])
        _secret_free(ps.stdout, "ps output")
        log = h.stderr()
        assert " INFO " in log and " WARNING " in log, log[-2000:]
        assert "Traceback" not in log
    _secret_free(h.stderr(), "the DEBUG log")
    # a failed mount's one-line error, credentials in the environment this time
    env = st.zm.env(secret_key=SECRET_KEY)
    res = st.zm.run("mount", f"s3://{BUCKET}/hostile/none.zip", st.zm.mountpoint(),
                    "--endpoint-url", st.proxy.url, "--log-level", "DEBUG", env=env)
    assert res.rc != 0
    _secret_free(res.stderr + res.stdout, "a failed mount's error")
    # background mode: the detached daemon's command line, and its log file
    log_file = tmp_path / "bg.log"
    with st.zm.mounted_bg(f"s3://{BUCKET}/hostile/good.zip", "--config", str(cfg),
                          "--log-level", "DEBUG", "--log-file", str(log_file), env=env,
                          storage=False) as (res, mp):
        assert res.rc == 0, res.describe()
        assert read_file(mp / "hello.txt") == GOOD["hello.txt"]
        pids = pids_with_marker(mp)
        assert pids, "no daemon process found for the background mount"
        for pid in pids:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                _secret_free(f.read().decode(errors="replace"), "the daemon's command line")
        _secret_free(res.stderr + res.stdout, "zipmount mount's output")
    _secret_free(log_file.read_text(errors="replace"), "the background daemon's log file")


def test_secrets_file_readable_by_others_warns(st, tmp_path):
    for kind in ("config", "env"):
        path = tmp_path / f"secrets-{kind}"
        if kind == "config":
            path.write_text(f"storage:\n  endpoint_url: {st.proxy.url}\n"
                            f"  access_key: {st.zm.access_key}\n  secret_key: {SECRET_KEY}\n")
            args = ["--config", str(path)]
        else:
            path.write_text(f"STORAGE_ACCESS_KEY={st.zm.access_key}\n"
                            f"STORAGE_SECRET_KEY={SECRET_KEY}\n")
            args = ["--env-file", str(path), "--endpoint-url", st.proxy.url]
        env = st.zm.env(access_key=None, secret_key=None)
        for mode, warns in ((0o644, True), (0o640, True), (0o600, False)):
            path.chmod(mode)
            res = st.zm.run("ls", f"s3://{BUCKET}/hostile/good.zip", *args, env=env)
            assert res.rc == 0, res.describe()
            assert "hello.txt" in res.stdout
            warned = re.search(r"readable by other users", res.stderr) is not None
            assert warned == warns, f"{kind} file mode {oct(mode)}:\n{res.describe()}"
            if warned:
                assert str(path) in res.stderr
            _secret_free(res.stderr + res.stdout, f"zipmount ls output ({kind})")
