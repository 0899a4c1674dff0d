"""LoopLag: how far behind trio's scheduler runs, the load signal a CPU-bound server sheds on.

A task that asks to wake at time *t* runs at *t + lag*: the lag is how long a
runnable task waits for its turn. When one process serves more than its CPU
can carry, every scheduler pass grows and the lag with it; every stream's
tokens, every new request's first token, wait that long too. A concurrency
cap does not see this (a hundred cheap streams and a hundred expensive ones
count the same); the lag does.

Run the monitor in a nursery that lives as long as the server::

    lag = LoopLag()
    nursery.start_soon(lag.run)
    ...
    if lag.overloaded(0.15):
        ...  # refuse new work

``run`` sleeps ``interval`` seconds at a time and measures how late each wake
is; ``current`` is a moving average of the last few (so one slow pass, a GC
pause, does not trip it, and a sustained backlog does within a few passes).
A monitor that is not running reports 0. The default interval is long (50 ms)
because a timed wake-up is itself a cost the monitor adds to the load; the
gateway's use of it, and the measurements behind the defaults, are in
docs/decisions/007-loop-lag-shedding.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

__all__ = ["LoopLag", "LoopLagStatistics"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopLagStatistics:
    """A snapshot of a :class:`LoopLag`: seconds, and how many wakes were measured.

    ``current`` is the moving average, ``last`` the newest sample, ``peak``
    the largest sample seen.
    """

    current: float
    last: float
    peak: float
    samples: int
    running: bool


class LoopLag:
    """Measures trio's scheduling lag; see the module docstring.

    ``interval``: seconds between wakes (each costs one ``sleep_until``);
    ``alpha``: weight of the newest sample in the moving average.
    """

    def __init__(self, *, interval: float = 0.05, alpha: float = 0.5) -> None:
        if not interval > 0:
            raise ValueError("interval must be > 0")
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self._interval = interval
        self._alpha = alpha
        self._current = 0.0
        self._last = 0.0
        self._peak = 0.0
        self._samples = 0
        self._running = False

    @property
    def current(self) -> float:
        """The moving average of the lag, seconds (0 when not running)."""
        return self._current if self._running else 0.0

    def overloaded(self, max_lag: float) -> bool:
        """Whether the moving average is over ``max_lag`` seconds."""
        return self._running and self._current > max_lag

    async def run(self) -> None:
        """Measure until cancelled; at most one ``run`` at a time."""
        if self._running:
            raise RuntimeError("LoopLag.run is already running")
        self._running = True
        try:
            deadline = trio.current_time() + self._interval
            while True:
                await trio.sleep_until(deadline)
                now = trio.current_time()
                self._observe(now - deadline)
                deadline = now + self._interval
        finally:
            self._running = False
            self._current = 0.0

    def _observe(self, lag: float) -> None:
        lag = max(0.0, lag)
        self._samples += 1
        self._last = lag
        self._peak = max(self._peak, lag)
        self._current += self._alpha * (lag - self._current)

    def statistics(self) -> LoopLagStatistics:
        """A snapshot; see :class:`LoopLagStatistics`."""
        return LoopLagStatistics(
            current=self.current,
            last=self._last,
            peak=self._peak,
            samples=self._samples,
            running=self._running,
        )

    def __repr__(self) -> str:
        return f"<LoopLag current={self.current * 1000:.1f}ms samples={self._samples}>"
