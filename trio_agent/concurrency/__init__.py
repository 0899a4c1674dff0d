"""The trio helpers: bounded concurrent map, a request queue, a rate limiter, stream deadlines.

Each replaces an asyncio habit with a structured-concurrency tool:

- :func:`map_concurrently` / :func:`as_completed`: ``gather(return_exceptions=True)``
  under a ``Semaphore``, with an :class:`Outcome` per item instead of error strings;
- :func:`open_request_queue` / :class:`RequestQueue`: an ``asyncio.Queue`` with
  workers and "Service busy" answers, with bounded waits and clean shutdown;
- :class:`RateLimiter`: starts per second (GCRA) on trio's clock;
- :func:`iter_with_timeouts`: ``wait_for`` around each ``__anext__``, as one
  deadline per stage (first item, idle gap, total);
- :class:`LoopLag`: how far behind the scheduler runs, the signal to shed
  load on when the CPU, not a slot count, runs out.

None of them knows about HTTP or LLMs.
"""

from ._iterators import TimeoutIterator, iter_with_timeouts
from ._lag import LoopLag, LoopLagStatistics
from ._map import as_completed, map_concurrently
from ._outcome import Outcome
from ._queue import RequestQueue, RequestQueueStatistics, open_request_queue
from ._rate import RateLimiter, RateLimiterStatistics

__all__ = [
    "LoopLag",
    "LoopLagStatistics",
    "Outcome",
    "RateLimiter",
    "RateLimiterStatistics",
    "RequestQueue",
    "RequestQueueStatistics",
    "TimeoutIterator",
    "as_completed",
    "iter_with_timeouts",
    "map_concurrently",
    "open_request_queue",
]
