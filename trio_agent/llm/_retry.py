"""Retry policy for upstream calls: which failures to retry, backoff, Retry-After, a budget."""

from __future__ import annotations

import email.utils
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import trio

__all__ = [
    "RETRYABLE_STATUSES",
    "RetryBudget",
    "RetryBudgetStatistics",
    "backoff_delay",
    "is_retryable_status",
    "parse_retry_after",
]

#: Statuses worth sending again: timeouts, conflicts, rate limits and server errors.
#: 400, 401, 403, 404 and 422 say the request itself is wrong, and are never retried.
RETRYABLE_STATUSES = frozenset({408, 409, 429})


def is_retryable_status(status: int) -> bool:
    """True for 408, 409, 429 and every 5xx."""
    return status in RETRYABLE_STATUSES or 500 <= status <= 599


def backoff_delay(attempt: int, rng: random.Random, *, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt)).

    ``attempt`` counts retries from 0. Full jitter spreads a herd of clients
    that failed together so they do not come back together.
    """
    return rng.uniform(0.0, min(cap, base * (2**attempt)))


def parse_retry_after(
    headers: Mapping[str, str], *, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - now()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryBudgetStatistics:
    """Requests and retries seen in the current window, and retries refused so far."""

    requests_in_window: int
    retries_in_window: int
    retries_allowed: int
    refused: int


class RetryBudget:
    """A process-wide cap on retries: at most ``ratio`` of requests over a sliding window.

    When an upstream is down, every request failing and retrying N times would
    multiply the load on it by N. With a budget, retries stay at about
    ``ratio`` (10 %) of requests in the last ``window`` seconds, plus a small
    floor of ``min_retries`` so a quiet process can still retry. Time comes
    from trio's clock.
    """

    def __init__(self, *, ratio: float = 0.1, window: float = 10.0, min_retries: int = 3) -> None:
        if not 0 <= ratio <= 1 or window <= 0 or min_retries < 0:
            raise ValueError("ratio must be in [0, 1], window > 0, min_retries >= 0")
        self._ratio = ratio
        self._window = window
        self._min = min_retries
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()
        self._refused = 0

    def _trim(self, now: float) -> None:
        horizon = now - self._window
        for q in (self._requests, self._retries):
            while q and q[0] <= horizon:
                q.popleft()

    def _allowed(self) -> int:
        return self._min + int(self._ratio * len(self._requests))

    def record_request(self) -> None:
        """Count one incoming request (not a retry)."""
        now = trio.current_time()
        self._trim(now)
        self._requests.append(now)

    def try_spend(self) -> bool:
        """Take one retry from the budget; False (and counted as refused) when it is spent."""
        now = trio.current_time()
        self._trim(now)
        if len(self._retries) >= self._allowed():
            self._refused += 1
            return False
        self._retries.append(now)
        return True

    def statistics(self) -> RetryBudgetStatistics:
        """A snapshot of the window."""
        self._trim(trio.current_time())
        return RetryBudgetStatistics(
            requests_in_window=len(self._requests),
            retries_in_window=len(self._retries),
            retries_allowed=self._allowed(),
            refused=self._refused,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<RetryBudget retries={s.retries_in_window}/{s.retries_allowed} requests={s.requests_in_window}>"
