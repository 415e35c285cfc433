"""zipmount in process: the ``zipmount`` fsspec filesystem against the real S3 test server."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import pickle
import sys
import threading
import time
import zipfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zarr
from support.archives import save_expected_npz
from support.forking import in_forked_child
from support.mount import run

from zipmount.cache import MAX_REQUEST
from zipmount.fsspec_fs import ZipmountFileSystem

KEYS = {"rkns_a": "rec/a.rkns", "rkns_b": "rec/sub/b.rkns"}
CHECK_ZARR3 = Path(__file__).resolve().parent / "zarr3" / "check_fsspec_zarr3.py"


@pytest.fixture(scope="module")
def s3opts(s3) -> dict:
    """s3fs options for the test server (good credentials, the test CA)."""
    return {"endpoint_url": s3.endpoint_url, "key": s3.access_key, "secret": s3.secret_key,
            "client_kwargs": {"verify": str(s3.ca_bundle), "region_name": s3.region}}


@pytest.fixture
def zmfs(s3opts, tmp_path):
    """Build a filesystem with a cold cache of its own (a fresh cache dir)."""

    def build(url: str, **options) -> ZipmountFileSystem:
        options.setdefault("cache_dir", str(tmp_path / "cache"))
        return fsspec.filesystem("zipmount", fo=url, target_options=s3opts,
                                 skip_instance_cache=True, **options)

    return build


def _xarray_dataset() -> tuple[bytes, dict[str, np.ndarray]]:
    """A zarr v2 group as xarray writes one (``_ARRAY_DIMENSIONS``), in a stored zip."""
    rng = np.random.default_rng(5)
    arrays = {"time": np.arange(6000) / 256.0,
              "eeg": rng.normal(0, 40, size=(3, 6000)).astype(np.float32)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # what zarr.ZipStore writes, without a temp file
        store: dict[str, bytes] = {}
        root = zarr.group(store=store)
        for name, dims, chunks in (("time", ["time"], (1024,)), ("eeg", ["channel", "time"], (1, 1024))):
            # No fill value: xarray would mask the samples equal to it (time 0.0) as NaN.
            arr = root.create_dataset(name, data=arrays[name], chunks=chunks, fill_value=None)
            arr.attrs["_ARRAY_DIMENSIONS"] = dims
        zarr.consolidate_metadata(store)
        for key, value in sorted(store.items()):
            zf.writestr(key, bytes(value))
    return buf.getvalue(), arrays


@pytest.fixture(scope="module")
def odd(s3) -> str:
    """Bucket `fsspec-odd`: an archive with an encrypted member, an xarray dataset."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("secret.txt", b"?" * 100)
        zf.writestr("public.txt", b"public\n")
    data = bytearray(buf.getvalue())
    # Set the "encrypted" flag of secret.txt in its local header and its central entry.
    data[6] |= 1
    central = data.index(b"PK\x01\x02")
    data[central + 8] |= 1
    s3.create_bucket("fsspec-odd")
    s3.put_bytes("fsspec-odd", "encrypted.zip", bytes(data))
    s3.put_bytes("fsspec-odd", "dataset.zip", _xarray_dataset()[0])
    return "fsspec-odd"


def _requests(fs: ZipmountFileSystem) -> tuple[int, int]:
    return fs.stats.counters["requests"], fs.stats.counters["bytes_fetched"]


def _check_group_v2(group, expected) -> None:
    for path, want in expected.arrays.items():
        arr = group[path]
        assert arr.shape == want.shape and arr.dtype == want.dtype, path
        np.testing.assert_array_equal(arr[...], want, err_msg=path)
    for node, attrs in expected.attrs.items():
        assert dict((group if node == "" else group[node]).attrs) == attrs, node


# -- the tree -----------------------------------------------------------------------------------

def test_one_archive_lists_and_reads_every_member_equal_to_the_source(zmfs, samples):
    fs = zmfs("s3://data/single/deflated.zip")
    expected = samples.deflated
    assert set(fs.find("", withdirs=False)) == set(expected.files)
    dirs = {p for p, d in fs.find("", withdirs=True, detail=True).items() if d["type"] == "directory"}
    assert dirs == expected.dirs
    got = fs.cat(sorted(expected.files))
    assert got == expected.files
    for name, content in expected.files.items():
        assert fs.info(name)["size"] == len(content)
        assert fs.isfile(name) and not fs.isdir(name)
    top = {d["name"]: d["type"] for d in fs.ls("")}
    assert top == {n: "file" if size is not None else "directory"
                   for n, size in expected.children("").items()}


