"""What a user meets at the terminal (issue 17), through the real CLI and the real S3 server:
each failure is its exit code, one line on stderr, no traceback, nothing mounted or written;
each success says what it did."""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from support.checks import assert_one_line_error
from support.mount import cleanup, is_mounted, pids_with_marker, wait_gone


def _config(zm, mounts: list[tuple[str, Path]]) -> Path:
    d = zm.new_dir("cfg-")
    doc = {"storage": {"endpoint_url": zm.endpoint_url, "ca_bundle": str(zm.ca_bundle)},
           "cache": {"dir": str(d / "cache")},
           "mounts": [{"source": s, "mountpoint": str(m)} for s, m in mounts]}
    (d / "zm.yaml").write_text(yaml.safe_dump(doc))
    return d / "zm.yaml"


def _nothing_written(mp: Path, cache: Path | None = None) -> None:
    assert not is_mounted(mp), f"{mp} mounted after a failure"
    assert os.listdir(mp) == [], f"{mp} not left empty"
    if cache is not None:
        assert not cache.exists() or not any(cache.rglob("*.run")), "a failure cached data"


# ----- umount of one mount among several ------------------------------------------------------
def test_umount_of_one_mount_returns_while_the_daemon_serves_the_other(zm, samples):
    """`umount MP` waits for the daemon to exit only if MP was its last mount (it used to wait
    15 s for a daemon that goes on serving its other mounts): a 12 s bound on the command."""
    mp1, mp2 = zm.mountpoint(), zm.mountpoint()
    cfg = _config(zm, [("s3://data/single/stored.zip", mp1), ("s3://data/rec/c.zip", mp2)])
    try:
        r = zm.run("mount", "--config", cfg)
        assert r.rc == 0, r.describe()
        pids = pids_with_marker(cfg)
        assert pids
        r = zm.run("umount", mp1, timeout=12)
        assert r.rc == 0, r.describe()
        assert not is_mounted(mp1) and is_mounted(mp2)
        assert (mp2 / "README.txt").read_bytes() == samples.small_c.files["README.txt"]
        assert wait_gone(pids, 0.5) == pids, "the daemon stopped though it still has a mount"
        r = zm.run("umount", mp2, timeout=12)
        assert r.rc == 0, r.describe()
        assert wait_gone(pids, 2) == [], "daemon still running 2 s after its last umount"
        # the same for `umount --config` of both
        r = zm.run("mount", "--config", cfg)
        assert r.rc == 0, r.describe()
        r = zm.run("umount", "--config", cfg, timeout=12)
        assert r.rc == 0, r.describe()
        assert not is_mounted(mp1) and not is_mounted(mp2)
        assert wait_gone(pids_with_marker(cfg), 2) == []
    finally:
        assert cleanup([mp1, mp2], [cfg]) == []


# ----- the endpoint is checked live, also with a warm cache ---------------------------------------
@pytest.fixture(scope="module")
def warm_cache(zm):
    """A cache dir that holds s3://data/single/stored.zip's view and index (mounted once)."""
    cache = zm.new_dir("warm-")
    with zm.mounted("s3://data/single/stored.zip", "--cache-dir", cache, "--ttl", "3600") as h:
        assert (h.mountpoint / "README.txt").read_bytes()
    return cache


def _env_file(zm, secret: str) -> Path:
    path = zm.new_dir("env-") / "creds.env"
    path.write_text(f"STORAGE_ACCESS_KEY={zm.access_key}\nSTORAGE_SECRET_KEY={secret}\n")
    path.chmod(0o600)
    return path


def test_a_warm_cache_does_not_hide_a_wrong_secret(zm, warm_cache):
    env = zm.env(access_key=None, secret_key=None)
    with zm.mounted_bg("s3://data/single/stored.zip", "--env-file", _env_file(zm, "wrong"),
                       "--cache-dir", warm_cache, "--ttl", "3600", env=env) as (r, mp):
        assert_one_line_error(r, r"access denied by https://127\.0\.0\.1:\d+ .*credentials")
        _nothing_written(mp)


