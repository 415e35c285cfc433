"""Version pinning when the store's ETags are not plain strong quoted ones.

Some S3-compatible stores list ETags without quotes, some send weak ETags (``W/"..."``), some
none at all. Pinning must never silently switch off: strong ETags (quoted by zipmount if need
be) go out as ``If-Match``; weak or missing ones as ``If-Unmodified-Since`` the object's mtime,
and every answer's ETag, Last-Modified and total size are checked against the pinned version.
Either way a read of a replaced object is ESTALE/EIO or the old version's bytes, never the new.
"""

from __future__ import annotations

import errno
import random
import time

import pytest
from robust.harness import guarded, read_direct, stack
from robust.zips import plain_zip

BIG = 17 * 2**20  # bigger than what is fetched and CRC-checked whole on open
STALE = (errno.ESTALE, errno.EIO)


@pytest.fixture(scope="module")
def st(tmp_path_factory):
    with stack(tmp_path_factory.mktemp("pinning")) as s:
        yield s


@pytest.mark.parametrize(("style", "condition"), [("unquoted", "if-match"),
                                                  ("weak", "if-unmodified-since"),
                                                  ("none", "if-unmodified-since")])
def test_a_replaced_object_never_mixes_versions_whatever_the_etag_style(st, style, condition):
    v1 = {"big.bin": random.Random(f"{style}1").randbytes(BIG), "small.bin": b"1" * 5000}
    v2 = {"big.bin": random.Random(f"{style}2").randbytes(BIG), "small.bin": b"2" * 5000}
    key = f"pinning/{style}.zip"
    st.put(key, plain_zip(v1))
    st.proxy.clear()
    st.proxy.etag_style = style
    if style == "none":
        st.proxy.drop_headers = {"if-match"}  # a store without ETags has nothing to match
    try:
        with st.mounted(key, "--ttl", "3600", "--timeout", "5") as h:
            mp = h.mountpoint
            assert read_direct(mp / "big.bin", 0, 65536) == v1["big.bin"][:65536]
            gets = [r for r in st.proxy.log() if r.is_range_get]
            assert gets and all(r.header(condition) for r in gets), \
                f"range GETs without {condition}: pinning switched off"
            time.sleep(1.1)  # Last-Modified has a resolution of one second
            st.put(key, plain_zip(v2))  # same layout and sizes, other bytes
            offset = 12 * 2**20
            out = guarded(lambda: read_direct(mp / "big.bin", offset, 65536), 20)
            old, new = (v["big.bin"][offset:offset + 65536] for v in (v1, v2))
            assert out.value != new, "bytes of the new version were served as the old one"
            assert out.error in STALE or out.value == old, out
    finally:
        st.proxy.etag_style = None
        st.proxy.drop_headers = set()
