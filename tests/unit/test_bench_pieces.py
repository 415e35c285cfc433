"""The benchmark's own helpers that its numbers rest on (no servers, no FUSE)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import botocore.session
import numpy as np
import pytest
from botocore.parsers import RestXMLParser

from bench.cohort import BUCKET, CohortSpec, key, nginx_etag, touched_bytes, write_listing
from bench.memfuse import MemoryFS
from bench.registry import STEPS, step
from bench.run import ALL_CONTENDERS, ALL_STEPS, parse_args
from bench.steps.stream import member_data_range
from bench.workload import digest, make_windows, window_chunks


def test_the_static_listing_parses_as_list_objects_v2_with_the_sizes_and_etags_served(tmp_path: Path):
    spec = CohortSpec(recordings=3)
    sizes = {}
    for i in range(spec.recordings):
        p = tmp_path / BUCKET / key(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * (100 + i))
        sizes[key(i)] = p.stat()
    xml = write_listing(spec, tmp_path).read_bytes()
    model = botocore.session.get_session().get_service_model("s3")
    shape = model.operation_model("ListObjectsV2").output_shape
    parsed = RestXMLParser().parse({"body": xml, "headers": {}, "status_code": 200}, shape)
    got = {c["Key"]: (c["Size"], c["ETag"]) for c in parsed["Contents"]}
    assert got == {k: (st.st_size, nginx_etag(st)) for k, st in sizes.items()}
    assert parsed["IsTruncated"] is False


def test_member_data_range_points_at_a_stored_members_bytes(tmp_path: Path):
    path = tmp_path / "a.zip"
    payload = os.urandom(5000)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("first.txt", b"hello")
        zf.writestr("dir/big.bin", payload)
    info = zipfile.ZipFile(path).getinfo("dir/big.bin")
    start, end = member_data_range(str(path), info.header_offset, info.compress_size)
    with open(path, "rb") as f:
        f.seek(start)
        assert f.read(end - start) == payload


def test_the_memory_fs_lists_implied_directories_and_reads_ranges():
    fs = MemoryFS({"/a/b/c.bin": b"0123456789", "/a/d.txt": b"x"})
    assert sorted(fs.readdir("/", None)) == sorted([".", "..", "a"])
    assert sorted(fs.readdir("/a", None)) == sorted([".", "..", "b", "d.txt"])
    assert fs.getattr("/a/b/c.bin")["st_size"] == 10
    assert fs.read("/a/b/c.bin", 4, 3, None) == b"3456"


def test_windows_are_fixed_by_the_seed_and_map_to_the_chunks_they_overlap():
    w = make_windows(channels=4, samples=100_000, count=20, length=1000)
    assert w == make_windows(channels=4, samples=100_000, count=20, length=1000)
    keys = window_chunks(65536, [(2, 65000)], 1000)
    assert keys == ["eeg/2.0", "eeg/2.1"]


def test_the_digest_depends_on_array_bytes_and_list_order():
    a, b = np.arange(4, dtype="f4"), np.arange(4, dtype="f4")[::-1]
    assert digest([a, b]) == digest([a.copy(), b.copy()])
    assert digest([a, b]) != digest([b, a])


def test_touched_bytes_sums_each_distinct_chunk_once():
    manifest = {"chunks": {"r0000": {"eeg/0.0": 10, "eeg/0.1": 20}, "r0001": {"eeg/1.0": 5}}}
    assert touched_bytes(manifest, {"r0000/eeg/0.1", "r0001/eeg/1.0"}) == 25


def test_the_registered_steps_and_contenders_run_in_the_order_the_command_line_lists():
    assert ALL_STEPS == ["eeg", "list", "stream", "memory", "cohort"]
    assert ALL_CONTENDERS == ["local", "seed", "zipmount", "zipmount-fsspec", "zarr3-zipstore",
                              "virtualizarr", "zarr3-mount", "fuse-floor", "s3fs-ranged"]
    assert [s.scope for s in STEPS.values()] == ["session", "session", "endpoint", "round", "once"]


def test_a_step_name_is_registered_once():
    with pytest.raises(ValueError, match="registered twice"):
        step("eeg", "session")(lambda run, c, delay: None)


def test_an_unknown_step_or_contender_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--steps", "eeg,nope"])
    assert exc.value.code == 2
    assert "unknown step(s): nope" in capsys.readouterr().err
