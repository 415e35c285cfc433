"""`zipmount prefetch PATH...` warms the cache so that files read while the endpoint is gone;
the disk cache persists across restarts and is shared by daemons; `zipmount cache info|prune|clear`
manage it, also while daemons use it.
"""

from __future__ import annotations

import errno
import re
import signal
import time

import pytest
from service_kit import (
    Endpoint,
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
from support.s3server import stop_process_group

# these tests mount with zipmount's own commands (service_kit), not through ``zm``
pytestmark = pytest.mark.usefixtures("fuse")


def _stored_zip_service(tmp_path, s3):
    """Mountpoint, cache dir and config of a service mounting the sample stored.zip."""
    require_fuse()
    ep = Endpoint.of(s3)
    mp, cache = fresh_dirs(tmp_path, "mp", "cache")
    cfg = write_config(tmp_path / "service.yaml",
                       storage=ep.storage(env_file=ep.env_file(tmp_path / "creds.env")),
                       mounts=[("s3://data/single/stored.zip", mp)], cache_dir=cache)
    return mp, cache, cfg


def _cache_info(cache_dir) -> dict[str, float]:
    r = zipmount("cache", "info", "--cache-dir", cache_dir)
    assert r.rc == 0, r.describe()
    out = {}
    for line in r.stdout.splitlines():
        m = re.match(r"(used|blocks|indexes|spill files)\s+([\d.]+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    assert set(out) == {"used", "blocks", "indexes", "spill files"}, r.stdout
    return out


def test_prefetched_files_read_after_the_endpoint_is_gone(tmp_path, private_s3):
    require_fuse()
    # Cold files first: read-ahead runs forward from the warm ones, never into the cold ones.
    data, files = make_archive({"cold": 3, "warm": 3})
    private_s3.put_bytes("svc", "offline/rec.zip", data)
    ep = Endpoint.of(private_s3)
    mp, cache = fresh_dirs(tmp_path, "mp", "cache")
    cfg = write_config(tmp_path / "offline.yaml", storage=ep.storage(timeout=3),
                       mounts=[("s3://svc/offline/rec.zip", mp)], cache_dir=cache, ttl=1)
    env = clean_env(AWS_ACCESS_KEY_ID=ep.access_key, AWS_SECRET_ACCESS_KEY=ep.secret_key)
    warm = sorted(n for n in files if n.startswith("warm/"))
    cold = sorted(n for n in files if n.startswith("cold/"))
    with daemon(cfg, [mp], env=env) as d:
        r = zipmount("prefetch", mp / "warm", env=env)
        assert r.rc == 0, r.describe()
        assert re.search(r"^prefetched 3 files, 0\.9 MiB", r.stdout, re.M), r.stdout
        before = settled_stats(mp)
        assert before["bytes_read"] >= sum(len(files[n]) for n in warm)

        stop_process_group(private_s3.proc)
        time.sleep(1.5)  # past the ttl: revalidation now fails, the last good view is served
        for name in warm:
            r = read_uncached(mp / name, timeout=60)
            assert r.rc == 0, r.describe()
            assert r.stdout_bytes == files[name], f"{name}: wrong bytes from the cache"
        after = stats(mp)
        assert after["reads"] > before["reads"], "the reads did not reach the daemon"
        assert after["requests"] == before["requests"], "a prefetched block was fetched again"

        for name in cold[:1]:
            t0 = time.monotonic()
            r = read_uncached(mp / name, timeout=60)
            took = time.monotonic() - t0
            assert r.rc == 3 and f"errno={errno.EIO}" in r.stderr, r.describe()
            assert took < 20, f"EIO after {took:.1f}s (timeout 3 s): must not hang"
        r = zipmount("prefetch", mp / "cold", env=env, timeout=120)
        assert r.rc == 1 and "3 failed" in r.stdout, r.describe()
        # Still fine afterwards.
        r = read_uncached(mp / warm[0])
        assert r.rc == 0 and r.stdout_bytes == files[warm[0]]
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0


def test_disk_cache_serves_a_restarted_daemon_without_requests(tmp_path, s3, samples):
    mp, cache, cfg = _stored_zip_service(tmp_path, s3)
    with daemon(cfg, [mp]) as d:
        r = zipmount("prefetch", mp)
        assert r.rc == 0, r.describe()
        assert stats(mp)["requests"] > 0
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0
    with daemon(cfg, [mp]) as d:
        for name, content in samples.stored.files.items():
            r = read_uncached(mp / name)
            assert r.rc == 0 and r.stdout_bytes == content, name
        s = stats(mp)
        assert s["requests"] == 0, f"a restarted daemon fetched again: {s}"
        assert s["disk_hits"] > 0
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0


def test_prefetch_of_a_missing_path(tmp_path):
    r = zipmount("prefetch", tmp_path / "nope")
    assert r.rc == 1 and "no such file or directory" in r.stderr, r.describe()


def test_cache_commands_work_while_a_daemon_uses_the_dir(tmp_path, s3, samples):
    mp, cache, cfg = _stored_zip_service(tmp_path, s3)
    files = samples.stored.files
    with daemon(cfg, [mp]) as d:
        r = zipmount("prefetch", mp)
        assert r.rc == 0, r.describe()
        info = _cache_info(cache)
        assert info["blocks"] >= 2 and info["indexes"] == 1 and info["used"] > 0.1, info
        r = zipmount("cache", "info", "--config", cfg)  # the config names the same directory
        assert r.rc == 0 and str(cache) in r.stdout, r.describe()

        r = zipmount("cache", "prune", "--cache-dir", cache, "--cache-size", "200KiB")
        assert r.rc == 0 and "pruned" in r.stdout, r.describe()
        pruned = _cache_info(cache)
        assert pruned["blocks"] + pruned["indexes"] < info["blocks"] + info["indexes"]
        used_bytes = sum(f.stat().st_size for f in (cache / "files").rglob("*") if f.is_file())
        assert used_bytes <= 200 * 1024, used_bytes
        for name, content in files.items():  # what was pruned is fetched again
            r = read_uncached(mp / name)
            assert r.rc == 0 and r.stdout_bytes == content, name

        r = zipmount("cache", "clear", "--cache-dir", cache)
        assert r.rc == 0 and "cleared" in r.stdout, r.describe()
        assert not [f for f in (cache / "files").rglob("*") if f.is_file()]
        before = stats(mp)["requests"]
        for name, content in files.items():
            r = read_uncached(mp / name)
            assert r.rc == 0 and r.stdout_bytes == content, name
        assert stats(mp)["requests"] >= before
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0

    r = zipmount("cache", "clear", "--cache-dir", cache)
    assert r.rc == 0 and "cleared" in r.stdout, r.describe()
    cleared = _cache_info(cache)
    assert cleared == {"used": 0.0, "blocks": 0, "indexes": 0, "spill files": 0}, cleared

    # A cleared cache works: the next daemon fetches again and fills it.
    with daemon(cfg, [mp]) as d:
        assert zipmount("prefetch", mp).rc == 0
        assert stats(mp)["requests"] > 0
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0
    assert _cache_info(cache)["blocks"] > 0


def test_cache_info_without_a_cache(tmp_path):
    r = zipmount("cache", "info", "--cache-dir", tmp_path / "none")
    assert r.rc == 1 and "no cache there" in r.stderr, r.describe()


def test_two_daemons_share_one_cache_dir(tmp_path, s3, samples):
    require_fuse()
    ep = Endpoint.of(s3)
    mp1, mp2, cache = fresh_dirs(tmp_path, "mp1", "mp2", "cache")
    env_file = ep.env_file(tmp_path / "creds.env")
    cfg1 = write_config(tmp_path / "one.yaml", storage=ep.storage(env_file=env_file),
                        mounts=[("s3://data/single/stored.zip", mp1)], cache_dir=cache)
    cfg2 = write_config(tmp_path / "two.yaml", storage=ep.storage(env_file=env_file),
                        mounts=[("s3://data/single/stored.zip", mp2)], cache_dir=cache)
    with daemon(cfg1, [mp1]):
        r = zipmount("prefetch", mp1)
        assert r.rc == 0, r.describe()
        with daemon(cfg2, [mp2]):
            for name, content in samples.stored.files.items():
                r = read_uncached(mp2 / name)
                assert r.rc == 0 and r.stdout_bytes == content, name
            s2 = stats(mp2)
            assert s2["disk_cache_capacity"] > 0 and stats(mp1)["disk_cache_capacity"] > 0
            assert s2["requests"] == 0, f"the second daemon fetched what the first cached: {s2}"
            assert s2["disk_hits"] > 0
