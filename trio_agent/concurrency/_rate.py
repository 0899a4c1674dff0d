"""RateLimiter: at most ``rate`` starts per second, with bursts of up to ``burst``.

A CapacityLimiter caps how many things run *at once*; a rate limiter caps how
many *start* per second, whatever their duration. Upstream LLM APIs usually
impose both.

The algorithm is GCRA (the generic cell rate algorithm, a token bucket written
with one number): each start pushes a "theoretical arrival time" one interval
(``1 / rate``) into the future; a start is allowed while that time is at most
``(burst - 1)`` intervals ahead of now. Everything runs on trio's clock, so
tests on ``MockClock`` see exact times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import trio


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimiterStatistics:
    """A snapshot of a :class:`RateLimiter`.

    ``tokens_available`` is how many starts would be allowed right now without
    waiting; ``tasks_waiting`` how many tasks are blocked in ``acquire()``.
    """

    rate: float
    burst: int
    acquired: int
    tasks_waiting: int
    tokens_available: int


class RateLimiter:
    """Limit starts per second: ``await limiter.acquire()`` before each start.

    ``rate`` is starts per second (a float: 0.5 means one every two seconds),
    ``burst`` how many may start back to back after a quiet period. With
    ``rate=2, burst=1``, five tasks calling ``acquire()`` at time 0 start at
    0.0, 0.5, 1.0, 1.5 and 2.0.

    Waiters are served first come, first served. Cancelling a waiting
    ``acquire()`` consumes nothing. ``acquire_nowait()`` raises
    ``trio.WouldBlock`` instead of waiting (also when others are already
    waiting, so it never jumps the line).
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a positive finite number, got {rate!r}")
        if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
            raise ValueError(f"burst must be an int >= 1, got {burst!r}")
        self._rate = float(rate)
        self._burst = burst
        self._interval = 1.0 / self._rate
        self._tolerance = (burst - 1) * self._interval
        self._tat = -math.inf  # theoretical arrival time of the next start
        self._lock = trio.Lock()
        self._acquired = 0
        self._waiting = 0

    @property
    def rate(self) -> float:
        """Starts per second."""
        return self._rate

    @property
    def burst(self) -> int:
        """How many starts may happen back to back."""
        return self._burst

    def _allowed_at(self) -> float:
        return self._tat - self._tolerance

    def _take(self, now: float) -> None:
        self._tat = max(self._tat, now) + self._interval
        self._acquired += 1

    def acquire_nowait(self) -> None:
        """Take a start now, or raise ``trio.WouldBlock`` if that would exceed the rate."""
        now = trio.current_time()
        if self._lock.locked() or now < self._allowed_at():
            raise trio.WouldBlock
        self._take(now)

    async def acquire(self) -> None:
        """Wait until a start is allowed, then take it. Cancellable without consuming."""
        self._waiting += 1
        try:
            async with self._lock:
                await trio.sleep_until(max(self._allowed_at(), trio.current_time()))
                self._take(trio.current_time())
        finally:
            self._waiting -= 1

    def statistics(self) -> RateLimiterStatistics:
        """Return a :class:`RateLimiterStatistics` snapshot."""
        now = trio.current_time()
        ahead = max(self._tat, now) - now
        tokens = math.floor((self._tolerance - ahead) / self._interval + 1e-9) + 1
        return RateLimiterStatistics(
            rate=self._rate,
            burst=self._burst,
            acquired=self._acquired,
            tasks_waiting=self._waiting,
            tokens_available=max(0, min(self._burst, tokens)),
        )

    def __repr__(self) -> str:
        try:
            tokens = str(self.statistics().tokens_available)
        except RuntimeError:  # outside trio.run there is no clock
            tokens = "?"
        return (
            f"<RateLimiter rate={self._rate:g}/s burst={self._burst} "
            f"tokens_available={tokens} tasks_waiting={self._waiting} "
            f"acquired={self._acquired}>"
        )