def test_byte_ranges_of_cat_file_open_and_cat_ranges_equal_the_source(zmfs, samples):
    fs = zmfs("s3://data/single/stored.zip")
    name, content = max(samples.stored.files.items(), key=lambda kv: len(kv[1]))
    n = len(content)
    assert fs.cat_file(name, 1000, 5000) == content[1000:5000]
    assert fs.cat_file(name, -100) == content[-100:]
    assert fs.cat_file(name, n - 10, n + 100) == content[n - 10:]
    with fs.open(name, "rb") as f:
        f.seek(n // 2)
        assert f.read(777) == content[n // 2:n // 2 + 777]
        assert f.size == n
    starts, ends = [0, 10, n - 5], [10, 4096, n]
    want = [content[s:e] for s, e in zip(starts, ends, strict=True)]
    assert fs.cat_ranges([name] * 3, starts, ends) == want


def test_a_read_of_a_stored_member_fetches_that_member_and_no_more(zmfs, samples):
    fs = zmfs("s3://data/single/stored.zip")
    name, content = max(samples.stored.files.items(), key=lambda kv: len(kv[1]))
    middle = len(content) // 2
    before = _requests(fs)
    with fs.open(name, "rb") as f:
        f.seek(middle)
        assert f.read(1000) == content[middle:middle + 1000]
    requests, nbytes = (a - b for a, b in zip(_requests(fs), before, strict=True))
    # A member of a few MB is fetched whole by its first read (zarr reads chunks whole), in
    # the block cache's largest requests: no bytes beyond the member, its local header and the
    # 64 KiB blocks at its ends; no read-ahead buffer of the file object on top.
    assert nbytes <= len(content) + 2 * 64 * 1024, nbytes
    assert requests <= 1 + len(content) // MAX_REQUEST, requests


def test_a_prefix_shows_each_archive_as_a_directory(zmfs, samples):
    fs = zmfs("s3://data/rec/")
    assert fs.ls("", detail=False) == ["a.rkns", "c.zip", "notes.txt", "sub"]
    assert fs.ls("sub", detail=False) == ["sub/b.rkns"]
    assert fs.isdir("a.rkns") and fs.isfile("notes.txt")
    name, content = next(iter(samples.small_c.files.items()))
    assert fs.cat(f"c.zip/{name}") == content


def test_a_chained_url_with_a_prefix_lists_the_archives_too(s3opts, tmp_path):
    fs, path = fsspec.core.url_to_fs("zipmount::s3://data/rec/", s3=s3opts,
                                     zipmount={"cache_dir": str(tmp_path)})
    assert isinstance(fs, ZipmountFileSystem) and path == ""
    assert fs.ls("", detail=False) == ["a.rkns", "c.zip", "notes.txt", "sub"]


def test_ukey_follows_the_member_version(zmfs, samples):
    fs = zmfs("s3://data/single/stored.zip")
    names = sorted(samples.stored.files)
    keys = {fs.ukey(n) for n in names}
    assert len(keys) == len(names) and all(keys)
    assert fs.ukey(names[0]) == fs.ukey(names[0])


# -- zarr -----------------------------------------------------------------------------------------

def test_zarr2_open_over_a_chained_mapper_equals_the_source(s3opts, samples, tmp_path):
    mapper = fsspec.get_mapper("zipmount::s3://data/rec/sub/b.rkns", s3=s3opts,
                               zipmount={"cache_dir": str(tmp_path)})
    group = zarr.open(mapper, mode="r")
    _check_group_v2(group, samples.rkns_b)


def test_zarr2_fsstore_reads_consolidated_windows(s3opts, samples, tmp_path):
    store = zarr.storage.FSStore("zipmount::s3://data/rec/a.rkns", mode="r", s3=s3opts,
                                 zipmount={"cache_dir": str(tmp_path)})
    group = zarr.open_consolidated(store, mode="r")
    _check_group_v2(group, samples.rkns_a)
    want = samples.rkns_a.arrays["signals/eeg/data"]
    rng = np.random.default_rng(1)
    for _ in range(20):
        ch, start = int(rng.integers(0, want.shape[0])), int(rng.integers(0, want.shape[1] - 1000))
        np.testing.assert_array_equal(group["signals/eeg/data"][ch, start:start + 1000],
                                      want[ch, start:start + 1000])


def test_cat_of_many_chunks_reads_them_concurrently_one_range_each(zmfs, samples, monkeypatch):
    fs = zmfs("s3://data/rec/a.rkns")
    chunks = sorted(k for k in samples.rkns_a.files if k.startswith("signals/eeg/data/") and
                    not k.endswith((".zarray", ".zattrs")))
    assert len(chunks) >= 8
    in_flight, peak, lock = 0, 0, threading.Lock()
    real_cat_file = ZipmountFileSystem.cat_file

    def counting_cat_file(self, path, *args, **kwargs):  # the real member read, counted
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        try:
            # Long enough that reads dispatched at once overlap whatever the cache serves;
            # the requests themselves may be merged by read-ahead (fewer, bigger ranges).
            time.sleep(0.02)
            return real_cat_file(self, path, *args, **kwargs)
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr(ZipmountFileSystem, "cat_file", counting_cat_file)
    before = _requests(fs)
    got = fs.cat(chunks)
    requests, nbytes = (a - b for a, b in zip(_requests(fs), before, strict=True))
    assert got == {k: samples.rkns_a.files[k] for k in chunks}
    assert peak > 1, "the chunks were read one after the other"
    total = sum(len(samples.rkns_a.files[k]) for k in chunks)
    # One range per chunk at most (neighbours sharing a 64 KiB block may share one), and the
    # bytes fetched are the chunks' own, rounded out to the 64 KiB blocks they touch.
    assert requests <= len(chunks), requests
    assert nbytes <= total + 2 * 64 * 1024 * len(chunks), (nbytes, total)


def _zarr3(py: Path, tmp_path: Path, url: str, s3opts: dict, expected, *args: str):
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"s3": s3opts, "zipmount": {"cache_dir": str(tmp_path / "c")}}))
    npz = save_expected_npz(expected, tmp_path / "expected.npz")
    return run([py, CHECK_ZARR3, url, options, npz, *args], timeout=180)


