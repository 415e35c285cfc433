"""The fsspec filesystem under faults: a slow or hung S3 server behind the fault proxy.

Filesystems of one cache directory share one engine (one block cache); each must still keep
its own deadline (``timeout``), whatever the engine was built with.
"""

from __future__ import annotations

import errno
import io
import threading
import zipfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
from robust.faultproxy import FaultProxy, Hang, always, fault_proxy
from robust.s3http import ACCESS_KEY, REGION, SECRET_KEY, HttpS3, moto_http_server
from support.locks import stopped_holder

BUCKET = "fsspec-faults"
pytestmark = pytest.mark.s3  # every test here talks to the moto server of `served`


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A plain-HTTP moto server and the fault proxy in front of it."""
    with moto_http_server(tmp_path_factory.mktemp("faults-s3")) as s3, \
            fault_proxy(s3.port) as proxy:
        s3.create_bucket(BUCKET)
        yield s3, proxy


def _options(proxy: FaultProxy) -> dict:
    return {"endpoint_url": proxy.url, "key": ACCESS_KEY, "secret": SECRET_KEY,
            "client_kwargs": {"region_name": REGION}}


def _two_small_members_then_a_filler() -> tuple[bytes, dict[str, bytes]]:
    """m1 and m2 in the first 64 KiB block; the central directory 1 MiB further on, so
    opening the archive does not fetch their block."""
    rng = np.random.default_rng(3)
    files = {"m1.bin": rng.bytes(1000), "m2.bin": rng.bytes(1000), "filler.bin": rng.bytes(2**20)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue(), files


def _filesystem(proxy: FaultProxy, key: str, cache_dir: Path, timeout: float):
    return fsspec.filesystem("zipmount", fo=f"s3://{BUCKET}/{key}", target_options=_options(proxy),
                             cache_dir=str(cache_dir), timeout=timeout, skip_instance_cache=True)


def test_a_read_waiting_for_a_shared_block_keeps_its_own_filesystems_timeout(
        served: tuple[HttpS3, FaultProxy], tmp_path: Path):
    """Two filesystems share one engine; a read of the one with ``timeout=3`` waiting for a
    request that a ``timeout=60`` filesystem started gives up after its own 3 s, not after
    the engine's default 30 s."""
    s3, proxy = served
    data, files = _two_small_members_then_a_filler()
    s3.put(BUCKET, "shared-block.zip", data)
    patient = _filesystem(proxy, "shared-block.zip", tmp_path / "cache", timeout=60)
    hasty = _filesystem(proxy, "shared-block.zip", tmp_path / "cache", timeout=3)
    assert patient.tree.slot.reach.cache is hasty.tree.slot.reach.cache  # one engine
    results: dict[str, object] = {}

    def read_patiently() -> None:
        try:
            results["m1"] = patient.cat_file("m1.bin")
        except OSError as exc:
            results["m1"] = exc

    with proxy.fault(always(Hang(), lambda r: r.is_range_get)):
        reader = threading.Thread(target=read_patiently, daemon=True)
        reader.start()
        while not proxy.log(lambda r: r.action == "hang"):  # its request is in flight
            reader.join(0.05)
            assert reader.is_alive(), results
        with pytest.raises(OSError) as info:
            hasty.cat_file("m2.bin")
    assert info.value.errno == errno.EIO
    assert "within 3 s" in str(info.value), str(info.value)
    reader.join(60)  # the hang is over: the patient read retries within its 60 s
    assert results["m1"] == files["m1.bin"]
    assert hasty.cat_file("m2.bin") == files["m2.bin"]


def test_a_stopped_process_holding_the_cache_ledger_stalls_no_filesystem(
        served: tuple[HttpS3, FaultProxy], tmp_path: Path):
    """A new filesystem on the cache dir opens, lists and reads an archive it never saw
    (its index and its view are written to the cache on the way) within its own timeout."""
    s3, proxy = served
    data, files = _two_small_members_then_a_filler()
    s3.put(BUCKET, "ledger-held.zip", data)
    cache = tmp_path / "cache"
    s3.put(BUCKET, "first.zip", data)
    _filesystem(proxy, "first.zip", cache, timeout=5)  # the cache dir and its ledger exist
    results: dict[str, object] = {}

    def use_a_new_filesystem() -> None:
        try:
            fs = _filesystem(proxy, "ledger-held.zip", cache, timeout=5)
            results["ls"] = sorted(fs.ls("", detail=False))
            results["cat"] = fs.cat(sorted(files))
        except Exception as exc:  # noqa: BLE001 - handed to the test
            results["error"] = exc

    with stopped_holder(cache / "ledger"):
        user = threading.Thread(target=use_a_new_filesystem, daemon=True)
        user.start()
        user.join(60)  # a liveness bound: a wait on the stuck lock never ends
        assert not user.is_alive(), "blocked on the ledger lock of a stopped process"
    assert "error" not in results, results
    assert results["ls"] == sorted(files)
    assert results["cat"] == files
