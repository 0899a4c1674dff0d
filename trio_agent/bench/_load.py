"""The load generator: runs a schedule against a one-request client, collects records.

One :class:`LoadGenerator` drives one :class:`~trio_agent.bench.RequestClient`
inside one trio run. Every request runs in its own task, inside two scopes:
the client-side deadline (``request_timeout`` from sending: outcome
``timeout``) inside the run's hard deadline (``max_duration`` from the origin:
outcome ``cancelled``). So every request that was scheduled ends with a
record, including the ones the hard cap cut short, and nothing outlives
:meth:`LoadGenerator.run`.

Closed-loop workers start together, or spread evenly over ``ramp_up``
seconds (:func:`~trio_agent.bench._schedule.ramp_offsets`). Sending stops
when the measured request budget is spent or ``warmup + duration`` has
passed, whichever comes first; requests in flight then finish
(each bounded by its deadline). The run's duration is from the origin to the
moment the last request ended.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import trio

from ..config import BenchConfig
from ._client import RequestClient
from ._records import Outcome, RequestRecord, RequestTrace
from ._schedule import arrival_times, ramp_offsets, shard, split_evenly

__all__ = ["LoadGenerator", "LoadResult", "LoadStatistics"]


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadStatistics:
    """Live counts of a :class:`LoadGenerator`: ``in_flight`` counts requests not yet ended, queued in the client or sent."""

    scheduled: int
    in_flight: int
    done: int


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadResult:
    """The records of one generator run and its duration (seconds from the origin)."""

    records: tuple[RequestRecord, ...]
    duration: float


class LoadGenerator:
    """Sends the load described by ``config`` (its share ``shard_index`` of ``shard_count``).

    With several generator processes each runs one shard: closed-loop workers
    and request budgets are split evenly, and open-loop arrivals are dealt
    round-robin from the one seeded schedule, so request ``index`` values are
    unique across shards.
    """

    def __init__(
        self,
        client: RequestClient,
        config: BenchConfig,
        *,
        shard_index: int = 0,
        shard_count: int = 1,
    ) -> None:
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard {shard_index} out of range for {shard_count}")
        self._client = client
        self._config = config
        self._shard_index = shard_index
        self._shard_count = shard_count
        self._concurrency = split_evenly(config.concurrency, shard_count)[shard_index]
        self._measured_left = (
            split_evenly(config.requests, shard_count)[shard_index]
            if config.requests is not None
            else None
        )
        self._total_left = split_evenly(config.max_requests, shard_count)[shard_index]
        self._records: list[RequestRecord] = []
        self._scheduled = 0
        self._in_flight = 0
        self._origin = 0.0
        self._hard_deadline = 0.0
        self._send_until = 0.0
        self._next_index = shard_index

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<LoadGenerator shard={self._shard_index}/{self._shard_count} "
            f"concurrency={self._concurrency} scheduled={s.scheduled} "
            f"in_flight={s.in_flight} done={s.done}>"
        )

    def statistics(self) -> LoadStatistics:
        """Requests scheduled so far, in flight now, and finished."""
        return LoadStatistics(
            scheduled=self._scheduled, in_flight=self._in_flight, done=len(self._records)
        )

    async def run(self, *, origin: float | None = None) -> LoadResult:
        """Send the whole load; return every request's record, sorted by index.

        ``origin`` (a ``trio.current_time()`` value, default now) is time 0 of
        the records; generator processes started together pass a common one.
        """
        cfg = self._config
        now = trio.current_time()
        self._origin = now if origin is None else origin
        if self._origin > now:
            await trio.sleep_until(self._origin)
        self._hard_deadline = self._origin + cfg.max_duration
        send_window = cfg.warmup + (cfg.duration if cfg.duration is not None else cfg.max_duration)
        self._send_until = self._origin + min(send_window, cfg.max_duration)
        async with trio.open_nursery() as nursery:
            if cfg.rate is None:
                offsets = ramp_offsets(
                    cfg.ramp_up, cfg.concurrency, self._shard_index, self._shard_count
                )
                for offset in offsets:
                    nursery.start_soon(self._closed_loop_worker, self._origin + offset)
            else:
                nursery.start_soon(self._open_loop, nursery)
        duration = trio.current_time() - self._origin
        records = tuple(sorted(self._records, key=lambda r: r.index))
        return LoadResult(records=records, duration=duration)

    def _claim(self, scheduled_at: float) -> bool:
        """Count one request against the budgets; False if it must not be sent."""
        if self._total_left <= 0:
            return False
        measured = scheduled_at >= self._origin + self._config.warmup
        if measured and self._measured_left is not None:
            if self._measured_left <= 0:
                return False
            self._measured_left -= 1
        self._total_left -= 1
        self._scheduled += 1
        return True

    def _take_index(self) -> int:
        index = self._next_index
        self._next_index += self._shard_count
        return index

    async def _closed_loop_worker(self, start: float) -> None:
        if start > trio.current_time():
            await trio.sleep_until(start)
        while True:
            now = trio.current_time()
            if now >= self._send_until or not self._claim(now):
                return
            await self._one(self._take_index(), now, None)

    async def _open_loop(self, nursery: trio.Nursery) -> None:
        cfg = self._config
        assert cfg.rate is not None
        limiter = trio.CapacityLimiter(self._concurrency)
        arrivals = arrival_times(cfg.rate, cfg.burstiness, random.Random(cfg.seed))
        for position, offset in shard(arrivals, self._shard_index, self._shard_count):
            at = self._origin + offset
            if at >= self._send_until or not self._claim(at):
                return
            await trio.sleep_until(at)
            nursery.start_soon(self._one, position, at, limiter)

    async def _one(
        self, index: int, scheduled_at: float, limiter: trio.CapacityLimiter | None
    ) -> None:
        trace = RequestTrace(index=index, scheduled_at=scheduled_at)
        self._in_flight += 1
        try:
            with trio.CancelScope(deadline=self._hard_deadline) as hard:
                if limiter is None:
                    await self._send(trace)
                else:
                    async with limiter:
                        await self._send(trace)
        finally:
            self._in_flight -= 1
        default = Outcome.CANCELLED if hard.cancelled_caught else Outcome.PROTOCOL_ERROR
        self._records.append(
            trace.freeze(origin=self._origin, end_at=trio.current_time(), default=default)
        )

    async def _send(self, trace: RequestTrace) -> None:
        with trio.move_on_after(self._config.request_timeout) as soft:
            await self._client.run(trace)
        if soft.cancelled_caught:
            trace.fail(Outcome.TIMEOUT, f"no end within {self._config.request_timeout} s")