@pytest.mark.parametrize(("key", "which", "fmt"), [("v3/group.zip", "v3", "3"),
                                                   ("rec/a.rkns", "rkns_a", "2")])
def test_zarr3_open_group_over_a_chained_url_equals_the_source(zarr3_python, s3opts, samples,
                                                               tmp_path, key, which, fmt):
    r = _zarr3(zarr3_python, tmp_path, f"zipmount::s3://data/{key}", s3opts,
               getattr(samples, which), "--zarr-format", fmt)
    assert r.rc == 0 and r.stdout.startswith("OK "), r.describe()
    assert f"zarr_format {fmt}" in r.stdout


def test_zarr3_fsspec_check_detects_a_mismatch(zarr3_python, s3opts, samples, tmp_path):
    """Guard against a check that always passes: wrong expectations must fail."""
    arrays = dict(samples.v3.arrays)
    arrays["raw/counts"] = arrays["raw/counts"] + 1
    wrong = dataclasses.replace(samples.v3, arrays=arrays)
    r = _zarr3(zarr3_python, tmp_path, "zipmount::s3://data/v3/group.zip", s3opts, wrong,
               "--zarr-format", "3")
    assert r.rc == 1 and "raw/counts" in r.stderr, r.describe()


def test_xarray_open_zarr_over_a_chained_url_equals_the_source(zarr3_python, s3opts, odd,
                                                               samples, tmp_path):
    expected = dataclasses.replace(samples.small_c, arrays=_xarray_dataset()[1], attrs={})
    r = _zarr3(zarr3_python, tmp_path, f"zipmount::s3://{odd}/dataset.zip", s3opts, expected,
               "--xarray")
    assert r.rc == 0 and r.stdout.startswith("OK 2 arrays"), r.describe()


# -- the recipe swap, pickling ----------------------------------------------------------------------

