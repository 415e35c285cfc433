"""Fixtures for zipmount's end-to-end tests.

Session-wide: one real `moto_server` over HTTPS (CA and certificate made here), with IAM
authentication enforced after the sample archives are uploaded to bucket `data`:

    s3://data/single/stored.zip      generic archive, every member ZIP_STORED, implied dirs
    s3://data/single/deflated.zip    same files, text members deflated, implied dirs
    s3://data/single/explicit.zip    same files, deflated, explicit directory entries
    s3://data/rec/a.rkns             zarr v2 group (RKNS-like), consolidated metadata
    s3://data/rec/sub/b.rkns         zarr v2 group, nested chunk keys, no consolidated metadata
    s3://data/rec/c.zip              small generic archive with explicit dirs
    s3://data/rec/notes.txt          not an archive: a plain file of a prefix mount (--archives-only hides it)
    s3://data/v3/group.zip           zarr v3 group (bytes, gzip, sharding codecs)
    s3://data/bad/notzip.zip         random bytes named .zip
    s3://data/bad/truncated.zip      first half of a real archive

Tests are marked by the fixtures they use, not by their file name (``pytest_collection_modifyitems``):
``fuse`` when a test mounts (it requests ``fuse``, ``zm`` or a robust-harness ``st``, directly or
through another fixture), ``s3`` when it talks to an S3 server process (``s3``, ``private_s3``,
``st``). ``make unit`` runs ``-m "not fuse and not s3"``. A test marked ``fuse`` FAILS (never
skips) with a message saying so when /dev/fuse or fusermount is missing.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import archives, marks  # noqa: E402
from support.archives import ArchiveContents  # noqa: E402
from support.mount import (  # noqa: E402
    Zipmount,
    cleanup,
    force_unmount,
    fusermount_exe,
    kill_pids,
    mounts_under,
    pids_with_marker,
    zipmount_exe,
)
from support.s3server import MotoS3Server, moto_s3_server  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BUCKET = "data"


# What a fixture needs, by name; a test needs what its whole fixture closure needs (a fixture
# that requests ``zm`` or ``s3`` inherits it). ``st`` is the robust harness's stack
# (tests/robust/harness.py): a moto server behind a fault proxy, whose tests mount.
FIXTURE_NEEDS = {
    "fuse": ("fuse",),
    "st": ("fuse", "s3"),
    "fm": ("fuse", "s3"),  # tests/test_e2e_fidelity.py: a mount of the same stack
    "s3": ("s3",),
    "private_s3": ("s3",),
}


FIXTURE_MARKS = ("fuse", "s3")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuse: mounts a real FUSE file system (FAILS without FUSE)")
    config.addinivalue_line("markers", "s3: talks to a real S3 server process on loopback")
    config.addinivalue_line("markers", "model: the reference-model state machines (tests/model), "
                            "below FUSE and S3 but ~2 min")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        needs = {n for f in getattr(item, "fixturenames", ()) for n in FIXTURE_NEEDS.get(f, ())}
        for mark in sorted(needs):
            item.add_marker(mark)


def fuse_problem() -> str | None:
    """Why FUSE mounts cannot work here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (load the fuse module / run the container with --device /dev/fuse)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if fusermount_exe() is None:
        return "neither fusermount nor fusermount3 is on PATH (apt-get install fuse3 or fuse)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Runs before any fixture of the test: FUSE missing means FAIL, never skip. Tells the
    helpers that mount or start servers what this test is marked (``support.marks``)."""
    os.environ[marks.ENV] = ",".join(m for m in FIXTURE_MARKS if item.get_closest_marker(m))
    if item.get_closest_marker("fuse") is None:
        return
    problem = fuse_problem()
    if problem:
        pytest.fail(f"this test mounts FUSE, and {problem}", pytrace=False)
    if not zipmount_exe().exists():
        pytest.fail(
            f"{zipmount_exe()} not found: install the package into this venv "
            f"(pip install -e '.[test]' or `make test`)",
            pytrace=False,
        )


# A test that hangs on a stuck FUSE call would hang the whole run. After this many seconds the
# watchdog kills the test's zipmount daemons and lazily detaches their mounts, so the blocked
# system calls return an error and the test fails instead of hanging.
E2E_TEST_TIMEOUT = float(os.environ.get("ZIPMOUNT_E2E_TEST_TIMEOUT", "240"))


@pytest.fixture(autouse=True)
def _mount_watchdog(request: pytest.FixtureRequest):
    if "zm" not in request.fixturenames:
        yield
        return
    zm_dir = request.getfixturevalue("zm").workdir
    fired = threading.Event()

    def abort() -> None:
        fired.set()
        kill_pids(pids_with_marker(str(zm_dir)), grace=2)
        for mp in mounts_under(zm_dir):
            force_unmount(mp)

    timer = threading.Timer(E2E_TEST_TIMEOUT, abort)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    if fired.is_set():
        pytest.fail(
            f"test ran longer than {E2E_TEST_TIMEOUT:.0f}s: its zipmount daemons were killed "
            "and mounts detached by the watchdog",
            pytrace=False,
        )


# --------------------------------------------------------------------------------------------
# sample data
# --------------------------------------------------------------------------------------------
@dataclass
class Samples:
    stored: ArchiveContents
    deflated: ArchiveContents
    explicit: ArchiveContents
    rkns_a: ArchiveContents
    rkns_b: ArchiveContents
    small_c: ArchiveContents
    v3: ArchiveContents
    notes: bytes
    notzip: bytes
    truncated: bytes

    def objects(self) -> dict[str, bytes]:
        return {
            "single/stored.zip": self.stored.data,
            "single/deflated.zip": self.deflated.data,
            "single/explicit.zip": self.explicit.data,
            "rec/a.rkns": self.rkns_a.data,
            "rec/sub/b.rkns": self.rkns_b.data,
            "rec/c.zip": self.small_c.data,
            "rec/notes.txt": self.notes,
            "v3/group.zip": self.v3.data,
            "bad/notzip.zip": self.notzip,
            "bad/truncated.zip": self.truncated,
        }

    def by_key(self, key: str) -> ArchiveContents:
        return {
            "single/stored.zip": self.stored,
            "single/deflated.zip": self.deflated,
            "single/explicit.zip": self.explicit,
            "rec/a.rkns": self.rkns_a,
            "rec/sub/b.rkns": self.rkns_b,
            "rec/c.zip": self.small_c,
            "v3/group.zip": self.v3,
        }[key]


@pytest.fixture(scope="session")
def samples() -> Samples:
    small = archives.generic_archive(2, compression="mixed", explicit_dirs=True, big=False)
    return Samples(
        stored=archives.generic_archive(1, compression="stored"),
        deflated=archives.generic_archive(1, compression="mixed"),
        explicit=archives.generic_archive(1, compression="mixed", explicit_dirs=True),
        rkns_a=archives.rkns_v2_archive(7),
        rkns_b=archives.rkns_v2_archive(8, nested_chunks=True, consolidated=False),
        small_c=small,
        v3=archives.zarr_v3_archive(11),
        notes=b"plain text, not an archive\n" * 10,
        notzip=archives.not_a_zip(3),
        truncated=archives.truncated_zip(small),
    )


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def s3(e2e_dir: Path, samples: Samples):
    """The running server, bucket `data` filled, IAM auth enforced (good keys: s3.access_key,
    s3.secret_key)."""
    with moto_s3_server(e2e_dir / "s3") as server:
        server.create_bucket(BUCKET)
        for key, data in samples.objects().items():
            server.put_bytes(BUCKET, key, data)
        server.enable_auth()
        yield server


@pytest.fixture(scope="session")
def other_ca(e2e_dir: Path) -> Path:
    """A CA certificate unrelated to the server's: for the wrong-CA test."""
    from support.tlsgen import make_ca

    return make_ca(e2e_dir / "other-ca", "unrelated CA").cert_path


