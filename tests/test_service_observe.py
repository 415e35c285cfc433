"""What an operator watches: the log (levels, stderr or a file, one line per mount / archive
opened / remote error, never a secret), `zipmount stats MOUNTPOINT`, and the Prometheus
endpoint configured with `metrics: {listen: HOST:PORT}`.
"""

from __future__ import annotations

import errno
import json
import re
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest
from service_kit import (
    Endpoint,
    assert_nothing_left,
    clean_env,
    daemon,
    fresh_dirs,
    make_archive,
    read_uncached,
    require_fuse,
    settled_stats,
    stats,
    write_config,
    zipmount,
)
from support.mount import cleanup, is_mounted, run
from support.s3server import free_port, stop_process_group

# these tests mount with zipmount's own commands (service_kit), not through ``zm``
pytestmark = pytest.mark.usefixtures("fuse")

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def _a_file(contents):
    return next((n, c) for n, c in sorted(contents.files.items()) if len(c) > 1000)


def _config(tmp_path, s3, mounts, **kw):
    ep = Endpoint.of(s3)
    cache = kw.pop("cache_dir", None) or fresh_dirs(tmp_path, "cache")[0]
    return write_config(tmp_path / "obs.yaml",
                        storage=ep.storage(env_file=ep.env_file(tmp_path / "creds.env")),
                        mounts=mounts, cache_dir=cache, **kw)


# --------------------------------------------------------------------------------------------
# logging
# --------------------------------------------------------------------------------------------
def test_log_file_one_line_per_mount_and_archive_opened(tmp_path, s3, samples):
    require_fuse()
    mp1, mp2 = fresh_dirs(tmp_path, "mp1", "mp2")
    log_file = tmp_path / "zipmount.log"
    cfg = _config(tmp_path, s3, [("s3://data/single/stored.zip", mp1), ("s3://data/rec/", mp2)],
                  log_file=log_file)
    with daemon(cfg, [mp1, mp2]) as d:
        name, content = _a_file(samples.small_c)
        assert (mp2 / "c.zip" / name).read_bytes() == content
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0
        stderr = d.stderr()
    log = log_file.read_text()
    lines = log.splitlines()
    assert lines and all(LOG_LINE.match(ln) for ln in lines), log
    def count(pattern: str) -> int:
        return sum(1 for ln in lines if re.search(pattern, ln))
    assert count(rf"INFO zipmount\.daemon: mounted s3://data/single/stored\.zip on {mp1}$") == 1
    assert count(rf"INFO zipmount\.daemon: mounted s3://data/rec/ on {mp2}$") == 1
    assert count(r"INFO .*opened archive data/single/stored\.zip \(\d+ entries, ETag ") == 1
    assert count(r"INFO .*opened archive data/rec/c\.zip \(\d+ entries, ETag ") == 1
    assert count(r"opened archive data/rec/a\.rkns") == 0, "archives open lazily"
    assert count(rf"unmounted {mp1}$") == 1 and count(rf"unmounted {mp2}$") == 1
    # With a log file, nothing of the log goes to stderr.
    assert not [ln for ln in stderr.splitlines() if LOG_LINE.match(ln)], stderr


def test_log_level_warning_drops_info_lines(tmp_path, s3, samples):
    require_fuse()
    (mp,) = fresh_dirs(tmp_path, "mp")
    cfg = _config(tmp_path, s3, [("s3://data/single/stored.zip", mp)], level="WARNING")
    with daemon(cfg, [mp]) as d:
        name, content = _a_file(samples.stored)
        assert (mp / name).read_bytes() == content
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0
        log = d.stderr()
    assert " INFO " not in log, log
    # ... and the command line overrides the config's level.
    with daemon(cfg, [mp], args=["--log-level", "INFO"]) as d:
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0
        assert re.search(rf"INFO zipmount\.daemon: mounted .* on {mp}$", d.stderr(), re.M), \
            d.stderr()