def test_fo_an_open_s3fs_file_replaces_zipfilesystem_in_one_line(s3opts, samples, tmp_path):
    s3 = fsspec.filesystem("s3", **s3opts)
    with s3.open("data/rec/a.rkns", "rb") as f:
        fs = ZipmountFileSystem(fo=f, cache_dir=str(tmp_path))
        group = zarr.open_consolidated(fs.get_mapper(""), mode="r")
        np.testing.assert_array_equal(group["signals/ecg/data"][...],
                                      samples.rkns_a.arrays["signals/ecg/data"])
        assert fs.tree.slot.obj.etag == f.details["ETag"]


def test_a_pickle_is_small_and_rebuilds_the_filesystem_in_another_process(s3opts, samples,
                                                                         tmp_path):
    s3 = fsspec.filesystem("s3", **s3opts)
    with s3.open("data/single/stored.zip", "rb") as f:
        fs = ZipmountFileSystem(fo=f, cache_dir=str(tmp_path / "a"))
    blob = pickle.dumps(fs)
    assert len(blob) < 4096 and b"S3File" not in blob
    name = sorted(samples.stored.files)[0]
    (tmp_path / "fs.pickle").write_bytes(blob)
    script = ("import pickle, sys; fs = pickle.load(open(sys.argv[1], 'rb')); "
              "sys.stdout.buffer.write(fs.cat_file(sys.argv[2]))")
    r = run([sys.executable, "-c", script, tmp_path / "fs.pickle", name], timeout=60)
    assert r.rc == 0, r.describe()
    assert r.stdout_bytes == samples.stored.files[name]


def test_a_second_process_reads_from_the_persisted_index_and_disk_cache_without_requests(
        s3opts, samples, tmp_path):
    name = sorted(samples.rkns_a.files)[-1]
    script = (
        "import sys, fsspec; "
        f"fs = fsspec.filesystem('zipmount', fo='s3://data/rec/a.rkns', target_options={s3opts!r}, "
        "cache_dir=sys.argv[1]); data = fs.cat_file(sys.argv[2]); "
        "print(len(data), fs.stats.counters['requests'])")
    first = run([sys.executable, "-c", script, tmp_path / "cache", name], timeout=60)
    second = run([sys.executable, "-c", script, tmp_path / "cache", name], timeout=60)
    assert first.rc == 0 and second.rc == 0, first.describe() + second.describe()
    size = len(samples.rkns_a.files[name])
    assert first.stdout.split() == [str(size), first.stdout.split()[1]]
    assert int(first.stdout.split()[1]) > 0
    assert second.stdout.split() == [str(size), "0"]


# -- errors -------------------------------------------------------------------------------------------

def test_a_missing_object_is_file_not_found(zmfs):
    with pytest.raises(FileNotFoundError):
        zmfs("s3://data/single/nothing-here.zip")


def test_an_object_that_is_not_a_zip_is_an_oserror_with_one_line(zmfs):
    with pytest.raises(OSError) as info:
        zmfs("s3://data/bad/notzip.zip")
    assert info.value.errno == errno.EIO
    assert "\n" not in str(info.value) and "notzip.zip" in str(info.value)


def test_missing_members_are_file_not_found_and_a_zarr_mapper_sees_missing_keys(zmfs, samples):
    fs = zmfs("s3://data/single/stored.zip")
    with pytest.raises(FileNotFoundError):
        fs.cat_file("no/such/member")
    with pytest.raises(FileNotFoundError):
        fs.info("no/such/member")
    assert not fs.exists("no/such/member")
    name = sorted(samples.stored.files)[0]
    got = fs.cat([name, "missing-a", "missing-b"], on_error="return")
    assert got[name] == samples.stored.files[name]
    assert isinstance(got["missing-a"], FileNotFoundError)
    assert "missing-b" not in fs.get_mapper("")


def test_an_encrypted_member_is_permission_denied(zmfs, odd):
    fs = zmfs(f"s3://{odd}/encrypted.zip")
    assert fs.cat_file("public.txt") == b"public\n"
    with pytest.raises(PermissionError) as info:
        fs.cat_file("secret.txt")
    assert info.value.errno == errno.EACCES


def test_writes_are_refused_as_read_only(zmfs, samples):
    fs = zmfs("s3://data/single/stored.zip")
    name = sorted(samples.stored.files)[0]
    for call in (lambda: fs.open(name, "wb"), lambda: fs.pipe_file("new", b"x"),
                 lambda: fs.rm(name), lambda: fs.mkdir("d"), lambda: fs.mv(name, "x")):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EROFS
    assert fs.cat_file(name) == samples.stored.files[name]


