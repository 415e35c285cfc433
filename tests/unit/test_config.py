"""The config file and the command line, without FUSE or a network: strict validation, one-line
errors naming the key and the file, and the merge of file, flags and environment."""

from __future__ import annotations

import pytest

from zipmount.cli.parser import build_parser
from zipmount.cli.settings import config_from_args, fuse_options
from zipmount.config import load_config, parse_size
from zipmount.errors import UsageError


@pytest.mark.parametrize(("text", "value"), [("256MiB", 256 << 20), ("10G", 10**10), ("1048576", 1 << 20),
                                             ("1.5 KiB", 1536), (4096, 4096)])
def test_sizes_parse_with_units(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "ten", "5 parsecs", "-1", True, "1e3MiB"])
def test_a_bad_size_is_a_usage_error_that_names_the_option(bad):
    with pytest.raises(UsageError, match="--memory: .* is not a size"):
        parse_size(bad, "--memory")


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "zm.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("text", "message"), [
    ("cache:\n  memroy: 1GiB\n", "unknown key 'cache.memroy'"),
    ("cache:\n  ttl: soon\n", "'cache.ttl' has the wrong type"),
    ("storage:\n  timeout: true\n", "'storage.timeout' has the wrong type"),
    ("colour: blue\n", "unknown key 'colour'"),
    ("mounts:\n  - source: s3://b/k.zip\n", r"mounts\[0\]: missing 'mountpoint'"),
    ("cache: [1, 2]\n", "'cache' must be a mapping"),
    ("storage:\n  ca_bundle: /no/such/ca.pem\n", "ca_bundle /no/such/ca.pem not found"),
    ("a: [\n", "invalid YAML at line"),
])
def test_config_errors_are_one_line_naming_the_key_and_the_file(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(UsageError, match=message) as info:
        load_config(path)
    assert path in str(info.value) and "\n" not in str(info.value)


def test_a_full_config_is_read_into_every_section(tmp_path):
    path = _write(tmp_path, """
storage: {endpoint_url: "https://minio:9000", timeout: 7, retries: 2}
cache: {memory: 64MiB, size: 1GiB, ttl: 5, index_memory: 8MiB, dir: /tmp/zm-cache}
logging: {level: warning}
mounts:
  - {source: "s3://b/cohort/", mountpoint: /mnt/c, suffixes: [.rkns], root: data,
     options: {allow_other: true, uid: 10, umask: "027"}}
""")
    cfg = load_config(path)
    assert (cfg.storage.endpoint_url, cfg.storage.timeout, cfg.storage.retries) == (
        "https://minio:9000", 7.0, 2)
    assert (cfg.cache.memory, cfg.cache.size, cfg.cache.ttl, cfg.cache.index_memory,
            cfg.cache.dir) == (64 << 20, 1 << 30, 5.0, 8 << 20, "/tmp/zm-cache")
    assert cfg.log_level == "WARNING"
    (mount,) = cfg.mounts
    assert (mount.source, mount.suffixes, mount.root) == ("s3://b/cohort/", (".rkns",), "data")
    assert (mount.options.allow_other, mount.options.uid, mount.options.umask) == (True, 10, 0o27)


def test_flags_override_the_file_and_the_env_file_fills_credentials(tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "STORAGE_ACCESS_KEY", "ENDPOINT_FULL"):
        monkeypatch.delenv(name, raising=False)
    env_file = tmp_path / "creds.env"
    env_file.write_text("STORAGE_ACCESS_KEY=ak\nSTORAGE_SECRET_KEY=sk\nENDPOINT_FULL=https://e:1\n")
    env_file.chmod(0o600)
    path = _write(tmp_path, "cache: {memory: 64MiB, ttl: 5}\n")
    args = build_parser().parse_args(["ls", "s3://b/k.zip", "--config", path, "--memory", "32MiB",
                                      "--no-disk-cache", "--env-file", str(env_file)])
    cfg = config_from_args(args)
    assert (cfg.cache.memory, cfg.cache.ttl, cfg.cache.dir) == (32 << 20, 5.0, None)
    assert (cfg.storage.access_key, cfg.storage.secret_key, cfg.storage.endpoint_url) == (
        "ak", "sk", "https://e:1")
    assert "sk" not in repr(cfg.storage), "secrets never show in a repr"


def test_fuse_options_are_parsed_and_unknown_ones_refused():
    opts = fuse_options(["allow_other,uid=5", "umask=022"])
    assert (opts.allow_other, opts.uid, opts.gid, opts.umask) == (True, 5, None, 0o22)
    with pytest.raises(UsageError, match="-o nosuch: unknown option"):
        fuse_options(["nosuch"])
    with pytest.raises(UsageError, match="uid needs a number"):
        fuse_options(["uid=me"])