def test_log_never_shows_secrets(tmp_path, s3, samples):
    """DEBUG level, reads, a failed read, a refused start with a wrong secret: the secret key
    shows nowhere (log file, stderr, error lines)."""
    require_fuse()
    ep = Endpoint.of(s3)
    assert len(ep.secret_key) >= 16
    mp1, mp2, cache = fresh_dirs(tmp_path, "mp1", "mp2", "cache")
    log_file = tmp_path / "debug.log"
    cfg = write_config(tmp_path / "debug.yaml",
                       storage=ep.storage(env_file=ep.env_file(tmp_path / "creds.env")),
                       mounts=[("s3://data/single/deflated.zip", mp1), ("s3://data/bad/", mp2)],
                       cache_dir=cache, level="DEBUG", log_file=log_file)
    outputs = []
    with daemon(cfg, [mp1, mp2]) as d:
        name, content = _a_file(samples.deflated)
        assert (mp1 / name).read_bytes() == content
        run(["ls", "-R", str(mp2)], timeout=30)  # broken archives: error lines
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0
        outputs.append(d.stderr())
    outputs.append(log_file.read_text())
    assert "cannot open archive data/bad/notzip.zip" in outputs[-1]

    # Wrong secret, in the config itself this time.
    wrong = ep.secret_key[::-1]
    bad = write_config(tmp_path / "bad.yaml",
                       storage={**ep.storage(), "access_key": ep.access_key,
                                "secret_key": wrong},
                       mounts=[("s3://data/single/stored.zip", mp1)], cache_dir=cache,
                       level="DEBUG")
    r = zipmount("mount", "--config", bad, "-f")
    assert r.rc == 1 and "access denied" in r.stderr, r.describe()
    outputs += [r.stdout, r.stderr]
    for out in outputs:
        assert ep.secret_key not in out
        assert wrong not in out
    assert_nothing_left(cfg, [mp1, mp2])


def test_remote_error_is_logged_with_key_and_errno(tmp_path, private_s3):
    require_fuse()
    data, files = make_archive({"dir": 4})
    private_s3.put_bytes("svc", "logs/rec.zip", data)
    ep = Endpoint.of(private_s3)
    (mp,) = fresh_dirs(tmp_path, "mp")
    log_file = tmp_path / "remote.log"
    cfg = write_config(tmp_path / "remote.yaml", storage=ep.storage(timeout=3),
                       mounts=[("s3://svc/logs/rec.zip", mp)], cache_dir=None,
                       log_file=log_file)
    env = clean_env(AWS_ACCESS_KEY_ID=ep.access_key, AWS_SECRET_ACCESS_KEY=ep.secret_key)
    with daemon(cfg, [mp], env=env) as d:
        r = read_uncached(mp / "dir/file0.bin")
        assert r.rc == 0 and r.stdout_bytes == files["dir/file0.bin"], r.describe()
        stop_process_group(private_s3.proc)
        t0 = time.monotonic()
        r = read_uncached(mp / "dir/file3.bin", timeout=60)
        took = time.monotonic() - t0
        assert r.rc == 3 and f"errno={errno.EIO}" in r.stderr, r.describe()
        assert took < 20, f"EIO took {took:.1f}s with timeout 3 s"
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0
    log = log_file.read_text()
    errors = [ln for ln in log.splitlines()
              if " WARNING " in ln or " ERROR " in ln]
    hits = [ln for ln in errors if "svc/logs/rec.zip" in ln and "EIO" in ln]
    assert hits, f"no error line naming the key and the errno:\n{log}"
    assert any(f"127.0.0.1:{private_s3.port}" in ln for ln in hits), hits
    assert all("Traceback" not in ln for ln in log.splitlines()), log


def test_object_replaced_under_the_mount_is_logged_with_key_and_errno(tmp_path, private_s3):
    """The server answers 412 to the ETag-pinned range request: the log says which object
    changed and that the reader got ESTALE."""
    require_fuse()
    data, files = make_archive({"dir": 4})
    private_s3.put_bytes("svc", "logs/changing.zip", data)
    ep = Endpoint.of(private_s3)
    (mp,) = fresh_dirs(tmp_path, "mp")
    cfg = write_config(tmp_path / "changing.yaml", storage=ep.storage(timeout=5),
                       mounts=[("s3://svc/logs/changing.zip", mp)], cache_dir=None)
    env = clean_env(AWS_ACCESS_KEY_ID=ep.access_key, AWS_SECRET_ACCESS_KEY=ep.secret_key)
    with daemon(cfg, [mp], env=env) as d:
        new_data, _ = make_archive({"dir": 4}, seed=6)
        private_s3.put_bytes("svc", "logs/changing.zip", new_data)
        r = read_uncached(mp / "dir/file2.bin", timeout=60)
        assert r.rc == 3 and f"errno={errno.ESTALE}" in r.stderr, r.describe()
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0
        log = d.stderr()
    hits = [ln for ln in log.splitlines() if ("WARNING" in ln or "ERROR" in ln)
            and "svc/logs/changing.zip" in ln and "ESTALE" in ln]
    assert hits and all("changed on the server" in ln for ln in hits), log


