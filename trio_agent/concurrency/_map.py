"""Bounded concurrent map: ``map_concurrently`` and ``as_completed``.

The trio replacement for ``asyncio.gather(*[fn(x) for x in items],
return_exceptions=True)`` under an ``asyncio.Semaphore``: run ``fn`` over many
items with at most ``max_concurrency`` calls at once, and get one
:class:`Outcome` per item instead of error strings.

Only ``max_concurrency`` worker tasks ever exist, each pulling the next item
from one shared iterator, so a million items cost a million outcomes, not a
million tasks. Each call to ``fn`` runs in its own cancel scope for
``item_timeout``. Before each call a worker takes, in this order, a token of
the shared ``limiter`` (if given: a CapacityLimiter that other code also uses,
so the map can never exceed that global cap either) and a start from the
``rate_limiter`` (if given). The rate token is taken last, while holding the
limiter, so starts really are spaced at the configured rate.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sized
from contextlib import asynccontextmanager, nullcontext
from typing import Generic, TypeVar

import trio

from ..errors import ItemCancelledError, ItemTimeoutError, TotalTimeoutError
from ._outcome import Outcome
from ._rate import RateLimiter
from ._util import raise_single_exception

T = TypeVar("T")
R = TypeVar("R")


def _check_timeout(name: str, value: float | None) -> None:
    if value is not None and not value >= 0:
        raise ValueError(f"{name} must be None or >= 0, got {value!r}")


class _Run(Generic[T, R]):
    """The state one map shares between its workers."""

    def __init__(
        self,
        fn: Callable[[T], Awaitable[R]],
        items: Iterable[T],
        *,
        max_concurrency: int,
        item_timeout: float | None,
        fail_fast: bool,
        rate_limiter: RateLimiter | None,
        limiter: trio.CapacityLimiter | None,
    ) -> None:
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        _check_timeout("item_timeout", item_timeout)
        self.fn = fn
        self.worker_count = max_concurrency
        if isinstance(items, Sized):
            self.worker_count = min(max_concurrency, len(items))
        self.items: Iterator[tuple[int, T]] = enumerate(items)
        self.item_timeout = item_timeout
        self.fail_fast = fail_fast
        self.rate_limiter = rate_limiter
        self.limiter = limiter
        self.pulled = 0  # items taken from the iterator so far
        self.started_at: dict[int, float] = {}
        self.results: dict[int, Outcome[R]] = {}
        self.failure: BaseException | None = None

    def fail(self, exc: BaseException, scope: trio.CancelScope) -> None:
        if self.failure is None:
            self.failure = exc
        scope.cancel()

    async def worker(
        self,
        scope: trio.CancelScope,
        send: trio.MemorySendChannel[Outcome[R]] | None = None,
    ) -> None:
        """Pull items until the iterator is exhausted; record or send each outcome."""
        with send if send is not None else nullcontext():
            while True:
                try:
                    index, item = next(self.items)
                except StopIteration:
                    return
                except Exception as exc:  # the caller's iterator broke: fail the map
                    self.fail(exc, scope)
                    return
                self.pulled = index + 1
                outcome = await self._run_one(index, item)
                if send is None:
                    self.results[index] = outcome
                else:
                    try:
                        await send.send(outcome)
                    except trio.BrokenResourceError:  # the consumer left
                        return
                if self.fail_fast and outcome.error is not None:
                    self.fail(outcome.error, scope)
                    return

    async def _run_one(self, index: int, item: T) -> Outcome[R]:
        if self.limiter is None:
            return await self._start(index, item)
        async with self.limiter:
            return await self._start(index, item)

    async def _start(self, index: int, item: T) -> Outcome[R]:
        if self.rate_limiter is not None:
            await self.rate_limiter.acquire()
        started = self.started_at[index] = trio.current_time()
        timeout = self.item_timeout
        scope = trio.CancelScope(deadline=math.inf if timeout is None else started + timeout)
        try:
            with scope:
                value = await self.fn(item)
        except Exception as exc:  # outside the scope: also catches what it leaves of a group
            return Outcome(
                index=index, status="error", error=exc, duration=trio.current_time() - started
            )
        duration = trio.current_time() - started
        if scope.cancelled_caught:
            error = ItemTimeoutError(
                f"item {index} ran longer than item_timeout={timeout} s", timeout=timeout, index=index
            )
            return Outcome(index=index, status="timeout", error=error, duration=duration)
        return Outcome(index=index, status="ok", value=value, duration=duration)

    def cancelled(self, index: int, total_timeout: float | None) -> Outcome[R]:
        started = self.started_at.get(index)
        error = ItemCancelledError(
            f"item {index} was cancelled: total_timeout={total_timeout} s ran out", index=index
        )
        duration = 0.0 if started is None else trio.current_time() - started
        return Outcome(index=index, status="cancelled", error=error, duration=duration)


async def map_concurrently(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    max_concurrency: int,
    item_timeout: float | None = None,
    total_timeout: float | None = None,
    fail_fast: bool = False,
    rate_limiter: RateLimiter | None = None,
    limiter: trio.CapacityLimiter | None = None,
) -> list[Outcome[R]]:
    """Run ``await fn(item)`` for every item, at most ``max_concurrency`` at once.

    Returns one :class:`Outcome` per item, in input order, each ``ok``,
    ``error`` (``fn`` raised an ``Exception``), ``timeout`` (that call ran
    longer than ``item_timeout``) or ``cancelled`` (``total_timeout`` ran out
    before it finished; items never started are reported too, which consumes
    the rest of ``items``).

    With ``fail_fast=True`` the first item that does not end ``ok`` cancels all
    others and its error is raised as is (not wrapped in an ExceptionGroup):
    ``fn``'s own exception, an :class:`~trio_agent.ItemTimeoutError`, or a
    :class:`~trio_agent.TotalTimeoutError` if ``total_timeout`` ran out.

    ``limiter`` is a shared ``trio.CapacityLimiter`` that each call also holds
    (both caps apply); ``rate_limiter`` spaces the starts. Cancellation from
    outside and ``BaseException`` are never swallowed: they cancel every item
    and propagate.
    """
    _check_timeout("total_timeout", total_timeout)
    run = _Run(
        fn,
        items,
        max_concurrency=max_concurrency,
        item_timeout=item_timeout,
        fail_fast=fail_fast,
        rate_limiter=rate_limiter,
        limiter=limiter,
    )
    deadline = math.inf if total_timeout is None else trio.current_time() + total_timeout
    with trio.CancelScope(deadline=deadline) as total_scope:
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(run.worker_count):
                    nursery.start_soon(run.worker, nursery.cancel_scope)
        except BaseExceptionGroup as group:
            raise_single_exception(group)
    if run.failure is not None:
        raise run.failure
    if total_scope.cancelled_caught:
        if fail_fast:
            raise TotalTimeoutError(
                f"the map ran longer than total_timeout={total_timeout} s", timeout=total_timeout
            )
        for index in range(run.pulled):
            if index not in run.results:
                run.results[index] = run.cancelled(index, total_timeout)
        for index, _ in run.items:
            run.results[index] = run.cancelled(index, total_timeout)
            run.pulled = index + 1
    else:
        await trio.lowlevel.checkpoint()  # an empty input still checkpoints
    return [run.results[index] for index in range(run.pulled)]


@asynccontextmanager
async def as_completed(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    max_concurrency: int,
    item_timeout: float | None = None,
    rate_limiter: RateLimiter | None = None,
    limiter: trio.CapacityLimiter | None = None,
) -> AsyncIterator[trio.MemoryReceiveChannel[Outcome[R]]]:
    """Like :func:`map_concurrently`, but hand out each :class:`Outcome` as it finishes.

    ::

        async with as_completed(fetch, urls, max_concurrency=8) as outcomes:
            async for outcome in outcomes:
                print(outcome.index, outcome.status)

    Outcomes arrive in completion order; ``outcome.index`` is the input
    position. The channel is unbuffered, so a slow consumer slows the workers
    down instead of piling up results. Leaving the block, early or through an
    exception, cancels the work still running and waits for it to unwind; the
    block's own exception comes out unwrapped.
    """
    run: _Run[T, R] = _Run(
        fn,
        items,
        max_concurrency=max_concurrency,
        item_timeout=item_timeout,
        fail_fast=False,
        rate_limiter=rate_limiter,
        limiter=limiter,
    )
    send, receive = trio.open_memory_channel[Outcome[R]](0)
    try:
        async with trio.open_nursery() as nursery:
            with send:
                for _ in range(run.worker_count):
                    nursery.start_soon(run.worker, nursery.cancel_scope, send.clone())
            try:
                yield receive
            finally:
                # Cancel first so blocked workers see Cancelled, then close.
                nursery.cancel_scope.cancel()
                receive.close()
    except BaseExceptionGroup as group:
        raise_single_exception(group)
    if run.failure is not None:  # only the caller's iterator can fail here
        raise run.failure
