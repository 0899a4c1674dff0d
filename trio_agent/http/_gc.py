"""Python's youngest-generation collector threshold, raised while a server runs.

A streaming server allocates many short-lived objects per event; with
Python's default threshold the youngest generation is collected so often
that its passes show as loop lag (docs/decisions/005).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_threshold"]


@contextmanager
def gc_threshold(threshold: int) -> Iterator[None]:
    """The youngest generation's threshold set to ``threshold`` (0: unchanged), restored on exit."""
    if not threshold:
        yield
        return
    before = gc.get_threshold()
    gc.set_threshold(threshold, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