# --------------------------------------------------------------------------------------------
# zipmount stats
# --------------------------------------------------------------------------------------------
def test_stats_counters_move_with_reads(tmp_path, s3, samples):
    require_fuse()
    (mp,) = fresh_dirs(tmp_path, "mp")
    cfg = _config(tmp_path, s3, [("s3://data/single/stored.zip", mp)])
    with daemon(cfg, [mp]):
        before = stats(mp)
        for key in ("requests", "bytes_fetched", "reads", "bytes_read", "errors",
                    "memory_hits", "disk_hits", "archives_opened", "open_archives", "mounts",
                    "uptime_s", "read_latency_ms", "request_latency_ms"):
            assert key in before, before
        assert before["mounts"] == 1 and before["open_archives"] == 1
        name, content = _a_file(samples.stored)
        r = read_uncached(mp / name)
        assert r.rc == 0 and r.stdout_bytes == content
        after = stats(mp)
        assert after["reads"] > before["reads"]
        assert after["bytes_read"] - before["bytes_read"] >= len(content)
        assert after["requests"] > before["requests"]
        assert after["bytes_fetched"] > before["bytes_fetched"]
        assert after["read_latency_ms"]["p50"] >= 0
        # The human form: one counter per line.
        human = zipmount("stats", mp)
        assert human.rc == 0, human.describe()
        fields = dict(ln.split(None, 1) for ln in human.stdout.splitlines() if ln.strip())
        assert int(fields["bytes_read"]) >= after["bytes_read"]
        assert "p50=" in fields["read_latency_ms"]


def test_stats_on_a_directory_that_is_not_a_mount(tmp_path):
    r = zipmount("stats", tmp_path)
    assert r.rc == 1, r.describe()
    assert len(r.error_lines()) == 1 and "no zipmount daemon answers" in r.stderr


# --------------------------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------------------------
def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def test_metrics_endpoint_exposes_the_stats(tmp_path, s3, samples):
    require_fuse()
    port = free_port()
    mp1, mp2 = fresh_dirs(tmp_path, "mp1", "mp2")
    cfg = _config(tmp_path, s3, [("s3://data/single/stored.zip", mp1), ("s3://data/rec/", mp2)],
                  metrics=f"127.0.0.1:{port}")
    with daemon(cfg, [mp1, mp2]) as d:
        m0 = _scrape(port)
        for name in ("zipmount_requests_total", "zipmount_bytes_fetched_total",
                     "zipmount_errors_total", "zipmount_reads_total",
                     "zipmount_bytes_read_total", "zipmount_memory_hits_total",
                     "zipmount_disk_hits_total", "zipmount_archives_opened_total",
                     "zipmount_mounts", "zipmount_open_archives",
                     "zipmount_memory_cache_bytes", "zipmount_disk_cache_capacity"):
            assert name in m0, sorted(m0)
        assert m0["zipmount_mounts"] == 2
        name, content = _a_file(samples.stored)
        r = read_uncached(mp1 / name)
        assert r.rc == 0 and r.stdout_bytes == content
        s = settled_stats(mp2)
        m1 = _scrape(port)
        assert m1["zipmount_bytes_read_total"] - m0["zipmount_bytes_read_total"] >= len(content)
        assert m1["zipmount_requests_total"] > m0["zipmount_requests_total"]
        # Same numbers as `zipmount stats` (no reads in between).
        assert m1["zipmount_bytes_read_total"] == s["bytes_read"]
        assert m1["zipmount_requests_total"] == s["requests"]
        assert 'zipmount_read_latency_ms{quantile="p50"}' in m1
        # Loopback only, as configured.
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) == 0
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0
    with pytest.raises(urllib.error.URLError):
        _scrape(port)


def test_metrics_port_in_use_fails_the_start_cleanly(tmp_path, s3):
    require_fuse()
    (mp,) = fresh_dirs(tmp_path, "mp")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = _config(tmp_path, s3, [("s3://data/single/stored.zip", mp)],
                      metrics=f"127.0.0.1:{port}")
        try:
            r = zipmount("mount", "--config", cfg)
            assert r.rc == 1, r.describe()
            assert f"metrics endpoint 127.0.0.1:{port}" in r.stderr, r.describe()
            assert not is_mounted(mp)
            assert_nothing_left(cfg, [mp])
        finally:
            cleanup([mp], [str(cfg)])


def test_stats_json_is_machine_readable(tmp_path, s3):
    require_fuse()
    (mp,) = fresh_dirs(tmp_path, "mp")
    cfg = _config(tmp_path, s3, [("s3://data/rec/", mp)])
    with daemon(cfg, [mp]):
        r = zipmount("stats", "--json", mp)
        assert r.rc == 0, r.describe()
        data = json.loads(r.stdout)
        assert data["mounts"] == 1 and data["open_archives"] == 0
