"""Plain objects of a prefix mount are pinned to their version as archives are, and the first
touch of an archive under a prefix reuses the listing (no HEAD). Requests are counted by the
test-side proxy between the daemon and a real moto S3 server."""

from __future__ import annotations

import errno
import os
import random

import pytest
from robust.harness import guarded, read_direct, read_file, stack, wait_for
from robust.zips import plain_zip, random_files

STALE = (errno.ESTALE, errno.EIO)


@pytest.fixture(scope="module")
def st(tmp_path_factory):
    with stack(tmp_path_factory.mktemp("prefix-changes")) as s:
        yield s


def _reads(path) -> bytes | None:
    try:
        return read_file(path)
    except OSError:  # ESTALE until the relisting that the 412 started is done
        return None


def _range_gets(st):
    return st.proxy.log(lambda r: r.is_range_get)


def test_a_plain_object_is_read_with_if_match_and_never_mixes_two_versions(st):
    v1, v2 = (random.Random(f"plain{v}").randbytes(300_000) for v in (1, 2))
    etag1 = st.put("plainpin/events.tsv", v1)
    st.put("plainpin/a.zip", plain_zip({"x.txt": b"x"}))
    with st.mounted("plainpin/", "--ttl", "3600", "--timeout", "5") as h:
        mp = h.mountpoint
        st.proxy.clear()
        assert read_direct(mp / "events.tsv", 0, 100_000) == v1[:100_000]
        gets = _range_gets(st)
        assert gets and {r.header("If-Match") for r in gets} == {etag1}
        st.put("plainpin/events.tsv", v2)
        # The rest was never fetched: its GET carries v1's ETag, the store answers 412.
        out = guarded(lambda: read_direct(mp / "events.tsv", 200_000, 100_000), 20)
        assert out.error in STALE or out.value == v1[200_000:300_000], out
        # The 412 expired the listing: new opens see v2 whole, never a mix.
        assert wait_for(lambda: _reads(mp / "events.tsv") == v2, 15, 0.2), "v2 never showed"
        assert h.proc.poll() is None


def test_opening_an_archive_under_a_prefix_sends_no_head_and_reads_a_small_member_in_two_gets(st):
    files = random_files("firsttouch", 12, 64 * 1024)
    for i in range(3):
        st.put(f"firsttouch/rec{i}.zip", plain_zip(files))
    name = sorted(files)[5]
    with st.mounted("firsttouch/", "--ttl", "3600") as h:
        mp = h.mountpoint
        assert sorted(os.listdir(mp)) == ["rec0.zip", "rec1.zip", "rec2.zip"]
        st.proxy.clear()
        assert read_direct(mp / "rec0.zip" / name, 0, 1 << 20) == files[name]
        log = st.proxy.log()
        assert [r.method for r in log if r.method != "GET"] == [], "the listing's identity is reused"
        # the tail (end records and the small central directory), then the local header + data
        assert len(_range_gets(st)) == 2, [(r.method, r.headers.get("Range")) for r in log]
        # After `prefetch --metadata-only`, a member's first read is one request.
        r = st.zm.run("prefetch", "--metadata-only", str(mp / "rec1.zip"), str(mp / "rec2.zip"))
        assert r.rc == 0, r.describe()
        st.proxy.clear()
        assert read_direct(mp / "rec1.zip" / name, 0, 1 << 20) == files[name]
        assert len(_range_gets(st)) == 1, [r.headers.get("Range") for r in st.proxy.log()]
