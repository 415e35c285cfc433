"""The benchmark's steps and contenders; importing this package registers them all
(``bench.registry``). The import order is the order they run and are listed in."""
# isort: skip_file

from bench.steps import sessions  # eeg, list
from bench.steps import stream
from bench.steps import memory
from bench.steps import cohort
from bench.steps import lineup  # the contenders

__all__ = ["cohort", "lineup", "memory", "sessions", "stream"]
