"""Load schedules, as pure functions: when requests should go out. No I/O, no clock.

* Closed loop: a fixed number of workers, each sending its next request when
  the previous one ends. Its schedule is the split of workers and requests
  over the generator processes (:func:`split_evenly`) and, with a ramp-up,
  when each worker sends its first request (:func:`ramp_offsets`).
* Open loop: arrivals at ``rate`` per second whatever the server does, the
  gaps gamma-distributed with shape ``burstiness`` and mean ``1 / rate``
  (:func:`arrival_times`). Burstiness 1 is a Poisson process; below 1 the
  arrivals bunch up, above 1 they even out. The random source is a
  ``random.Random`` passed in, never the global one, so a seed reproduces a
  schedule exactly. Several generator processes share one schedule by taking
  every K-th arrival (:func:`shard`), so the load is the same with 1 or K
  processes.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["arrival_times", "ramp_offsets", "shard", "split_evenly"]

T = TypeVar("T")


def arrival_times(rate: float, burstiness: float, rng: random.Random) -> Iterator[float]:
    """Endless arrival times (seconds from 0, increasing) of a gamma renewal process.

    The first arrival comes one gap after 0. Each gap is
    ``rng.gammavariate(burstiness, 1 / (rate * burstiness))``: mean ``1 /
    rate``, coefficient of variation ``1 / sqrt(burstiness)``.
    """
    if rate <= 0 or burstiness <= 0:
        raise ValueError(f"rate and burstiness must be > 0, got {rate!r}, {burstiness!r}")
    theta = 1.0 / (rate * burstiness)
    gamma = rng.gammavariate
    t = 0.0
    while True:
        t += gamma(burstiness, theta)
        yield t


def shard(items: Iterable[T], index: int, count: int) -> Iterator[tuple[int, T]]:
    """``(position, item)`` for every ``count``-th item starting at ``index``."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} out of range for {count} shards")
    return itertools.islice(enumerate(items), index, None, count)


def split_evenly(total: int, count: int) -> list[int]:
    """``total`` split over ``count`` parts that differ by at most one, larger parts first."""
    if count < 1 or total < 0:
        raise ValueError(f"cannot split {total} over {count}")
    base, extra = divmod(total, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


def ramp_offsets(ramp_up: float, total: int, index: int = 0, count: int = 1) -> list[float]:
    """Seconds after the origin at which each closed-loop worker of shard ``index`` of ``count`` starts.

    The shard runs ``split_evenly(total, count)[index]`` of the ``total``
    workers; its local worker ``j`` is worker ``k = j * count + index`` of
    the whole loop (every ``k`` in ``0 .. total - 1`` exactly once over the
    shards) and sends its first request at ``ramp_up * k / total``: the first
    requests are spread evenly over the ramp-up, as GuideLLM's
    ``rampup_duration`` spreads them. ``ramp_up`` 0 starts every worker at
    once.
    """
    if ramp_up < 0:
        raise ValueError(f"ramp_up must be >= 0, got {ramp_up!r}")
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} out of range for {count} shards")
    workers = split_evenly(total, count)[index]
    return [ramp_up * (j * count + index) / total for j in range(workers)]