def test_a_warm_cache_does_not_hide_anonymous_access_being_refused(zm, warm_cache):
    with zm.mounted_bg("s3://data/single/stored.zip", "--anonymous", "--cache-dir", warm_cache,
                       "--ttl", "3600") as (r, mp):
        assert_one_line_error(r, r"access denied")
        _nothing_written(mp)


def test_a_ca_bundle_that_is_not_pem_is_refused_before_anything_starts(zm, warm_cache):
    bad = zm.new_dir("ca-") / "ca.der"
    bad.write_bytes(b"\x30\x82\x01\x0a not PEM at all")
    with zm.mounted_bg("s3://data/single/stored.zip", "--endpoint-url", zm.endpoint_url,
                       "--ca-bundle", bad, "--cache-dir", warm_cache, storage=False) as (r, mp):
        assert_one_line_error(r, r"ca\.der holds no PEM certificate", rc=2)
        _nothing_written(mp)


def test_an_unreachable_endpoint_fails_a_warm_mount_unless_offline(zm, warm_cache, samples,
                                                                  private_s3):
    """The endpoint is stopped: the mount fails naming --offline; with --offline it serves the
    cache, says so on the terminal, in the log and in `stats`."""
    env = zm.env(access_key=private_s3.access_key, secret_key=private_s3.secret_key)
    private_s3.put_bytes("svc", "w/stored.zip", samples.stored.data)
    storage = ["--endpoint-url", private_s3.endpoint_url, "--ca-bundle", private_s3.ca_bundle]
    cache = zm.new_dir("offline-")
    args = ["s3://svc/w/stored.zip", *storage, "--cache-dir", cache, "--ttl", "3600",
            "--timeout", "3"]
    with zm.mounted_bg(*args, env=env, storage=False) as (r, mp):
        assert r.rc == 0, r.describe()
        assert (mp / "README.txt").read_bytes() == samples.stored.files["README.txt"]
        assert zm.run("umount", mp).rc == 0
    from support.s3server import stop_process_group

    stop_process_group(private_s3.proc)
    with zm.mounted_bg(*args, env=env, storage=False) as (r, mp):
        assert_one_line_error(r, r"cannot reach https://127\.0\.0\.1:\d+ .*--offline")
        _nothing_written(mp)
    with zm.mounted_bg(*args, "--offline", env=env, storage=False) as (r, mp):
        assert r.rc == 0, r.describe()
        assert "(offline: from the cache only)" in r.stdout, r.stdout
        assert (mp / "README.txt").read_bytes() == samples.stored.files["README.txt"]
        stats = zm.run("stats", mp)
        assert re.search(r"^offline\s+True$", stats.stdout, re.M), stats.stdout
        log = zm.run("logs", mp)
        assert "--offline: serving s3://svc/w/stored.zip from the cache" in log.stdout, \
            log.describe()