def _stored_zip(seed: int) -> tuple[bytes, dict[str, bytes]]:
    rng = np.random.default_rng(seed)
    files = {name: rng.bytes(2**20) for name in ("a.bin", "b.bin")}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue(), files


def test_a_replaced_object_fails_reads_as_stale_never_mixing_versions(s3, odd, zmfs):
    old, old_files = _stored_zip(1)
    new, new_files = _stored_zip(2)
    assert len(old) == len(new)  # same layout: only the ETag tells the versions apart
    s3.put_bytes(odd, "changing.zip", old)
    fs = zmfs(f"s3://{odd}/changing.zip")
    assert fs.cat_file("a.bin", 0, 1000) == old_files["a.bin"][:1000]
    s3.put_bytes(odd, "changing.zip", new)
    with pytest.raises(OSError) as info:
        fs.cat_file("b.bin", 2**19, 2**19 + 1000)
    assert info.value.errno == errno.ESTALE
    # The failed read made the archive revalidate (in the background): the new version shows.
    deadline = time.monotonic() + 20
    while True:
        try:
            got = fs.cat_file("b.bin")
        except OSError as exc:
            assert exc.errno == errno.ESTALE
            got = None
        if got is not None:
            assert got == new_files["b.bin"]
            break
        assert time.monotonic() < deadline, "the new version never showed"
        time.sleep(0.2)
    assert fs.cat_file("a.bin") == new_files["a.bin"]


def test_filesystems_of_one_cache_dir_share_one_engine_and_memory_cap(zmfs, tmp_path):
    one = zmfs("s3://data/single/stored.zip", memory="64MiB")
    two = zmfs("s3://data/rec/", memory="128MiB")
    other = zmfs("s3://data/single/stored.zip", cache_dir=str(tmp_path / "elsewhere"))
    cache = one.tree.slot.reach.cache
    assert two.tree.reach.cache is cache and other.tree.slot.reach.cache is not cache
    assert cache.memory.capacity == 64 * 2**20


def test_root_serves_a_subdirectory_of_the_archive(zmfs, samples):
    fs = zmfs("s3://data/rec/a.rkns", root="signals")
    want = samples.rkns_a.subtree("signals")
    assert set(fs.find("")) == set(want.files)
    name = sorted(want.files)[0]
    assert fs.cat_file(name) == want.files[name]


def test_a_member_opens_through_one_chained_url_and_fo_may_be_an_openfile(s3opts, samples,
                                                                          tmp_path):
    zattrs = samples.rkns_a.files[".zattrs"]
    with fsspec.open("zipmount://.zattrs::s3://data/rec/a.rkns", "rb", s3=s3opts,
                     zipmount={"cache_dir": str(tmp_path)}) as f:
        assert f.read() == zattrs
    fs = ZipmountFileSystem(fo=fsspec.open("s3://data/rec/a.rkns", "rb", **s3opts),
                            cache_dir=str(tmp_path))
    assert fs.cat_file(".zattrs") == zattrs


def test_closing_a_shared_engine_lets_the_next_filesystem_start_afresh(zmfs, tmp_path):
    from zipmount.engine import Engine

    first = zmfs("s3://data/single/stored.zip")
    Engine.close_shared(str(tmp_path / "cache"))
    second = zmfs("s3://data/single/stored.zip")
    assert second.tree.slot.reach.cache is not first.tree.slot.reach.cache
    name = sorted(second.find(""))[0]
    assert second.cat_file(name) and second.stats.counters["requests"] >= 1


def test_a_filesystem_inherited_by_a_forked_child_reads_there(zmfs, samples):
    """As PyTorch DataLoader workers get it: the parent's threads and event loop are gone."""
    fs = zmfs("s3://data/single/stored.zip")
    names = sorted(samples.stored.files)
    assert fs.cat_file(names[0]) == samples.stored.files[names[0]]  # threads running now
    got = in_forked_child(fs.cat, names[1:])
    assert got == {n: samples.stored.files[n] for n in names[1:]}


# -- paths in the caller's form, zarr-python 3 listings ------------------------------------------------

