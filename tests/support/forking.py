"""Run a function in a forked child (as a DataLoader worker is made) and get what it returned."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def _put_result(queue: Any, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    queue.put(target(*args))


def in_forked_child(target: Callable[..., Any], *args: Any, timeout: float = 60) -> Any:
    """``target(*args)`` run in a forked child; the child is killed if it outlives the wait."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_put_result, args=(queue, target, args))
    child.start()
    try:
        return queue.get(timeout=timeout)
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
