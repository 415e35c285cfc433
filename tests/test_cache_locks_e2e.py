"""A mount whose cache directory's ledger lock is held by a stopped process (SIGSTOP, a
debugger): the mount lists and reads archives it never opened within its own ``--timeout``,
through a real FUSE mount and the S3 server."""

from __future__ import annotations

import os

import pytest
from robust.harness import guarded, read_file, stack
from robust.zips import plain_zip, random_files
from support.locks import stopped_holder


@pytest.fixture(scope="module")
def st(tmp_path_factory):
    with stack(tmp_path_factory.mktemp("locks")) as s:
        yield s


def test_an_archive_never_opened_lists_and_reads_while_a_stopped_process_holds_the_ledger(st):
    files = random_files("locks", 3, 200_000)
    for name in ("a.zip", "b.zip"):
        st.put(f"locks/{name}", plain_zip(files))
    cache = st.workdir / "locks-cache"
    with st.mounted("locks/", "--timeout", "5", "--cache-dir", str(cache)) as h:
        mp = h.mountpoint
        assert sorted(os.listdir(mp)) == ["a.zip", "b.zip"]
        with stopped_holder(cache / "ledger"):
            # Opening an archive writes its index and view to the cache: those writes must
            # give up on the lock, not wait for it (a liveness bound, not a timing check).
            listed = guarded(lambda: sorted(os.listdir(mp / "a.zip")), 60)
            assert listed.error is None and listed.value == sorted(files), listed
            name = sorted(files)[0]
            got = guarded(lambda: read_file(mp / "b.zip" / name), 60)
            assert got.error is None and got.value == files[name], got
