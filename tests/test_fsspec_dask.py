"""Dask distributed worker processes rebuild the ``zipmount`` filesystem from its pickle and read
several archives of a prefix through it (real S3 test server, real worker processes)."""

from __future__ import annotations

import logging
import os

import dask.array as da
import fsspec
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster

ARCHIVES = {"a.rkns": "rkns_a", "sub/b.rkns": "rkns_b"}
EEG = "signals/eeg/data"


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture
def cohort(s3, tmp_path):
    """The prefix s3://data/rec/ as one filesystem: each archive a directory."""
    s3opts = {"endpoint_url": s3.endpoint_url, "key": s3.access_key, "secret": s3.secret_key,
              "client_kwargs": {"verify": str(s3.ca_bundle), "region_name": s3.region}}
    return fsspec.filesystem("zipmount", fo="s3://data/rec/", target_options=s3opts,
                             cache_dir=str(tmp_path / "cache"))


def _worker_pid_and_sum(fs, path: str) -> tuple[int, float]:
    """Runs on a worker: ``fs`` arrives pickled."""
    group = zarr.open_group(fs.get_mapper(path), mode="r")
    return os.getpid(), float(np.asarray(group[EEG][...], dtype=np.float64).sum())


def test_workers_compute_over_several_archives_equal_to_the_source(client, cohort, samples):
    arrays = {name: da.from_zarr(zarr.open_group(cohort.get_mapper(name), mode="r")[EEG])
              for name in ARCHIVES}
    stacked = da.concatenate([a for a in arrays.values()], axis=1)
    means = {name: a.mean(axis=1) for name, a in arrays.items()}
    got_means, got_total = client.compute([means, stacked.sum(dtype=np.float64)], sync=True)
    for name, which in ARCHIVES.items():
        want = getattr(samples, which).arrays[EEG]
        np.testing.assert_allclose(got_means[name], want.mean(axis=1), rtol=1e-5)
    want_total = sum(getattr(samples, w).arrays[EEG].astype(np.float64).sum() for w in ARCHIVES.values())
    np.testing.assert_allclose(got_total, want_total, rtol=1e-9)


def test_the_filesystem_pickled_to_worker_processes_reads_there(client, cohort, samples):
    futures = client.map(_worker_pid_and_sum, [cohort] * len(ARCHIVES), list(ARCHIVES), pure=False)
    results = client.gather(futures)
    assert all(pid != os.getpid() for pid, _ in results)
    for (_, total), which in zip(results, ARCHIVES.values(), strict=True):
        want = getattr(samples, which).arrays[EEG].astype(np.float64).sum()
        np.testing.assert_allclose(total, want, rtol=1e-9)
