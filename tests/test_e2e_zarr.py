"""zarr-python 2 (this venv) and zarr-python 3 (.venv-zarr3) reading groups through the mount."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import zarr
from support.archives import save_expected_npz
from support.mount import run

CHECK_ZARR3 = Path(__file__).resolve().parent / "zarr3" / "check_zarr3.py"


@pytest.fixture(scope="module")
def rec(zm):
    with zm.mounted("s3://data/rec/") as handle:
        yield handle.mountpoint


@pytest.fixture(scope="module")
def v3(zm):
    with zm.mounted("s3://data/v3/group.zip") as handle:
        yield handle.mountpoint


def _check_group_v2(group, expected):
    assert zarr.__version__.startswith("2.")
    for path, want in expected.arrays.items():
        arr = group[path]
        assert arr.shape == want.shape and arr.dtype == want.dtype, path
        np.testing.assert_array_equal(arr[...], want, err_msg=path)
    for node, attrs in expected.attrs.items():
        got = dict((group if node == "" else group[node]).attrs)
        assert got == attrs, node


@pytest.mark.parametrize(("where", "which"), [("a.rkns", "rkns_a"), ("sub/b.rkns", "rkns_b")])
def test_zarr2_open_group_equals_source(rec, samples, where, which):
    expected = getattr(samples, which)
    group = zarr.open_group(zarr.DirectoryStore(str(rec / where)), mode="r")
    _check_group_v2(group, expected)
    # member listing: directory listings on the mount (b.rkns has no .zmetadata)
    visited: list[str] = []
    group.visititems(lambda name, obj: visited.append(name))
    assert set(expected.arrays) <= set(visited), sorted(set(expected.arrays) - set(visited))[:5]


def test_zarr2_consolidated_and_windows(rec, samples):
    expected = samples.rkns_a
    group = zarr.open_consolidated(zarr.DirectoryStore(str(rec / "a.rkns")), mode="r")
    eeg = group["signals/eeg/data"]
    want = expected.arrays["signals/eeg/data"]
    rng = np.random.default_rng(0)
    for _ in range(25):  # random 1000-sample windows, as analysis code does
        ch = int(rng.integers(0, want.shape[0]))
        start = int(rng.integers(0, want.shape[1] - 1000))
        np.testing.assert_array_equal(eeg[ch, start : start + 1000], want[ch, start : start + 1000])


def test_zarr2_missing_chunks_read_as_fill_value(rec, samples):
    sparse = zarr.open_group(zarr.DirectoryStore(str(rec / "a.rkns")), mode="r")["signals/sparse"]
    assert not (rec / "a.rkns/signals/sparse/0.0").exists()
    assert (rec / "a.rkns/signals/sparse/1.1").exists()
    np.testing.assert_array_equal(sparse[...], samples.rkns_a.arrays["signals/sparse"])
    assert sparse.nchunks_initialized == 2


def test_zarr2_with_root_option(zm, samples):
    with zm.mounted("s3://data/rec/a.rkns", "--root", "signals") as h:
        group = zarr.open_group(zarr.DirectoryStore(str(h.mountpoint)), mode="r")
        _check_group_v2(group, samples.rkns_a.subtree("signals"))


def _run_zarr3(py: Path, group_dir: Path, expected, tmp_path: Path, fmt: int):
    npz = save_expected_npz(expected, tmp_path / "expected.npz")
    r = run([py, CHECK_ZARR3, group_dir, npz, "--zarr-format", str(fmt)], timeout=180)
    assert r.rc == 0, r.describe()
    assert r.stdout.startswith("OK "), r.describe()
    return r


@pytest.mark.parametrize(("where", "which"), [("a.rkns", "rkns_a"), ("sub/b.rkns", "rkns_b")])
def test_zarr3_localstore_reads_v2_format(rec, samples, zarr3_python, tmp_path, where, which):
    r = _run_zarr3(zarr3_python, rec / where, getattr(samples, which), tmp_path, 2)
    assert "zarr_format 2" in r.stdout


def test_zarr3_localstore_reads_v3_format(v3, samples, zarr3_python, tmp_path):
    # the sharded array has one shard object missing and one inner chunk absent from its index
    assert not (v3 / "sharded/x/c/1/1").exists()
    assert (v3 / "sharded/x/c/0/0").is_file()
    r = _run_zarr3(zarr3_python, v3, samples.v3, tmp_path, 3)
    assert "zarr_format 3" in r.stdout


def test_zarr3_check_script_detects_a_mismatch(v3, samples, zarr3_python, tmp_path):
    """Guard against a check that always passes: wrong expectations must fail."""
    arrays = dict(samples.v3.arrays)
    arrays["raw/counts"] = arrays["raw/counts"] + 1
    wrong = dataclasses.replace(samples.v3, arrays=arrays)
    npz = save_expected_npz(wrong, tmp_path / "wrong.npz")
    r = run([zarr3_python, CHECK_ZARR3, v3, npz, "--zarr-format", "3"], timeout=180)
    assert r.rc == 1 and "raw/counts" in r.stderr, r.describe()
