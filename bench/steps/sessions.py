"""The session steps: each runs on every contender, as a user of the data would.

* ``eeg``: explore (open, random windows, one channel, tiny arrays), then bulk (the whole
  array cold and warm) and a remount with the same cache (open, windows, whole array);
* ``list``: mount + ``find`` of the many-entries archive cold, then from the persisted index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.registry import step

if TYPE_CHECKING:
    from bench.runner import Runner


@step("eeg", "session", "eeg steps")
def eeg_sessions(run: Runner, c, delay) -> None:
    spec = run.spec
    # session 1: explore (fresh)
    run.cold(c)
    try:
        g, _ = run.measure(c, delay, "open", lambda: run.open_group(c, fresh=True),
                           check=False)
        if g is None:
            raise RuntimeError("open failed")
        run.measure(c, delay, "windows", lambda: run.op(c, g, "windows"))
        ch = spec.channels - 1
        run.measure(c, delay, "channel", lambda: run.op(c, g, "channel", channel=ch))
        run.measure(c, delay, "tiny", lambda: run.op(c, g, "tiny"))
    finally:
        run.stop(c, delay, "explore")
    # session 2: bulk (fresh), then remount with the same cache
    run.cold(c)
    try:
        g, _ = run.measure(c, delay, "open2", lambda: run.open_group(c, fresh=True),
                           check=False)
        if g is None:
            raise RuntimeError("open failed")
        run.measure(c, delay, "whole_cold", lambda: run.op(c, g, "whole"))
        run.measure(c, delay, "whole_warm", lambda: run.op(c, g, "whole"))
    finally:
        run.stop(c, delay, "bulk")
    run.cold(c)
    try:
        g, _ = run.measure(c, delay, "remount_open", lambda: run.open_group(c, fresh=False),
                           check=False)
        if g is None:
            raise RuntimeError("remount failed")
        run.measure(c, delay, "remount_windows", lambda: run.op(c, g, "windows"))
        run.measure(c, delay, "remount_whole", lambda: run.op(c, g, "whole"))
    finally:
        run.stop(c, delay, "remount")


@step("list", "session", "listing")
def listing_sessions(run: Runner, c, delay) -> None:
    if not hasattr(c, "listing"):
        return
    run.cold(c)
    try:
        n, rec = run.measure(c, delay, "list_cold", lambda: c.listing(fresh=True),
                             check=False)
        rec["entries"] = n
    finally:
        run.stop(c, delay, "list_cold", listing=True)
    run.cold(c)
    try:
        n, rec = run.measure(c, delay, "list_index", lambda: c.listing(fresh=False),
                             check=False)
        rec["entries"] = n
    finally:
        run.stop(c, delay, "list_index", listing=True)
