"""Admission control: a global cap on concurrent upstream calls, a bounded wait queue.

Every request that would call the upstream first takes a *lease*::

    async with limits.lease(key=key_id) as lease:
        ...   # at most max_concurrency of these blocks run at once

Past the cap a request waits in a queue of at most ``max_queued`` waiters
for at most ``max_queue_wait`` seconds, in FIFO order, or, with
``lifo_after``, newest first while the queue has not been empty for that
long (adaptive LIFO: under sustained overload the oldest waiters could only
start too late to meet anyone's latency target, so a freed slot goes to the
request that can still use it; the others keep their bounded wait). A full
queue or a wait that runs out raises :class:`~trio_agent.errors.OverloadedError`
(503) with ``retry_after`` estimated from live statistics; a per-key cap raises
:class:`~trio_agent.errors.KeyLimitError` (429). Both are decided before the
caller has sent anything to the client or the upstream.

The gateway only sees the :class:`Limits` protocol, so a shared (for example
Redis-backed) implementation can replace the in-process :class:`Admission`.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import trio

from ..concurrency._lag import LoopLag
from ..config import ServerConfig
from ..errors import AdmissionError, KeyLimitError, OverloadedError

logger = logging.getLogger("trio_agent.server")

__all__ = [
    "Admission",
    "AdmissionStatistics",
    "Lease",
    "LeaseContext",
    "Limits",
    "estimate_retry_after",
]

L = TypeVar("L", bound="Lease")

_RETRY_AFTER_MIN = 1.0
_RETRY_AFTER_MAX = 60.0
# Weight of the newest sample in the moving average of service times.
_EWMA_ALPHA = 0.1
_DEFAULT_SERVICE_TIME = 1.0


@dataclass(frozen=True, kw_only=True, slots=True)
class AdmissionStatistics:
    """A snapshot of admission state.

    ``in_flight`` leases are held right now, ``queued`` requests are waiting
    for one. The counters only grow: ``admitted`` leases granted,
    ``shed_full`` refused because the queue was full, ``shed_timeout``
    refused because the wait ran out, ``shed_key_limit`` refused by the
    per-key cap, ``shed_loop_lag`` refused because the process's scheduler
    was further behind than ``max_loop_lag``. ``mean_service_time`` is a moving average of how long a
    lease is held (seconds), the base of the ``Retry-After`` estimate.
    ``admitted_newest_first`` counts the leases of ``admitted`` that a busy
    queue (see ``lifo_after``) gave to its newest waiter. ``slots_granted``
    counts the upstream slots given by :meth:`Limits.slot` (work admitted
    earlier: an agent run's model calls; not in ``admitted``), ``slot_waits``
    those of them that had to wait, and ``slots_waiting`` how many wait now
    (they are in ``queued`` too).
    """

    in_flight: int
    queued: int
    max_concurrency: int
    max_queued: int
    admitted: int
    shed_full: int
    shed_timeout: int
    shed_key_limit: int
    shed_loop_lag: int
    keys_in_flight: int
    mean_service_time: float
    admitted_newest_first: int = 0
    slots_granted: int = 0
    slot_waits: int = 0
    slots_waiting: int = 0


class Lease:
    """One admitted request's hold on a capacity slot.

    ``queued`` is how long it waited in the queue (seconds), ``admitted_at``
    the trio time it was admitted.
    """

    __slots__ = ("admitted_at", "key", "queued")

    def __init__(self, *, key: str | None, queued: float, admitted_at: float) -> None:
        self.key = key
        self.queued = queued
        self.admitted_at = admitted_at

    def __repr__(self) -> str:
        return f"<Lease key={self.key!r} queued={self.queued:.3f}s>"


@runtime_checkable
class Limits(Protocol):
    """What the gateway needs from admission control, in-process or shared.

    ``lease(key)`` returns an async context manager that admits the caller
    (possibly after a bounded wait) or raises an
    :class:`~trio_agent.errors.AdmissionError`; leaving the block releases
    the slot, on every path, exactly once.
    """

    def lease(self, key: str | None = None) -> AbstractAsyncContextManager[Lease]: ...

    def slot(self) -> AbstractAsyncContextManager[Lease]:
        """An upstream slot for work admitted already; waits as long as it takes, never refused.

        An agent run is admitted once, up front (``lease``/``refuse_nowait``);
        each of its model calls then takes a slot under the same global cap
        through this, waiting in the same queue but without the queue's bound
        or wait limit: a run is never refused midway. The caller's deadline
        (the request's) bounds the wait.
        """
        ...

    def refuse_nowait(self, key: str | None = None) -> AdmissionError | None:
        """The refusal ``lease(key)`` would raise at once (counted as shed), else None.

        Lets the edge answer 503/429 without setting up a stream (tasks, a
        nursery) for a request that cannot be admitted: under overload most
        requests are refusals, and they must be cheap. ``None`` promises
        nothing: ``lease`` may still refuse.
        """
        ...

    def statistics(self) -> AdmissionStatistics: ...

    @property
    def ready(self) -> bool:
        """Whether new work can be admitted at all (``/readyz`` answers 503 when not)."""
        ...

    def status(self) -> dict[str, Any] | None:
        """Extra state for ``/readyz`` and ``/metrics`` (mode, health), or None."""
        ...


class _Waiter:
    """One queued request: ``granted`` is set once a released slot was handed to it."""

    __slots__ = ("borrower", "granted")

    def __init__(self, borrower: object) -> None:
        self.borrower = borrower
        self.granted = trio.Event()


class LeaseContext(Generic[L]):
    """``async with`` one lease: ``acquire()`` on entry, ``release(lease, exc)`` on every way out.

    The one lease context of every :class:`Limits` implementation: the slot is
    given back exactly once, whether the block ends, raises or is cancelled.
    """

    __slots__ = ("_acquire", "_lease", "_release")

    def __init__(
        self,
        acquire: Callable[[], Awaitable[L]],
        release: Callable[[L, BaseException | None], Awaitable[None] | None],
    ) -> None:
        self._acquire = acquire
        self._release = release
        self._lease: L | None = None

    async def __aenter__(self) -> L:
        self._lease = await self._acquire()
        return self._lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            # A synchronous release gives the slot back before any checkpoint, so
            # a cancellation cannot come between the block's end and the release.
            pending = self._release(lease, exc)
            if pending is not None:
                await pending


def estimate_retry_after(mean_service_time: float, position: int, capacity: int) -> float:
    """Seconds a refused client should wait: service time x (queue position + 1) / capacity.

    Clamped to [1, 60]: never "retry now", never "come back tomorrow".
    """
    estimate = mean_service_time * (position + 1) / max(1, capacity)
    return min(_RETRY_AFTER_MAX, max(_RETRY_AFTER_MIN, estimate))


class Admission:
    """In-process admission control: one :class:`trio.CapacityLimiter` plus a bounded queue.

    ``max_concurrency`` leases at once; up to ``max_queued`` more callers wait
    for at most ``max_queue_wait`` seconds. A released slot goes straight to
    a waiter, never back to the pool while someone waits, so no newcomer
    jumps the queue. The queue is FIFO, unless ``lifo_after`` (seconds) is
    set: once the queue has stayed non-empty that long, the *newest* waiter
    gets the next slot, until the queue empties. A queue that never empties
    means requests arrive faster than slots free up; served in order, every
    request would then wait about as long as the queue allows and start too
    late for its client, while newest first keeps the wait of those served
    short and leaves the bounded wait (then a 503) to the others
    (docs/decisions/006).
    ``per_key_max_concurrency`` caps the leases held or awaited by one key
    (``None``: no per-key cap; requests without a key are never key-limited).

    With ``loop_lag`` (a running :class:`~trio_agent.concurrency.LoopLag`) and
    ``max_loop_lag`` seconds, a new request is also refused at once while the
    scheduler is further behind than that, free slots or not: the CPU, not
    the slot count, is then what runs out, and every admitted stream would
    slow down. Queued requests keep their place. The rule stands aside while
    fewer than a tenth of the slots (at least one) are held: the lag then
    comes from refusing itself, and refusing everything would serve nothing
    (docs/decisions/007). Such refusals override ``max_concurrency`` and
    ``max_queued``, so each episode is logged once as it starts (the lag, the
    slots held and free) and once as it ends (how many were refused, for how
    long), not per refusal (docs/decisions/015).
    """

    def __init__(
        self,
        *,
        max_concurrency: int,
        max_queued: int,
        max_queue_wait: float,
        per_key_max_concurrency: int | None = None,
        loop_lag: LoopLag | None = None,
        max_loop_lag: float | None = None,
        lifo_after: float | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if max_queued < 0 or max_queue_wait < 0:
            raise ValueError("max_queued and max_queue_wait must be >= 0")
        if max_loop_lag is not None and not max_loop_lag > 0:
            raise ValueError("max_loop_lag must be > 0 (or None)")
        self._loop_lag = loop_lag if max_loop_lag is not None else None
        self._max_loop_lag = max_loop_lag if max_loop_lag is not None else 0.0
        self._shed_loop_lag = 0
        # The current episode of loop-lag refusals: its start (trio time) and count; None: none.
        self._lag_episode: tuple[float, int] | None = None
        self._limiter = trio.CapacityLimiter(max_concurrency)
        if lifo_after is not None and lifo_after < 0:
            raise ValueError("lifo_after must be >= 0 (or None)")
        self._max_queued = max_queued
        self._max_queue_wait = max_queue_wait
        self._per_key = per_key_max_concurrency
        # The queue, oldest first. A released slot goes straight to one waiter (the
        # limiter never has a free token while someone waits, so no newcomer jumps it).
        self._waiters: OrderedDict[_Waiter, None] = OrderedDict()
        self._lifo_after = lifo_after
        self._busy_since = 0.0  # when the queue last went from empty to non-empty
        self._served_lifo = 0
        self._keys: dict[str, int] = {}
        self._admitted = 0
        self._shed_full = 0
        self._shed_timeout = 0
        self._shed_key_limit = 0
        self._mean_service_time = _DEFAULT_SERVICE_TIME
        self._samples = 0
        self._slots_granted = 0
        self._slot_waits = 0
        self._slots_waiting = 0

    @classmethod
    def from_config(
        cls,
        config: ServerConfig,
        *,
        loop_lag: LoopLag | None,
        max_concurrency: int | None = None,
    ) -> Admission:
        """The admission ``config`` describes (``max_concurrency`` overrides its cap)."""
        return cls(
            max_concurrency=config.max_concurrency if max_concurrency is None else max_concurrency,
            max_queued=config.max_queued,
            max_queue_wait=config.max_queue_wait,
            per_key_max_concurrency=config.per_key_max_concurrency,
            loop_lag=loop_lag,
            max_loop_lag=config.max_loop_lag or None,
            lifo_after=config.queue_lifo_after or None,
        )

    @property
    def _queued(self) -> int:
        return len(self._waiters)

    @property
    def max_concurrency(self) -> int:
        return int(self._limiter.total_tokens)

    @property
    def lifo_after(self) -> float | None:
        """Seconds of busy queue before the newest waiter goes first (None: always FIFO)."""
        return self._lifo_after

    def lease(self, key: str | None = None) -> AbstractAsyncContextManager[Lease]:
        """Wait for a slot (bounded); ``async with`` it. See the class docstring."""
        borrower = object()
        return LeaseContext(
            lambda: self._acquire(key, borrower),
            lambda lease, _exc: self._release(lease, borrower),
        )

    def slot(self) -> AbstractAsyncContextManager[Lease]:
        """See :meth:`Limits.slot`: a place in the queue with no bound and no wait limit."""
        borrower = object()
        return LeaseContext(
            lambda: self._acquire_slot(borrower),
            lambda lease, _exc: self._release(lease, borrower),
        )

    async def _acquire_slot(self, borrower: object) -> Lease:
        await trio.lowlevel.checkpoint_if_cancelled()
        start = trio.current_time()
        if self._waiters or self._limiter.available_tokens < 1:
            self._slot_waits += 1
            waiter = _Waiter(borrower)
            if not self._waiters:
                self._busy_since = start
            self._waiters[waiter] = None
            self._slots_waiting += 1
            try:
                await waiter.granted.wait()
            except BaseException:
                if waiter.granted.is_set():  # cancelled after the hand-off: pass the slot on
                    self._free_slot(borrower)
                else:
                    del self._waiters[waiter]
                raise
            finally:
                self._slots_waiting -= 1
        else:
            self._limiter.acquire_on_behalf_of_nowait(borrower)
        now = trio.current_time()
        self._slots_granted += 1
        return Lease(key=None, queued=now - start, admitted_at=now)

    def refuse_nowait(self, key: str | None = None) -> AdmissionError | None:
        """See :meth:`Limits.refuse_nowait`: the key is at its cap, or no slot and a full queue."""
        if self._key_at_cap(key):
            return self._key_limit_refusal()
        lagging = self.refuse_if_lagging()
        if lagging is not None:
            return lagging
        if self._limiter.available_tokens == 0 and self._queued >= self._max_queued:
            return self._queue_full_refusal()
        return None

    def refuse_if_lagging(self, in_flight: int | None = None) -> OverloadedError | None:
        """The loop-lag refusal (counted) if the scheduler is behind ``max_loop_lag``, else None.

        Never while fewer than a tenth of ``max_concurrency`` (at least one) leases are
        held: ``in_flight`` of them, by default this admission's own.
        """
        if self._loop_lag is None:
            return None
        held = int(self._limiter.borrowed_tokens) if in_flight is None else in_flight
        if not self._loop_lag.overloaded(self._max_loop_lag) or held < max(1, self.max_concurrency // 10):
            if self._lag_episode is not None:
                self._end_lag_episode()
            return None
        self._shed_loop_lag += 1
        lag = self._loop_lag.current
        episode = self._lag_episode
        if episode is None:
            self._lag_episode = (trio.current_time(), 1)
            logger.warning(
                "refusing new requests with 503: the scheduler is %.0f ms behind (max_loop_lag "
                "%.0f ms) with %d of max_concurrency %d slots held and %d of max_queued %d "
                "waiting; logged once until it stops (max_loop_lag 0 turns this off)",
                lag * 1000, self._max_loop_lag * 1000, held, self.max_concurrency,
                self._queued, self._max_queued,
            )  # fmt: skip
        else:
            self._lag_episode = (episode[0], episode[1] + 1)
        return OverloadedError(
            f"server overloaded: the CPU is {lag * 1000:.0f} ms behind "
            f"(max {self._max_loop_lag * 1000:.0f} ms)",
            retry_after=_RETRY_AFTER_MIN,
        )

    def _end_lag_episode(self) -> None:
        assert self._lag_episode is not None
        started, refused = self._lag_episode
        self._lag_episode = None
        logger.warning(
            "admitting again: %d request(s) refused over %.1f s while the scheduler lagged",
            refused, trio.current_time() - started,
        )  # fmt: skip

    def _key_at_cap(self, key: str | None) -> bool:
        return key is not None and self._per_key is not None and self._keys.get(key, 0) >= self._per_key

    def _key_limit_refusal(self) -> KeyLimitError:
        """Count one key-limit refusal and build it (the same answer on every path)."""
        self._shed_key_limit += 1
        return KeyLimitError(
            f"too many concurrent requests for this API key (limit {self._per_key})",
            retry_after=self.retry_after(0),
        )

    def _queue_full_refusal(self) -> OverloadedError:
        """Count one full-queue refusal and build it (the same answer on every path)."""
        self._shed_full += 1
        return OverloadedError(
            f"server overloaded: {self.max_concurrency} in flight and "
            f"{self._queued} queued (max {self._max_queued})",
            retry_after=self.retry_after(),
        )

    def retry_after(self, position: int | None = None) -> float:
        """Seconds a refused client should wait (:func:`estimate_retry_after`).

        ``position`` defaults to the current queue length.
        """
        pos = self._queued if position is None else position
        return estimate_retry_after(self._mean_service_time, pos, self.max_concurrency)

    @property
    def ready(self) -> bool:
        """Always: in-process admission has nothing that can be unavailable."""
        return True

    def status(self) -> None:
        """Nothing beyond :meth:`statistics`."""
        return None

    async def _acquire(self, key: str | None, borrower: object) -> Lease:
        if key is not None and self._per_key is not None:
            if self._key_at_cap(key):
                refusal = self._key_limit_refusal()
                await trio.lowlevel.checkpoint()
                raise refusal
            self._keys[key] = self._keys.get(key, 0) + 1
        try:
            lagging = self.refuse_if_lagging()
            if lagging is not None:
                await trio.lowlevel.checkpoint()
                raise lagging
            await trio.lowlevel.checkpoint_if_cancelled()
            start = trio.current_time()
            # A free slot costs no schedule point: the caller goes straight on to its
            # upstream call (which is one). Under load every yield here is a whole
            # scheduler pass added to the new request's time to first token.
            if self._waiters or self._limiter.available_tokens < 1:
                await self._wait(borrower, start)
            else:
                self._limiter.acquire_on_behalf_of_nowait(borrower)
        except BaseException:
            self._forget_key(key)
            raise
        now = trio.current_time()
        self._admitted += 1
        return Lease(key=key, queued=now - start, admitted_at=now)

    async def _wait(self, borrower: object, start: float) -> None:
        if self._queued >= self._max_queued:
            refusal = self._queue_full_refusal()
            await trio.lowlevel.checkpoint()
            raise refusal
        position = self._queued
        waiter = _Waiter(borrower)
        if not self._waiters:
            self._busy_since = start
        self._waiters[waiter] = None
        try:
            with trio.move_on_after(self._max_queue_wait):
                await waiter.granted.wait()
        except BaseException:
            if waiter.granted.is_set():  # cancelled after the hand-off: pass the slot on
                self._free_slot(borrower)
            else:
                del self._waiters[waiter]
            raise
        if waiter.granted.is_set():  # even if the wait ran out in the same pass
            return
        del self._waiters[waiter]
        self._shed_timeout += 1
        waited = trio.current_time() - start
        raise OverloadedError(
            f"server overloaded: no capacity within {self._max_queue_wait:g}s",
            retry_after=self.retry_after(position),
            waited=waited,
        )

    def _congested(self) -> bool:
        """The queue has not been empty for ``lifo_after`` seconds: serve it newest first."""
        return self._lifo_after is not None and (
            trio.current_time() - self._busy_since >= self._lifo_after
        )

    def _free_slot(self, borrower: object) -> None:
        """Give ``borrower``'s slot back, or straight to the next waiter if any."""
        self._limiter.release_on_behalf_of(borrower)
        if not self._waiters:
            return
        if self._congested():
            if len(self._waiters) > 1:
                self._served_lifo += 1
            waiter, _ = self._waiters.popitem(last=True)
        else:
            waiter, _ = self._waiters.popitem(last=False)
        self._limiter.acquire_on_behalf_of_nowait(waiter.borrower)
        waiter.granted.set()

    def _release(self, lease: Lease, borrower: object) -> None:
        self._free_slot(borrower)
        self._forget_key(lease.key)
        held = trio.current_time() - lease.admitted_at
        self._samples += 1
        alpha = max(_EWMA_ALPHA, 1.0 / self._samples)
        self._mean_service_time += alpha * (held - self._mean_service_time)

    def _forget_key(self, key: str | None) -> None:
        if key is None or self._per_key is None:
            return
        n = self._keys[key] - 1
        if n:
            self._keys[key] = n
        else:
            del self._keys[key]

    def statistics(self) -> AdmissionStatistics:
        """A snapshot; see :class:`AdmissionStatistics`."""
        return AdmissionStatistics(
            in_flight=int(self._limiter.borrowed_tokens),
            queued=self._queued,
            max_concurrency=self.max_concurrency,
            max_queued=self._max_queued,
            admitted=self._admitted,
            shed_full=self._shed_full,
            shed_timeout=self._shed_timeout,
            shed_key_limit=self._shed_key_limit,
            shed_loop_lag=self._shed_loop_lag,
            keys_in_flight=len(self._keys),
            mean_service_time=self._mean_service_time
            if math.isfinite(self._mean_service_time)
            else 0.0,
            admitted_newest_first=self._served_lifo,
            slots_granted=self._slots_granted,
            slot_waits=self._slot_waits,
            slots_waiting=self._slots_waiting,
        )

    def __repr__(self) -> str:
        return (
            f"<Admission in_flight={int(self._limiter.borrowed_tokens)}/{self.max_concurrency}"
            f" queued={self._queued}/{self._max_queued} admitted={self._admitted}"
            f" shed={self._shed_full + self._shed_timeout + self._shed_key_limit + self._shed_loop_lag}>"
        )
