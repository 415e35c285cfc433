"""What the benchmark can run: steps and contenders register themselves here.

A *step* is one kind of measurement the ``--steps`` option names. Its ``scope`` says when the
runner (``bench.runner``) calls it:

* ``session``: once per contender object, ``run(runner, contender, delay)`` (eeg, list);
* ``endpoint``: once per endpoint (0 ms and +delay) per round, ``run(runner, delay, url)``;
* ``round``: once per round, ``run(runner)``;
* ``once``: once after all rounds, ``run(runner)``.

A step may prepare data before the servers start (``prepare(runner)``), and add report
sections (``tables(report)``) and target rows (``targets(report)``,
``bench.targets.Verdicts`` rows) next to the code that measures them.

A *contender* is one way of reading the data the ``--contenders`` option names. ``make(runner,
delay, url, keys)`` builds one per endpoint per round (the session steps run on it); ``per_round
(runner)`` runs a contender that is not tied to an endpoint (the local copy, the FUSE floor);
``check(runner)`` says why it cannot run here (or None). A contender with none of these is
measured inside a step (``s3fs-ranged`` in ``stream``).

Adding a step or a contender is one decorated function in a module that ``bench.steps``
imports; registration order is the order they run and are listed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Scope = Literal["session", "endpoint", "round", "once"]


@dataclass(frozen=True)
class Step:
    name: str
    scope: Scope
    run: Callable[..., None]
    what: str  # how notes name it: "{contender} at +{delay} ms: {what} aborted: ..."
    prepare: Callable[[Any], None] | None = None  # before the servers start (data to serve)
    tables: Callable[[Any], list[str]] | None = None
    targets: Callable[[Any], list[tuple[str, str, str]]] | None = None


@dataclass(frozen=True)
class Contender:
    name: str
    label: str
    make: Callable[..., Any] | None = None
    per_round: Callable[[Any], None] | None = None
    check: Callable[[Any], str | None] | None = None
    always: bool = False  # runs whatever --contenders says (the reference)


STEPS: dict[str, Step] = {}
CONTENDERS: dict[str, Contender] = {}


def step(name: str, scope: Scope, what: str | None = None, *,
         prepare: Callable[[Any], None] | None = None,
         tables: Callable[[Any], list[str]] | None = None,
         targets: Callable[[Any], list[tuple[str, str, str]]] | None = None):
    """Register the decorated function as the step ``name``."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        if name in STEPS:
            raise ValueError(f"step {name!r} registered twice")
        STEPS[name] = Step(name, scope, fn, what or name, prepare, tables, targets)
        return fn

    return register


def contender(name: str, label: str, *, per_round: bool = False,
              check: Callable[[Any], str | None] | None = None, always: bool = False):
    """Register the decorated function as contender ``name``: its factory, or with
    ``per_round=True`` the function that runs it once per round."""

    def register(fn: Callable[..., Any] | None) -> Callable[..., Any] | None:
        if name in CONTENDERS:
            raise ValueError(f"contender {name!r} registered twice")
        CONTENDERS[name] = Contender(name, label, None if per_round else fn,
                                     fn if per_round else None, check, always)
        return fn

    return register


def measured_in_a_step(name: str, label: str) -> None:
    """Register a contender that a step measures itself (no object, no round of its own)."""
    contender(name, label)(None)
