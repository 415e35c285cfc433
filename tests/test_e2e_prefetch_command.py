"""`zipmount prefetch` through real mounts of the S3 test server: what it reads, what it reports,
and how it survives archives that vanish or cannot be opened."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import time
import zipfile

import pytest
from support.checks import assert_one_line_error

from zipmount.cli.prefetch import ZARR_METADATA, journal_path

MiB = 1 << 20


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _cohort(s3, prefix: str, count: int, size: int) -> None:
    for i in range(count):
        s3.put_bytes("data", f"{prefix}/rec{i:02d}.rkns",
                     _zip({"signal/0.0": os.urandom(size), ".zattrs": b"{}"}))


def _prefetch(zm, *args) -> subprocess.Popen[str]:
    return subprocess.Popen([str(zm.exe), "prefetch", *map(str, args)], env=zm.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def state_home(zm, monkeypatch):
    """This process computes journal paths as the command does (zm.env()'s state dir)."""
    monkeypatch.setenv("XDG_STATE_HOME", zm.env()["XDG_STATE_HOME"])


def test_files_beside_a_suffix_named_subdirectory_are_read_too(zm, s3):
    files = {"readme.txt": b"read me\n", "data/0.0": os.urandom(5000),
             "nested.zip/inner.bin": os.urandom(3000)}
    s3.put_bytes("data", "prefetch/beside.zip", _zip(files))
    with zm.mounted("s3://data/prefetch/beside.zip") as h:
        r = zm.run("prefetch", h.mountpoint)
    assert r.rc == 0, r.describe()
    total = sum(map(len, files.values())) / MiB
    assert re.search(rf"^prefetched 3 files, {total:.1f} MiB", r.stdout, re.M), r.stdout


def test_metadata_only_lists_every_archive_and_reads_only_its_zarr_metadata(zm, samples):
    archives = (samples.rkns_a, samples.rkns_b, samples.small_c)
    metadata = [data for a in archives for name, data in a.files.items()
                if os.path.basename(name) in ZARR_METADATA]
    assert metadata
    mib = sum(map(len, metadata)) / MiB
    with zm.mounted("s3://data/rec/") as h:
        r = zm.run("prefetch", h.mountpoint, "--metadata-only")
    assert r.rc == 0, r.describe()
    assert re.search(rf"^prefetched {len(metadata)} files, {mib:.1f} MiB in .* \(3 archives\)$",
                     r.stdout, re.M), r.stdout


def test_a_broken_archive_in_a_prefix_mount_is_reported_not_counted(zm):
    with zm.mounted("s3://data/bad/") as h:
        r = zm.run("prefetch", h.mountpoint)
    assert r.rc == 1, r.describe()
    assert "Traceback" not in r.stderr
    for name in ("notzip.zip", "truncated.zip"):
        assert re.search(rf"zipmount: prefetch .*{name}: the archive shows no files", r.stderr), \
            r.stderr
    assert re.search(r"\(0 archives\), 2 failed$", r.stdout, re.M), r.stdout


def test_a_directory_that_is_not_on_a_zipmount_mount_is_refused(zm, tmp_path, state_home):
    plain = tmp_path / "plain"
    (plain / "night1.rkns").mkdir(parents=True)
    (plain / "night1.rkns" / "f.bin").write_bytes(b"x")
    r = zm.run("prefetch", plain)
    assert_one_line_error(r, "is not on a zipmount mount", rc=2)
    assert not journal_path([str(plain)], False).exists(), "a refused run wrote a journal"


def test_an_archive_vanishing_mid_run_is_reported_and_the_others_are_journaled(zm, s3,
                                                                            state_home):
    """Issue 15 item 9: no traceback; the run goes on with the other archives, says which one
    vanished, fails, and its journal keeps the finished ones for the next run."""
    _cohort(s3, "vanish", 6, 512 * 1024)
    with zm.mounted("s3://data/vanish/", "--ttl", "1") as h:
        mp = h.mountpoint
        assert len(os.listdir(mp)) == 6
        journal = journal_path([str(mp)], False)
        proc = _prefetch(zm, mp, "--jobs", "1", "--max-rate", "512KiB")
        deadline = time.monotonic() + 60
        while not (journal.exists() and journal.read_text()):  # it found every archive
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no archive finished in 60 s"
            time.sleep(0.05)
        # The last one read: by then, seconds past the TTL, the mount no longer shows it.
        s3.s3.delete_object(Bucket="data", Key="vanish/rec05.rkns")
        out, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err
        assert proc.returncode == 1, (out, err)
        assert re.search(r"zipmount: prefetch .*rec05\.rkns: vanished during the run", err), err
        assert re.search(r"^prefetched 10 files, 2\.5 MiB .*\(5 archives\), 1 vanished$", out,
                         re.M), out
        done = journal.read_text().splitlines()
        assert sorted(os.path.basename(line.split("\t")[0]) for line in done) == [
            f"rec{i:02d}.rkns" for i in range(5)]
        r = zm.run("prefetch", mp)  # the next run skips what was done
        assert r.rc == 0, r.describe()
        assert "(0 archives, 5 done before)" in r.stdout, r.stdout


def test_an_interrupted_prefetch_goes_on_where_it_stopped(zm, s3, state_home):
    _cohort(s3, "resume", 8, MiB)
    with zm.mounted("s3://data/resume/") as h:
        mp = h.mountpoint
        journal = journal_path([str(mp)], False)
        proc = _prefetch(zm, mp, "--jobs", "1", "--max-rate", "4MiB")
        deadline = time.monotonic() + 60
        while not (journal.exists() and journal.read_text().count("\n") >= 2):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no archive finished in 60 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, (out, err)
        assert "interrupted after" in err and "run the same command again" in err, err
        done = journal.read_text().count("\n")
        assert 2 <= done < 8

        r = zm.run("prefetch", mp, timeout=120)
        assert r.rc == 0, r.describe()
        m = re.search(r"^prefetched (\d+) files, ([\d.]+) MiB in .* \((\d+) archives, "
                      r"(\d+) done before\)$", r.stdout, re.M)
        assert m, r.stdout
        files, mib, archives, before = map(float, m.groups())
        assert before == done and archives == 8 - before
        assert files == 2 * archives and abs(mib - archives) < 0.01
        assert not journal.exists(), "a complete run keeps no journal"

        r = zm.run("prefetch", mp, timeout=120)
        assert "(8 archives)" in r.stdout, r.stdout


def test_a_mount_whose_daemon_is_gone_is_named_with_the_way_out(zm, state_home):
    with zm.mounted("s3://data/rec/") as h:
        h.proc.kill()
        h.proc.wait(timeout=10)
        r = zm.run("prefetch", h.mountpoint / "a.rkns")
        assert_one_line_error(r, rf"the daemon of {re.escape(str(h.mountpoint))} is gone; clean "
                                 rf"it with `zipmount umount {re.escape(str(h.mountpoint))}`")
        assert not journal_path([str(h.mountpoint / "a.rkns")], False).exists()
        assert zm.run("umount", h.mountpoint).rc == 0
