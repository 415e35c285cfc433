"""Failures must end in one clear line on stderr, a non-zero exit, and nothing mounted.

These run `zipmount mount` in background mode (no -f), the way a user or a systemd unit does,
unless a test says otherwise."""

from __future__ import annotations

import os

from support.checks import assert_one_line_error
from support.mount import cleanup, is_mounted, mounts_under, pids_with_marker
from support.s3server import free_port

TLS = r"tls|ssl|certificate"
CREDENTIALS = r"credential|access denied"


def _assert_nothing_left(mp):
    assert not is_mounted(mp), f"{mp} is mounted after a failed mount"
    assert pids_with_marker(mp) == [], f"a zipmount process for {mp} is still running"
    assert os.listdir(mp) == [], "mountpoint is not an empty directory any more"


def _failed_mount(zm, source, pattern, *opts, env=None, storage=True, rc=1):
    with zm.mounted_bg(source, *opts, env=env, storage=storage) as (res, mp):
        line = assert_one_line_error(res, pattern, rc=rc)
        _assert_nothing_left(mp)
    return line


def test_wrong_ca_bundle(zm, other_ca):
    opts = ["--endpoint-url", zm.endpoint_url, "--ca-bundle", str(other_ca)]
    _failed_mount(zm, "s3://data/single/stored.zip", TLS, *opts, storage=False)


def test_default_trust_store_rejects_private_ca(zm):
    """Without --ca-bundle the system trust store is used, which does not know our CA."""
    _failed_mount(zm, "s3://data/single/stored.zip", TLS, "--endpoint-url", zm.endpoint_url,
                  storage=False)


def test_no_verify_tls_accepts_unknown_ca(zm, other_ca, samples):
    opts = ["--endpoint-url", zm.endpoint_url, "--no-verify-tls"]
    with zm.mounted_bg("s3://data/single/stored.zip", *opts, storage=False) as (res, mp):
        assert res.rc == 0, res.describe()
        assert (mp / "README.txt").read_bytes() == samples.stored.files["README.txt"]
        r = zm.run("umount", mp)
        assert r.rc == 0, r.describe()


def test_unknown_access_key(zm):
    env = zm.env(access_key="AKIAWRONGWRONGWRONG0", secret_key="not-the-secret")
    _failed_mount(zm, "s3://data/single/stored.zip", CREDENTIALS, env=env)


def test_wrong_secret_key(zm):
    env = zm.env(secret_key="not-the-secret")
    _failed_mount(zm, "s3://data/single/stored.zip", CREDENTIALS, env=env)


def test_no_credentials_at_all(zm):
    env = zm.env(access_key=None, secret_key=None)
    _failed_mount(zm, "s3://data/single/stored.zip", CREDENTIALS, env=env)


def test_wrong_credentials_on_prefix_source(zm):
    env = zm.env(access_key="AKIAWRONGWRONGWRONG0", secret_key="not-the-secret")
    _failed_mount(zm, "s3://data/rec/", CREDENTIALS, env=env)


def test_missing_key(zm):
    _failed_mount(zm, "s3://data/single/nope.zip", r"not found")


def test_missing_bucket(zm):
    _failed_mount(zm, "s3://no-such-bucket/x.zip", r"not found|no such bucket")


def test_object_is_not_a_zip(zm):
    _failed_mount(zm, "s3://data/bad/notzip.zip", r"zip")


def test_text_object_is_not_a_zip(zm):
    _failed_mount(zm, "s3://data/rec/notes.txt", r"zip|archive")


def test_truncated_zip(zm):
    _failed_mount(zm, "s3://data/bad/truncated.zip", r"zip|corrupt|truncated|central directory")


def test_endpoint_not_listening_fails_fast(zm):
    dead = f"https://127.0.0.1:{free_port()}"
    opts = ["--endpoint-url", dead, "--ca-bundle", str(zm.ca_bundle), "--timeout", "5"]
    line = _failed_mount(zm, "s3://data/single/stored.zip",
                         r"connect|refused|unreachable|endpoint|timed? ?out", *opts,
                         storage=False)
    assert "127.0.0.1" in line or "endpoint" in line.lower(), line


