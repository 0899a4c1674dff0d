"""RequestQueue: N workers, a bounded line, and a clear answer for everyone.

The trio replacement for an ``asyncio.Queue(maxsize)`` drained by worker tasks
that answer "Service busy" when full. Callers ``await queue.submit(item)`` and
get the handler's result (or its exception) back. Every submit ends in exactly
one way:

- served by a worker: the handler's value is returned, or its exception raised;
- refused at once: :class:`~trio_agent.QueueFullError` when ``max_queued``
  callers are already waiting and no worker is idle (checked before waiting,
  so a refusal never blocks), :class:`~trio_agent.QueueClosedError` once the
  queue's block is exiting;
- :class:`~trio_agent.QueueTimeoutError` (with ``waited``) when no worker took
  it within ``max_wait``;
- cancelled: a caller cancelled while waiting in line is never served; a
  caller cancelled while served cancels that handler call.

The line is the set of callers blocked sending on an unbuffered memory
channel, so trio itself guarantees that a cancelled send was not delivered:
there are no dead entries to skip and ``max_queued`` counts live callers only.
A worker that received an item still checks the item's state before starting,
because its caller may be cancelled between the hand-off and the start.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import trio

from ..errors import QueueClosedError, QueueFullError, QueueTimeoutError
from ._util import raise_single_exception

T = TypeVar("T")
R = TypeVar("R")

OnExit = Literal["drain", "cancel"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestQueueStatistics:
    """A snapshot of a :class:`RequestQueue`.

    ``queued`` callers wait for a worker, ``in_service`` are being handled;
    the other counters are totals since the queue opened: ``served`` (handler
    returned), ``failed`` (handler raised), ``rejected`` (full or closed),
    ``timed_out`` (``max_wait`` ran out in line), ``cancelled`` (the caller was
    cancelled, or the queue cancelled the request on exit).
    """

    queued: int
    in_service: int
    served: int
    failed: int
    rejected: int
    timed_out: int
    cancelled: int
    workers: int
    max_queued: int


class _Ticket(Generic[T, R]):
    """One submitted item and the way back to its caller."""

    __slots__ = ("abandoned", "done", "error", "item", "service_scope", "value", "wait_scope")

    def __init__(self, item: T) -> None:
        self.item = item
        self.abandoned = False  # the caller is gone: never start, stop if started
        self.done = trio.Event()
        self.value: R | None = None
        self.error: BaseException | None = None
        self.wait_scope: trio.CancelScope | None = None
        self.service_scope: trio.CancelScope | None = None


class RequestQueue(Generic[T, R]):
    """A bounded line in front of a fixed pool of workers. Open it with :func:`open_request_queue`."""

    def __init__(
        self,
        handler: Callable[[T], Awaitable[R]],
        *,
        workers: int,
        max_queued: int,
        max_wait: float | None,
    ) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if not isinstance(max_queued, int) or max_queued < 0:
            raise ValueError(f"max_queued must be an int >= 0, got {max_queued!r}")
        if max_wait is not None and not max_wait >= 0:
            raise ValueError(f"max_wait must be None or >= 0, got {max_wait!r}")
        self._handler = handler
        self._workers = workers
        self._max_queued = max_queued
        self._max_wait = max_wait
        self._send, self._receive = trio.open_memory_channel[_Ticket[T, R]](0)
        self._closed = False
        self._cancelling = False
        self._waiting: set[_Ticket[T, R]] = set()
        self._serving: set[_Ticket[T, R]] = set()
        self._served = 0
        self._failed = 0
        self._rejected = 0
        self._timed_out = 0
        self._cancelled = 0

    @property
    def closed(self) -> bool:
        """True once the queue stopped taking new items."""
        return self._closed

    async def submit(self, item: T) -> R:
        """Queue ``item``, wait for a worker to handle it, and return the handler's result.

        Raises the handler's exception, or :class:`~trio_agent.QueueFullError`,
        :class:`~trio_agent.QueueTimeoutError`, :class:`~trio_agent.QueueClosedError`.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            self._rejected += 1
            raise QueueClosedError("the request queue is closed")
        ticket: _Ticket[T, R] = _Ticket(item)
        try:
            with self._send.clone() as send:
                try:
                    send.send_nowait(ticket)  # an idle worker takes it at once
                except trio.WouldBlock:
                    if len(self._waiting) >= self._max_queued:
                        self._rejected += 1
                        raise QueueFullError(
                            f"request queue is full ({self._max_queued} waiting)",
                            max_queued=self._max_queued,
                        ) from None
                    await self._wait_in_line(send, ticket)
        except trio.BrokenResourceError:  # every worker has exited
            self._rejected += 1
            raise QueueClosedError("the request queue has no workers left") from None
        return await self._wait_for_result(ticket)

    async def _wait_in_line(
        self, send: trio.MemorySendChannel[_Ticket[T, R]], ticket: _Ticket[T, R]
    ) -> None:
        enqueued_at = trio.current_time()
        max_wait = self._max_wait
        ticket.wait_scope = trio.CancelScope(
            deadline=math.inf if max_wait is None else enqueued_at + max_wait
        )
        self._waiting.add(ticket)
        try:
            with ticket.wait_scope:
                await send.send(ticket)
                return  # a worker took it
        except trio.Cancelled:
            self._cancelled += 1  # our caller was cancelled while in line
            raise
        finally:
            self._waiting.discard(ticket)
        if self._cancelling:
            self._cancelled += 1
            raise QueueClosedError("the request queue closed before a worker took this request")
        self._timed_out += 1
        waited = trio.current_time() - enqueued_at
        raise QueueTimeoutError(
            f"no worker took the request within max_wait={max_wait} s", waited=waited
        )

    async def _wait_for_result(self, ticket: _Ticket[T, R]) -> R:
        try:
            await ticket.done.wait()
        except trio.Cancelled:
            ticket.abandoned = True
            if ticket.service_scope is not None:
                ticket.service_scope.cancel()
            self._cancelled += 1
            raise
        if ticket.error is not None:
            raise ticket.error
        return ticket.value  # type: ignore[return-value]  # R may itself allow None

    async def _worker(
        self,
        receive: trio.MemoryReceiveChannel[_Ticket[T, R]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with receive:
            task_status.started()  # the loop below parks in receive() before the opener resumes
            async for ticket in receive:
                if ticket.abandoned:  # the caller left between hand-off and start
                    continue
                if self._cancelling:  # handed over just before the queue cancelled its work
                    ticket.error = QueueClosedError("the request queue closed before serving this request")
                    self._cancelled += 1
                    ticket.done.set()
                    continue
                await self._serve(ticket)

    async def _serve(self, ticket: _Ticket[T, R]) -> None:
        ticket.service_scope = scope = trio.CancelScope()
        self._serving.add(ticket)
        ended = "stopped"  # stays so if the worker itself is cancelled from outside
        try:
            try:
                with scope:
                    ticket.value = await self._handler(ticket.item)
                    ended = "served"
            except Exception as exc:  # outside the scope: also what it leaves of a group
                ticket.error = exc
                ended = "failed"
        finally:
            self._serving.discard(ticket)
            if ticket.abandoned:
                pass  # the caller is gone and counted itself as cancelled
            elif ended == "served":
                self._served += 1
            elif ended == "failed":
                self._failed += 1
            else:
                ticket.error = QueueClosedError("the request queue stopped while serving this request")
                self._cancelled += 1
            ticket.done.set()

    def _close(self) -> None:
        """Stop intake: later submits raise QueueClosedError; workers end when the line is empty."""
        self._closed = True
        self._send.close()

    def _cancel_all(self) -> None:
        """Abort everything queued or in service; those callers get QueueClosedError."""
        self._cancelling = True
        for ticket in self._waiting:
            assert ticket.wait_scope is not None
            ticket.wait_scope.cancel()
        for ticket in self._serving:
            assert ticket.service_scope is not None
            ticket.service_scope.cancel()

    def statistics(self) -> RequestQueueStatistics:
        """Return a :class:`RequestQueueStatistics` snapshot."""
        return RequestQueueStatistics(
            queued=len(self._waiting),
            in_service=len(self._serving),
            served=self._served,
            failed=self._failed,
            rejected=self._rejected,
            timed_out=self._timed_out,
            cancelled=self._cancelled,
            workers=self._workers,
            max_queued=self._max_queued,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        state = "closed" if self._closed else "open"
        return (
            f"<RequestQueue {state} queued={s.queued}/{s.max_queued} "
            f"in_service={s.in_service}/{s.workers} served={s.served} failed={s.failed} "
            f"rejected={s.rejected} timed_out={s.timed_out} cancelled={s.cancelled}>"
        )


@asynccontextmanager
async def open_request_queue(
    handler: Callable[[T], Awaitable[R]],
    *,
    workers: int,
    max_queued: int,
    max_wait: float | None = None,
    on_exit: OnExit = "drain",
) -> AsyncIterator[RequestQueue[T, R]]:
    """Open a :class:`RequestQueue` whose ``workers`` tasks run ``handler``.

    ::

        async with open_request_queue(call_llm, workers=4, max_queued=16, max_wait=2.0) as queue:
            answer = await queue.submit(prompt)   # from any task

    Leaving the block stops intake (later ``submit`` calls raise
    :class:`~trio_agent.QueueClosedError`), then by ``on_exit``: ``"drain"``
    serves everything already queued or in service and waits for it;
    ``"cancel"`` cancels it, and those callers get ``QueueClosedError``. If the
    block raises or is cancelled, the work is cancelled whatever ``on_exit``
    says, and the block's exception comes out unwrapped.
    """
    if on_exit not in ("drain", "cancel"):
        raise ValueError(f"on_exit must be 'drain' or 'cancel', got {on_exit!r}")
    queue: RequestQueue[T, R] = RequestQueue(
        handler, workers=workers, max_queued=max_queued, max_wait=max_wait
    )
    try:
        async with trio.open_nursery() as nursery:
            with queue._receive:
                for _ in range(workers):  # started, so they are idle in receive() on entry
                    await nursery.start(queue._worker, queue._receive.clone())
            clean_exit = False
            try:
                yield queue
                clean_exit = True
            finally:
                queue._close()
                if on_exit == "cancel" or not clean_exit:
                    queue._cancel_all()
    except BaseExceptionGroup as group:
        raise_single_exception(group)
