"""Small internal helpers shared by the concurrency modules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn

import trio


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def raise_single_exception(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise the one real exception inside a nursery's group.

    Our helpers keep their own tasks from raising, so a nursery group holds at
    most one exception that matters (the caller's own, or a KeyboardInterrupt)
    plus any number of ``trio.Cancelled``. Raise that one unwrapped; if there is
    only ``Cancelled``, raise the first; if there are several real ones, raise
    the group unchanged.
    """
    leaves = list(_leaves(group))
    real = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
    if len(real) > 1:
        raise group
    exc = real[0] if real else leaves[0]
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context