def test_mountpoint_already_mounted(zm, samples):
    with zm.mounted("s3://data/single/stored.zip") as first:
        mp = first.mountpoint
        res = zm.run("mount", "s3://data/single/deflated.zip", mp, *zm.storage_args(),
                     "--cache-dir", zm.new_dir("cache-"))
        assert_one_line_error(res, r"already mounted|busy|in use|mountpoint")
        # the first mount is untouched and still serves its archive
        assert (mp / "README.txt").read_bytes() == samples.stored.files["README.txt"]
        assert first.proc.poll() is None
        assert len(pids_with_marker(mp)) == 1, "the failed second mount left a process behind"


def test_mountpoint_missing(zm):
    mp = zm.mountpoint() / "does-not-exist"
    res = zm.run("mount", "s3://data/single/stored.zip", mp, *zm.storage_args())
    # a bad MOUNTPOINT argument may count as a usage error (2) or a runtime failure (1)
    assert_one_line_error(res, r"mountpoint|no such|not exist|not a directory", rc=(1, 2))
    assert not is_mounted(mp) and not mp.exists()
    assert pids_with_marker(mp) == []


def test_mountpoint_is_a_file(zm):
    f = zm.mountpoint() / "file"
    f.write_text("x")
    res = zm.run("mount", "s3://data/single/stored.zip", f, *zm.storage_args())
    assert_one_line_error(res, r"not a directory|mountpoint", rc=(1, 2))
    assert not is_mounted(f) and f.read_text() == "x"


def test_foreground_mode_wrong_credentials_exits(zm):
    """With -f a startup failure must also end the process with the one-line error."""
    mp = zm.mountpoint()
    env = zm.env(access_key="AKIAWRONGWRONGWRONG0", secret_key="not-the-secret")
    try:
        res = zm.run("mount", "s3://data/single/stored.zip", mp, "-f", *zm.storage_args(),
                     env=env, timeout=60)
        assert_one_line_error(res, CREDENTIALS)
        _assert_nothing_left(mp)
    finally:
        cleanup([mp], [mp])


def test_usage_error_exit_code_2(zm):
    res = zm.run("mount")
    assert "Traceback" not in res.stderr, res.describe()
    assert res.rc == 2, res.describe()
    assert "zipmount: error: " in res.stderr, res.describe()


def test_bad_source_url_is_usage_error(zm):
    mp = zm.mountpoint()
    res = zm.run("mount", "http://not-s3/x.zip", mp, *zm.storage_args())
    assert res.rc in (1, 2), res.describe()
    assert "Traceback" not in res.stderr and "zipmount: error: " in res.stderr, res.describe()
    assert not is_mounted(mp)


def test_invalid_config_file_exit_code_2(zm):
    cfg = zm.new_dir("cfg-") / "bad.yaml"
    cfg.write_text("storage: [this, is, not, a, mapping]\nmounts: 5\n")
    res = zm.run("mount", "--config", cfg)
    assert_one_line_error(res, r"config|storage|mounts|yaml", rc=2)


def test_unparsable_config_file_exit_code_2(zm):
    cfg = zm.new_dir("cfg-") / "broken.yaml"
    cfg.write_text("storage: {endpoint_url: [unclosed\n")
    res = zm.run("mount", "--config", cfg)
    assert_one_line_error(res, r"config|yaml|pars", rc=2)


def test_zipmount_ls_wrong_credentials(zm):
    env = zm.env(access_key="AKIAWRONGWRONGWRONG0", secret_key="not-the-secret")
    res = zm.run("ls", "s3://data/single/stored.zip", storage=True, env=env)
    assert_one_line_error(res, CREDENTIALS)


def test_zipmount_ls_missing_key(zm):
    res = zm.run("ls", "s3://data/single/nope.zip", storage=True)
    assert_one_line_error(res, r"not found")


def test_umount_of_unmounted_directory(zm):
    mp = zm.mountpoint()
    res = zm.run("umount", mp)
    assert_one_line_error(res, r"not mounted|not a mount|no mount")


def test_all_error_cases_left_no_mounts(zm):
    """Belt and braces: nothing under the test directory is mounted after the cases above."""
    assert mounts_under(zm.workdir) == []
    assert pids_with_marker(zm.workdir) == []