@pytest.fixture(scope="session")
def fuse() -> Path:
    """Requested by every test (or fixture) that mounts; marks it ``fuse``. The fusermount
    executable (``pytest_runtest_setup`` has checked it exists)."""
    exe = fusermount_exe()
    assert exe is not None, "pytest_runtest_setup checks FUSE before any fixture"
    return Path(exe)


@pytest.fixture(scope="session")
def zm(s3: MotoS3Server, e2e_dir: Path, fuse: Path):
    """Runs the zipmount CLI against the test server with good credentials. At session end,
    fails if any mount or daemon under the session directory was left behind."""
    runner = Zipmount(
        workdir=e2e_dir / "zm",
        endpoint_url=s3.endpoint_url,
        ca_bundle=s3.ca_bundle,
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        region=s3.region,
    )
    runner.workdir.mkdir(parents=True, exist_ok=True)
    yield runner
    leftover_mounts = mounts_under(runner.workdir)
    leftover_pids = pids_with_marker(str(runner.workdir))
    if leftover_mounts or leftover_pids:
        problems = cleanup(leftover_mounts, [str(runner.workdir)])
        raise AssertionError(
            f"left behind at session end: mounts {leftover_mounts}, pids {leftover_pids}"
            + (f"; could not clean: {problems}" if problems else "")
        )


@pytest.fixture(scope="session")
def zarr3_python() -> Path:
    """The interpreter of the second venv that has zarr-python 3."""
    py = REPO / ".venv-zarr3" / "bin" / "python"
    if not py.exists():
        pytest.fail(
            f"{py} is missing: the zarr-python 3 checks run in a second venv; "
            "run `make test` (it builds .venv-zarr3), or create it with "
            "`python3 -m venv .venv-zarr3 && .venv-zarr3/bin/pip install 'zarr>=3' numpy`",
            pytrace=False,
        )
    return py


@pytest.fixture
def bucket_snapshot(s3: MotoS3Server):
    """Call to get {key: (size, etag)} of the whole bucket."""
    return lambda: s3.listing(BUCKET)


@pytest.fixture
def private_s3(tmp_path):
    """A moto server of this test only (it gets stopped mid-test)."""
    with moto_s3_server(tmp_path / "private-s3") as server:
        server.create_bucket("svc")
        yield server