def test_ls_find_glob_info_and_walk_answer_in_the_form_they_were_asked(zmfs, samples):
    """As fsspec's own filesystems do: asked ``/signals``, answer ``/signals/...``."""
    fs = zmfs("s3://data/rec/a.rkns")
    files = samples.rkns_a.files
    top = "signals"
    below = {k for k in files if k.startswith(f"{top}/")}
    children = samples.rkns_a.children(top)
    name = sorted(below)[0]
    for lead in ("", "/"):
        asked = f"{lead}{top}"
        assert set(fs.ls(asked, detail=False)) == {f"{asked}/{c}" for c in children}, lead
        assert {d["name"] for d in fs.ls(asked)} == {f"{asked}/{c}" for c in children}, lead
        assert set(fs.find(asked)) == {lead + k for k in below}, lead
        assert set(fs.glob(f"{asked}/*")) == {f"{asked}/{c}" for c in children}, lead
        assert fs.info(lead + name)["name"] == lead + name
        walked = {f"{root}/{f}" for root, _, fnames in fs.walk(asked) for f in fnames}
        assert walked == {lead + k for k in below}, lead
        assert fs.cat(lead + name) == files[name]
    assert {d["name"] for d in fs.ls("/")} == {f"/{c}" for c in samples.rkns_a.children("")}
    assert set(fs.find("/")) == {f"/{k}" for k in files}
    assert fs.info("/")["type"] == "directory" and fs.exists("/signals")


def _zarr_v2_members(files: dict[str, bytes]) -> list[str]:
    """The members below the root of a zarr v2 hierarchy stored as ``files`` (groups end in /)."""
    return sorted([k[: -len("/.zgroup")] + "/" for k in files if k.endswith("/.zgroup")]
                  + [k[: -len("/.zarray")] for k in files if k.endswith("/.zarray")])


@pytest.mark.parametrize("which", ["rkns_a", "rkns_b"])  # consolidated metadata, and none
def test_zarr3_lists_every_member_at_every_depth_of_an_rkns_group(zarr3_python, s3opts, samples,
                                                                 tmp_path, which):
    expected = _zarr_v2_members(getattr(samples, which).files)
    assert any(m.count("/") >= 2 for m in expected)  # members below the first level exist
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"s3": s3opts, "zipmount": {"cache_dir": str(tmp_path / "c")}}))
    r = run([zarr3_python, CHECK_ZARR3.parent / "check_members_zarr3.py",
             f"zipmount::s3://data/{KEYS[which]}", options], timeout=180)
    assert r.rc == 0, r.describe()
    got = json.loads(r.stdout)
    assert got["from_url"] == expected
    assert got["open_group"] == expected


# -- versions: listings caches, pickles, fork ----------------------------------------------------------