def test_https_against_a_plain_http_server_says_so(zm, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with zm.mounted_bg("s3://data/single/stored.zip", "--endpoint-url",
                           f"https://127.0.0.1:{server.server_address[1]}", "--timeout", "5",
                           storage=False) as (r, mp):
            assert_one_line_error(r, r"answers plain HTTP, not TLS: use --endpoint-url "
                                     r"http://127\.0\.0\.1:\d+")
            _nothing_written(mp)
    finally:
        server.shutdown()


# ----- logs have a home ----------------------------------------------------------------------------
def test_a_background_mount_prints_its_pid_and_log_and_logs_says_where(zm, samples):
    with zm.mounted_bg("s3://data/single/stored.zip") as (r, mp):
        assert r.rc == 0, r.describe()
        m = re.search(r"^daemon pid (\d+), log (\S+)$", r.stdout, re.M)
        assert m and f"mounted s3://data/single/stored.zip on {mp}" in r.stdout, r.stdout
        pid, log = int(m.group(1)), Path(m.group(2))
        assert pid in pids_with_marker(mp)
        assert log.is_relative_to(zm.env()["XDG_STATE_HOME"]), log
        assert "mounted s3://data/single/stored.zip" in log.read_text()
        where = zm.run("logs", mp, "--path")
        assert where.rc == 0 and where.stdout.strip() == str(log), where.describe()
        tail = zm.run("logs", mp, "-n", "1")
        assert tail.rc == 0 and tail.stdout.splitlines()[0] == f"==> {log} <==", tail.describe()
        stats = zm.run("stats", mp)
        assert re.search(rf"^log\s+{re.escape(str(log))}$", stats.stdout, re.M), stats.stdout


# ----- arguments checked at parse time --------------------------------------------------------------
@pytest.mark.parametrize(("args", "pattern"), [
    (["--ttl", "-5"], r"--ttl: '-5' must be 0 or more seconds"),
    (["--timeout", "0"], r"--timeout: '0' must be more than 0 seconds"),
    (["--timeout", "soon"], r"--timeout: 'soon' is not a duration \(e\.g\. 30, 30s"),
    (["--cache-size", "10 bananas"], r"is not a size .*GiB.*powers of 2.*GB.*powers of 10"),
    (["--endpoint-url", "127.0.0.1:9710"], r"needs a scheme.*write https://127\.0\.0\.1:9710"),
])
def test_bad_values_are_refused_at_parse_time(zm, args, pattern):
    mp = zm.mountpoint()
    r = zm.run("mount", "s3://data/single/stored.zip", mp, *args)
    assert_one_line_error(r, pattern, rc=2)
    _nothing_written(mp)


def test_durations_take_units(zm, samples):
    with zm.mounted("s3://data/single/stored.zip", "--ttl", "2m", "--timeout", "30s") as h:
        assert (h.mountpoint / "README.txt").read_bytes() == samples.stored.files["README.txt"]


@pytest.mark.parametrize(("command", "url", "pattern", "rc"), [
    ("ls", "gs://bucket/x.zip", r"gs:// needs the gcsfs package: pip install gcsfs", 2),
    ("ls", "foo://bucket/x.zip", r"unknown protocol foo://", 2),
    ("mount", "gs://bucket/x.zip", r"gs:// needs the gcsfs package: pip install gcsfs", 2),
])
def test_an_unreadable_protocol_names_the_package(zm, command, url, pattern, rc):
    mp = zm.mountpoint()
    r = zm.run(command, url, *([mp] if command == "mount" else []))
    assert_one_line_error(r, pattern, rc=rc)
    _nothing_written(mp)


def test_mountpoint_that_does_not_exist_says_so(zm):
    r = zm.run("mount", "s3://data/single/stored.zip", zm.workdir / "no-such-dir", storage=True)
    assert_one_line_error(r, r"no-such-dir does not exist \(mkdir -p it first\)", rc=2)


# ----- ls, stats, cache ---------------------------------------------------------------------------
def test_ls_of_a_missing_directory_names_it(zm):
    r = zm.run("ls", "s3://data/rec/a.rkns", "nosuchdir", storage=True)
    assert_one_line_error(r, r"nosuchdir: no such file or directory in s3://data/rec/a\.rkns")


def test_ls_of_a_broken_archive_in_a_prefix_fails_with_one_line(zm):
    r = zm.run("ls", "s3://data/bad/", "notzip.zip", storage=True)
    assert_one_line_error(r, r"^zipmount: error: cannot open archive data/bad/notzip\.zip: "
                             r".*not a zip archive")


def test_stats_of_a_dead_daemons_mount_suggests_umount(zm):
    with zm.mounted("s3://data/single/stored.zip") as h:
        h.proc.kill()
        h.proc.wait(timeout=10)
        r = zm.run("stats", h.mountpoint)
        assert_one_line_error(r, rf"its daemon is gone; clean it with `zipmount umount "
                                 rf"{re.escape(str(h.mountpoint))}`")
        assert zm.run("umount", h.mountpoint).rc == 0


def test_cache_info_shows_the_cap_and_prune_reports_it(zm, samples):
    cache = zm.new_dir("cache-")
    with zm.mounted("s3://data/single/stored.zip", "--cache-dir", cache) as h:
        assert (h.mountpoint / "data/big.bin").read_bytes() == samples.stored.files["data/big.bin"]
    info = zm.run("cache", "info", "--cache-dir", cache)
    assert info.rc == 0 and re.search(r"^cap\s+10 GiB", info.stdout, re.M), info.describe()
    prune = zm.run("cache", "prune", "--cache-dir", cache, "--cache-size", "100KiB")
    assert prune.rc == 0, prune.describe()
    m = re.search(r"^pruned .* to ([\d.]+) (bytes|KiB) \(cap 100 KiB\)$", prune.stdout, re.M)
    assert m, prune.stdout
    assert float(m.group(1)) <= 100


# ----- help that teaches -----------------------------------------------------------------------------
def test_zipmount_alone_prints_usage_and_every_command(zm):
    r = zm.run()
    assert r.rc == 2 and "Traceback" not in r.stderr, r.describe()
    assert r.stderr.startswith("usage: zipmount"), r.stderr
    for command in ("mount", "umount", "ls", "stats", "logs", "prefetch", "cache"):
        assert re.search(rf"^\s+{command}\s+\S", r.stderr, re.M), (command, r.stderr)


def test_version_flag(zm):
    for flag in ("-V", "--version"):
        r = zm.run(flag)
        assert r.rc == 0 and re.fullmatch(r"zipmount \d+\.\d+\.\d+\n", r.stdout), r.describe()


@pytest.mark.parametrize("command", ["mount", "umount", "ls", "stats", "logs", "prefetch",
                                     "cache"])
def test_every_argument_has_help_and_every_command_an_example(zm, command):
    r = zm.run(command, "--help")
    assert r.rc == 0, r.describe()
    assert re.search(r"^examples:\n  zipmount " + command, r.stdout, re.M), r.stdout
    body = r.stdout.split("\nexamples:")[0]
    # Each option or positional line of the help: its text follows on the same line or the next.
    lines = body.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^  (-[\w-]+|[A-Z][A-Z_]+\b)", line)
        if not m or line.startswith("  zipmount"):
            continue
        described = re.search(r"\S\s{2,}\S", line.strip()) or (
            i + 1 < len(lines) and re.match(r"^\s{10,}\S", lines[i + 1]))
        assert described, f"`zipmount {command} --help`: no text for {line.strip()!r}"
    if command in ("mount", "ls"):
        for option in ("--ttl", "--timeout", "--memory", "--cache-size"):
            text = re.search(rf"{option} [A-Z]+\s+(.*?)(?=\n  -|\Z)", body, re.S)
            assert text and "default" in text.group(1), (option, body)


def test_under_systemd_a_background_mount_logs_to_the_journal(zm, tmp_path):
    """With stderr being the journal stream (JOURNAL_STREAM names its device:inode, as systemd
    sets it), the daemon logs there and no file is made."""
    mp = zm.mountpoint()
    journal = tmp_path / "journal.txt"
    with open(journal, "wb") as err:
        st = os.fstat(err.fileno())
        env = zm.env(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        cmd = [str(zm.exe), "mount", "s3://data/single/stored.zip", str(mp), *zm.storage_args(),
               "--cache-dir", str(zm.new_dir("cache-"))]
        try:
            r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                               timeout=60)
            assert r.returncode == 0, journal.read_text()
            assert "log the journal" in r.stdout, r.stdout
            logs = zm.run("logs", mp, env=env)
            assert re.search(r"logs to the journal: journalctl _PID=\d+", logs.stdout), \
                logs.describe()
            assert zm.run("umount", mp).rc == 0
        finally:
            assert cleanup([mp], [mp]) == []
    assert "mounted s3://data/single/stored.zip" in journal.read_text()
    assert not list(Path(env["XDG_STATE_HOME"]).rglob(f"*{mp.name}.log")), "a log file was made"


def test_a_foreground_mount_prints_no_libfuse_thread_warning(zm):
    """libfuse 3.14 warned "Ignoring invalid max threads value 4294967295" on every -f mount."""
    with zm.mounted("s3://data/single/stored.zip") as h:
        assert (h.mountpoint / "README.txt").read_bytes()
        assert zm.run("umount", h.mountpoint).rc == 0
        h.proc.wait(timeout=30)
    assert "max threads" not in h.stderr(), h.stderr()
    assert "mounted s3://data/single/stored.zip" in h.stderr(), h.stderr()
