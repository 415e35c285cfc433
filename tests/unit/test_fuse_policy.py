"""The kernel-cache policy alone (no libfuse, no tree): what an open of a path at a version may
keep, must invalidate, or must read past the page cache, so no reader mixes versions."""

from __future__ import annotations

import subprocess
import sys

from zipmount.fuse.policy import KernelCachePolicy, OpenPlan


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pages_are_dropped_at_the_first_open_of_a_version_and_kept_by_the_next():
    policy = KernelCachePolicy(60)
    policy.attributes_sent("/a", "v1")
    assert policy.plan_open("/a", "v1") == OpenPlan()
    assert policy.plan_open("/a", "v1") == OpenPlan(keep_cache=True)


def test_a_new_version_with_stale_attributes_is_invalidated_first_then_kept():
    policy = KernelCachePolicy(60)
    policy.attributes_sent("/a", "v1")
    policy.plan_open("/a", "v1")
    policy.released("/a", "v1")
    # the archive was replaced, but the kernel still holds v1's attributes (no stat since)
    assert policy.plan_open("/a", "v2") == OpenPlan(invalidate=True)
    policy.invalidated("/a", "v2")
    assert policy.plan_open("/a", "v2") == OpenPlan(keep_cache=True)


def test_a_new_version_reads_past_the_page_cache_while_a_handle_on_the_old_one_is_open():
    policy = KernelCachePolicy(60)
    policy.attributes_sent("/a", "v1")
    policy.plan_open("/a", "v1")  # held open
    policy.attributes_sent("/a", "v2")
    assert policy.plan_open("/a", "v2") == OpenPlan(direct_io=True)
    policy.released("/a", "v1")
    policy.released("/a", "v2")
    assert policy.plan_open("/a", "v2") == OpenPlan()  # now the old pages can be dropped
    assert policy.tracked()["open_paths"] == 1


def test_a_path_forgotten_within_the_attr_timeout_is_treated_as_stale():
    clock = Clock()
    policy = KernelCachePolicy(60, max_tracked_paths=2, clock=clock)
    for path in ("/a", "/b", "/c"):
        policy.attributes_sent(path, "v1")
    assert not policy.remembers("/a") and policy.tracked()["attributes"] == 2
    assert policy.plan_open("/a", "v1") == OpenPlan(invalidate=True)
    clock.now += 61  # past the attr timeout the kernel asks again: the pages can just be dropped
    assert policy.plan_open("/x", "v1") == OpenPlan()


def test_bookkeeping_older_than_the_timeout_goes_unless_a_handle_is_open():
    clock = Clock()
    policy = KernelCachePolicy(1, clock=clock)
    policy.attributes_sent("/held", "v1")
    policy.plan_open("/held", "v1")
    policy.attributes_sent("/idle", "v1")
    clock.now += 2
    policy.attributes_sent("/new", "v1")
    assert policy.remembers("/held") and policy.remembers("/new") and not policy.remembers("/idle")


def test_listings_are_kept_while_unchanged_and_their_memory_is_bounded():
    policy = KernelCachePolicy(60, max_tracked_paths=3)
    assert not policy.keep_listing("/d", 1)
    assert policy.keep_listing("/d", 1)
    assert not policy.keep_listing("/d", 2)
    for i in range(10):
        policy.keep_listing(f"/e{i}", i)
    assert policy.tracked()["listings"] == 3


def test_policy_and_operations_import_without_libfuse():
    blocked = ("import sys; sys.modules['mfusepy'] = None; "
               "import zipmount.fuse.policy, zipmount.fuse.operations; "
               "assert 'mfusepy' not in [m for m in sys.modules if sys.modules[m] is not None]")
    subprocess.run([sys.executable, "-c", blocked], check=True)