def _until_new_version(read, want: bytes, seconds: float = 20.0) -> None:
    """Read until ``want`` shows; ESTALE meanwhile is allowed, any other answer fails."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            got = read()
        except OSError as exc:
            assert exc.errno == errno.ESTALE, exc
            got = None
        if got is not None:
            assert got == want
            return
        assert time.monotonic() < deadline, "the new version never showed"
        time.sleep(0.3)


def test_the_fo_recipe_sees_a_replacement_through_the_callers_listings_cache(s3, s3opts, odd,
                                                                             tmp_path):
    old, old_files = _stored_zip(11)
    new, new_files = _stored_zip(12)
    s3.put_bytes(odd, "recipe.zip", old)
    s3fs_ = fsspec.filesystem("s3", skip_instance_cache=True, **s3opts)
    assert f"{odd}/recipe.zip" in s3fs_.ls(odd, detail=False)  # fills its listings cache
    with s3fs_.open(f"{odd}/recipe.zip", "rb") as f:
        fs = ZipmountFileSystem(fo=f, ttl=1, cache_dir=str(tmp_path))
    assert fs.cat_file("a.bin", 0, 100) == old_files["a.bin"][:100]
    s3.put_bytes(odd, "recipe.zip", new)
    _until_new_version(lambda: fs.cat_file("b.bin"), new_files["b.bin"])


@pytest.mark.parametrize(("url", "inside"), [("pinned.zip", ""), ("pinned/", "one.zip/")])
def test_an_unpickled_copy_reads_the_version_its_parent_pinned_or_fails_stale(s3, s3opts, odd,
                                                                             url, inside):
    """One archive, and a prefix of archives."""
    key = url if url.endswith(".zip") else f"{url}one.zip"
    old, old_files = _stored_zip(21)
    new, _ = _stored_zip(22)
    s3.put_bytes(odd, key, old)
    parent = ZipmountFileSystem(fo=f"s3://{odd}/{url}", target_options=s3opts, ttl=600,
                                disk_cache=False, skip_instance_cache=True)
    names = [f"{inside}a.bin", f"{inside}b.bin"]
    want = {f"{inside}{name}": data for name, data in old_files.items()}
    assert parent.cat(names) == want  # in its memory cache from now on
    blob = pickle.dumps(parent)
    s3.put_bytes(odd, key, new)
    script = ("import errno, pickle, sys\n"
              "try:\n"
              "    data = pickle.loads(sys.stdin.buffer.read()).cat_file(sys.argv[1])\n"
              "except OSError as exc:\n"
              "    print('errno', exc.errno); sys.exit(0)\n"
              "sys.stdout.buffer.write(data)\n")
    r = run([sys.executable, "-c", script, names[1]], stdin=blob, timeout=60)
    assert r.rc == 0, r.describe()
    assert r.stdout_bytes == old_files["b.bin"] or \
        r.stdout == f"errno {errno.ESTALE}\n", r.stdout_bytes[:80]
    assert parent.cat_file(names[1]) == old_files["b.bin"]  # the parent still serves v1


def test_unpickling_in_one_process_builds_one_filesystem_per_pinned_version(zmfs, samples):
    """A Dask worker unpickles the filesystem for every task: one tree, not one per task."""
    fs = zmfs("s3://data/single/stored.zip")
    copies = [pickle.loads(pickle.dumps(fs)) for _ in range(3)]
    assert copies[0] is copies[1] is copies[2] and copies[0] is not fs
    assert copies[0].tree.slot.obj == fs.tree.slot.obj
    name = sorted(samples.stored.files)[0]
    assert copies[0].cat_file(name) == samples.stored.files[name]


def _read_spread(f, size: int) -> list[bytes]:
    """1000 bytes at five places over the file: more than a 1 MiB memory cache holds."""
    got = []
    for start in (0, size // 4, size // 2, 3 * size // 4, size - 1000):
        f.seek(start)
        got.append(f.read(1000))
    return got


def _read_pipe(fd: int, pid: int, seconds: float) -> bytes:
    """Everything written to ``fd`` until the child ``pid`` exits; the child is killed if it
    takes longer than ``seconds`` (a hang must fail the test, not stall it)."""
    import select
    import signal

    parts, deadline = [], time.monotonic() + seconds
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while True:
            if not select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))[0]:
                os.kill(pid, signal.SIGKILL)
                break
            chunk = pipe.read(65536)
            if not chunk:
                break
            parts.append(chunk)
    return b"".join(parts)


def _read_open_file_in_child(f, size: int) -> list[bytes] | str:
    try:
        return _read_spread(f, size)
    except OSError as exc:
        return repr(exc)


def test_a_file_opened_before_fork_reads_in_the_child(zmfs, samples):
    """DataLoader workers fork with their dataset's files open."""
    # No disk cache and little memory: what the child reads is not in the copy of the
    # parent's cache it inherits.
    fs = zmfs("s3://data/single/stored.zip", disk_cache=False, memory="1MiB")
    (first, small), (name, content) = sorted(samples.stored.files.items(),
                                             key=lambda kv: len(kv[1]))[-2:]
    size = len(content)
    assert size > 2 * 2**20
    want = [content[s:s + 1000] for s in (0, size // 4, size // 2, 3 * size // 4, size - 1000)]
    assert fs.cat_file(first, 0, 100) == small[:100]  # the engine's threads are running
    with fs.open(name, "rb") as f:
        assert in_forked_child(_read_open_file_in_child, f, size) == want
        # A bare os.fork, as DataLoader's workers are started: the child's answer through a pipe.
        rd, wr = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.write(wr, b"".join(_read_spread(f, size)))
                code = 0
            finally:
                os._exit(code)
        os.close(wr)
        from_fork = _read_pipe(rd, pid, seconds=60)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert from_fork == b"".join(want)
        f.seek(0)
        assert f.read(100) == content[:100]  # the parent's handle is untouched
