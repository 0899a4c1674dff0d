"""iter_with_timeouts: deadlines for the first item, the gaps, and the whole stream.

An LLM stream can fail slowly in three ways: it never starts, it stalls
mid-way, or it dribbles on forever. Each gets its own deadline and its own
error, all :class:`~trio_agent.DeadlineError` subclasses with ``timeout`` set:

- ``first_timeout``: the wait for the first item (:class:`~trio_agent.FirstItemTimeoutError`);
- ``idle_timeout``: each later wait for the next item (:class:`~trio_agent.IdleTimeoutError`);
  it measures how long one ``__anext__`` call waits, so time the consumer
  spends on an item does not count as upstream silence. It does not apply to
  the first item;
- ``total_timeout``: an absolute deadline counted from the first ``__anext__``
  call (not from construction) (:class:`~trio_agent.TotalTimeoutError`).

Each ``__anext__`` opens one cancel scope at the tightest applicable deadline
and raises the error of the deadline that fired (on a tie, the per-item one).
This is a class, not an async generator, because a generator must not
``yield`` inside a cancel scope.

The wrapped iterator is closed (``aclose()``, when it has one) on every exit:
normal end, timeout, error, cancellation, and the caller leaving early when
used as ``async with iter_with_timeouts(...) as items:``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterable, AsyncIterator
from types import TracebackType
from typing import Generic, TypeVar

import trio

from ..errors import DeadlineError, FirstItemTimeoutError, IdleTimeoutError, TotalTimeoutError

T = TypeVar("T")

_CLOSE_TIMEOUT = 1.0  # seconds allowed to the wrapped iterator's shielded aclose()


class TimeoutIterator(Generic[T]):
    """An async iterator with first-item, idle and total deadlines. See :func:`iter_with_timeouts`."""

    def __init__(
        self,
        iterable: AsyncIterable[T],
        *,
        first_timeout: float | None = None,
        idle_timeout: float | None = None,
        total_timeout: float | None = None,
    ) -> None:
        for name, value in (
            ("first_timeout", first_timeout),
            ("idle_timeout", idle_timeout),
            ("total_timeout", total_timeout),
        ):
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be None or >= 0, got {value!r}")
        self._iterator: AsyncIterator[T] = aiter(iterable)
        self._first_timeout = first_timeout
        self._idle_timeout = idle_timeout
        self._total_timeout = total_timeout
        self._started_at: float | None = None
        self._items = 0
        self._closed = False

    @property
    def items_received(self) -> int:
        """How many items were delivered so far."""
        return self._items

    @property
    def total_deadline(self) -> float:
        """The absolute trio time the whole stream must end by (inf until started or if unset)."""
        if self._started_at is None or self._total_timeout is None:
            return math.inf
        return self._started_at + self._total_timeout

    def _next_deadline(self, now: float) -> tuple[float, DeadlineError | None]:
        deadline = math.inf
        error: DeadlineError | None = None
        if self._items == 0 and self._first_timeout is not None:
            t = self._first_timeout
            deadline = now + t
            error = FirstItemTimeoutError(f"no first item within first_timeout={t} s", timeout=t)
        elif self._items > 0 and self._idle_timeout is not None:
            t = self._idle_timeout
            deadline = now + t
            error = IdleTimeoutError(f"no item for idle_timeout={t} s", timeout=t)
        if self.total_deadline < deadline:
            total = self._total_timeout
            deadline = self.total_deadline
            error = TotalTimeoutError(
                f"the stream ran longer than total_timeout={total} s", timeout=total
            )
        return deadline, error

    def __aiter__(self) -> TimeoutIterator[T]:
        return self

    async def __anext__(self) -> T:
        if self._closed:
            raise StopAsyncIteration
        now = trio.current_time()
        if self._started_at is None:
            self._started_at = now
        deadline, error = self._next_deadline(now)
        with trio.CancelScope(deadline=deadline) as scope:
            try:
                item = await self._iterator.__anext__()
            except BaseException:
                # The end, an error, our deadline or an outer cancellation: close, then go on.
                with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                    await self._close_wrapped()
                raise
            self._items += 1
            return item
        assert scope.cancelled_caught and error is not None
        raise error

    async def _close_wrapped(self) -> None:
        if self._closed:
            return
        self._closed = True
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None:
            await aclose()

    async def aclose(self) -> None:
        """Close the wrapped iterator (shielded, with a short deadline). Idempotent."""
        with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await self._close_wrapped()
        await trio.lowlevel.checkpoint_if_cancelled()

    async def __aenter__(self) -> TimeoutIterator[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await self._close_wrapped()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._started_at is not None else "new")
        return (
            f"<TimeoutIterator {state} items_received={self._items} "
            f"first_timeout={self._first_timeout} idle_timeout={self._idle_timeout} "
            f"total_timeout={self._total_timeout}>"
        )


def iter_with_timeouts(
    iterable: AsyncIterable[T],
    *,
    first_timeout: float | None = None,
    idle_timeout: float | None = None,
    total_timeout: float | None = None,
) -> TimeoutIterator[T]:
    """Wrap an async iterable with first-item, idle-gap and total deadlines.

    ::

        async with iter_with_timeouts(chunks, first_timeout=10, idle_timeout=5, total_timeout=120) as it:
            async for chunk in it:
                ...

    Raises :class:`~trio_agent.FirstItemTimeoutError`,
    :class:`~trio_agent.IdleTimeoutError` or :class:`~trio_agent.TotalTimeoutError`
    (each with ``timeout`` set) and always closes the wrapped iterator. The
    clocks start at the first ``__anext__`` call. See the module docs for the
    exact rules.
    """
    return TimeoutIterator(
        iterable, first_timeout=first_timeout, idle_timeout=idle_timeout, total_timeout=total_timeout
    )
