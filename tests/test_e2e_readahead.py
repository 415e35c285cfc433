"""Read-ahead that fits the kernel: the daemon sets its mount's ``read_ahead_kb`` where it may
(root), so a sequential reader's FUSE READs arrive in 1 MiB pieces instead of 128 KiB ones.
READs are counted by the daemon itself (``zipmount stats``' ``reads``), not by tracing."""

from __future__ import annotations

import json
import os
import random
import zipfile
from io import BytesIO

import pytest
from robust.harness import stack, wait_for

from zipmount.kernel_readahead import read_ahead, read_ahead_file

MIB = 1 << 20
MEMBER = 24 * MIB


@pytest.fixture(scope="module")
def st(tmp_path_factory):
    with stack(tmp_path_factory.mktemp("readahead")) as s:
        buf = BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("big.bin", random.Random(7).randbytes(MEMBER))
            zf.writestr("small.txt", b"small")
        s.put("ra/big.zip", buf.getvalue())
        yield s


def _reads(mp) -> int:
    return json.loads(os.getxattr(mp, "user.zipmount.stats"))["reads"]


def _stream(path, chunk: int = MIB) -> int:
    total = 0
    with open(path, "rb", buffering=0) as f:
        while data := f.read(chunk):
            total += len(data)
    return total


def test_a_sequential_read_arrives_in_reads_of_at_least_one_mib(st):
    with st.mounted("ra/big.zip", proxied=False) as h:
        mp = h.mountpoint
        if os.geteuid() != 0:  # the kernel's window stays; the daemon says so in its log
            assert read_ahead(mp) is not None
            assert "kernel read-ahead" in h.stderr()
            return
        # set once the mount answers (the kernel's INIT reply would clamp an earlier setting)
        assert wait_for(lambda: read_ahead(mp) == MIB, 10), (read_ahead_file(mp), read_ahead(mp))
        before = _reads(mp)
        assert _stream(mp / "big.bin") == MEMBER
        reads = _reads(mp) - before
        # 1 MiB READs (the last one may be short, and the EOF probe is one more)
        assert reads <= MEMBER // MIB + 2, f"{reads} READs for {MEMBER // MIB} MiB"


def test_the_read_ahead_option_sets_the_window_and_bad_sizes_are_one_line_errors(st):
    if os.geteuid() == 0:
        with st.mounted("ra/big.zip", "--read-ahead", "4MiB", proxied=False) as h:
            assert wait_for(lambda: read_ahead(h.mountpoint) == 4 * MIB, 10)
            before = _reads(h.mountpoint)
            assert _stream(h.mountpoint / "big.bin", 4 * MIB) == MEMBER
            # READs stay at most 1 MiB (libfuse's max_pages): more of them in flight, not bigger
            assert _reads(h.mountpoint) - before >= MEMBER // MIB
    r = st.direct.run("mount", "s3://robust/ra/big.zip", str(st.workdir), "--read-ahead", "lots",
                      storage=True)
    assert r.rc != 0 and "Traceback" not in r.stderr, r.describe()
    assert "--read-ahead" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.describe()
