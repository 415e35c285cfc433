"""Keeps the test tiers honest. ``conftest.py`` marks a test ``fuse`` / ``s3`` from the fixtures it
uses and puts the marks of the running test in ``ZIPMOUNT_TEST_MARKS``; the helpers that mount
FUSE or start an S3 server call ``require``, which fails a test that does so unmarked (it would
otherwise run in ``make unit``)."""

from __future__ import annotations

import os

ENV = "ZIPMOUNT_TEST_MARKS"
WHAT = {"fuse": "mounts FUSE", "s3": "starts an S3 server"}


def require(mark: str) -> None:
    marks = os.environ.get(ENV)
    if marks is not None and mark not in marks.split(","):
        raise AssertionError(
            f"this test {WHAT[mark]} but is not marked `{mark}`: request a fixture that carries "
            f"the mark (see FIXTURE_NEEDS in tests/conftest.py), directly or through another fixture"
        )
