"""Benchmark metrics as a pure function of the records. No I/O, no clock.

:func:`compute_metrics` takes the records, the run's duration, the
warm-up cut and the end of the measurement window, and returns a frozen
:class:`BenchMetrics`. Definitions (all times in seconds from the run's origin):

* the measurement window is ``[warmup, measure_end]``; ``measure_end`` is the
  end of the send window for a run bounded by duration (requests still in
  flight then drain after it and are cut off at it), else the run's
  ``duration``;
* throughput counts what happened *inside the window*, over all records
  whatever their scheduled time (a saturated closed loop has requests that
  outlive the whole window: counting only requests scheduled and finished in
  it would report a fraction of what the server delivered):

  - delivered output tokens: each token event that arrived in the window
    counts ``output_tokens / len(token_times)`` tokens of its request (a
    server may coalesce several tokens into one event); output token
    throughput = delivered tokens / window;
  - request throughput: ``ok`` requests that *ended* in the window
    (``completed``) / window;
  - goodput: those of them meeting every SLO given, judged from the scheduled
    time as a user sees it (TTFT from scheduled, e2e from scheduled, TPOT),
    per second of the window; ``None`` if no SLO is set;
* measured requests: those *scheduled* at or after ``warmup``; latencies,
  outcome counts and rates (shed rate = the ``shed`` share) are over them,
  each request followed to its end even past ``measure_end``;
* ``output_tokens``: the output tokens of the measured ``ok`` requests (not
  a throughput figure);
* TTFT: first token minus sent; TTFT from scheduled: first token minus
  scheduled, which includes time queued in the client (open loop at the
  concurrency cap), so a slow generator cannot hide latency;
* ITL: the gaps between consecutive token events of a request (a server that
  coalesces tokens makes fewer, longer gaps); TPOT: ``(e2e - ttft) /
  (output_tokens - 1)`` per request with at least two tokens;
* e2e: end minus sent;
* latency figures are over ``ok`` requests only; percentiles interpolate
  linearly between closest ranks (numpy's default);
* peak concurrency: the most requests in flight at once (sent to end,
  half-open intervals), over all records including warm-up, since those load
  the server too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ._records import Outcome, RequestRecord

__all__ = [
    "SLO",
    "BenchMetrics",
    "Summary",
    "compute_metrics",
    "delivered_tokens",
    "peak_concurrency",
    "percentile",
]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ascending ``sorted_values``, linear interpolation."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q!r}")
    rank = (len(sorted_values) - 1) * q / 100
    lo = math.floor(rank)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = rank - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


@dataclass(frozen=True, kw_only=True, slots=True)
class Summary:
    """Distribution of one latency, in seconds. All ``None`` when ``n == 0``."""

    n: int
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        """Summarize ``values`` (any order)."""
        data = sorted(values)
        if not data:
            return cls(n=0)
        return cls(
            n=len(data),
            mean=math.fsum(data) / len(data),
            p50=percentile(data, 50),
            p90=percentile(data, 90),
            p95=percentile(data, 95),
            p99=percentile(data, 99),
            max=data[-1],
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class SLO:
    """Service-level objectives for goodput, in seconds; ``None`` = not checked."""

    ttft: float | None = None
    tpot: float | None = None
    e2e: float | None = None

    @property
    def any(self) -> bool:
        """Whether any objective is set."""
        return self.ttft is not None or self.tpot is not None or self.e2e is not None

    def met_by(self, record: RequestRecord) -> bool:
        """Whether an ``ok`` record meets every objective, timed from its scheduled time."""
        if record.outcome is not Outcome.OK:
            return False
        if self.ttft is not None:
            if (
                record.first_token_at is None
                or record.first_token_at - record.scheduled_at > self.ttft
            ):
                return False
        if self.e2e is not None and record.end_at - record.scheduled_at > self.e2e:
            return False
        if self.tpot is not None:
            tpot = _tpot(record)
            if tpot is not None and tpot > self.tpot:
                return False
        return True


@dataclass(frozen=True, kw_only=True, slots=True)
class BenchMetrics:
    """Everything :func:`compute_metrics` derives from one run's records."""

    window: float
    requests: int
    ok: int
    outcomes: dict[str, int]
    outcome_rates: dict[str, float]
    shed_rate: float
    completed: int
    request_throughput: float
    output_tokens: int
    delivered_tokens: float
    output_token_throughput: float
    sse_events: int
    ttft: Summary
    ttft_from_scheduled: Summary
    itl: Summary
    tpot: Summary
    e2e: Summary
    good_requests: int | None
    goodput: float | None
    peak_concurrency: int
    warmup_requests: int


def _tpot(record: RequestRecord) -> float | None:
    if record.first_token_at is None or record.output_tokens < 2:
        return None
    return (record.end_at - record.first_token_at) / (record.output_tokens - 1)


def peak_concurrency(records: Iterable[RequestRecord]) -> int:
    """Most requests in flight at once, intervals ``[sent_at, end_at)`` (an end before a start)."""
    edges: list[tuple[float, int]] = []
    for r in records:
        if r.end_at > r.sent_at:
            edges.append((r.sent_at, 1))
            edges.append((r.end_at, -1))
    edges.sort()  # at equal times -1 sorts before +1: an end frees its slot first
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def delivered_tokens(records: Iterable[RequestRecord], start: float, end: float) -> float:
    """Output tokens whose events arrived in ``[start, end]``, over every record."""
    total = 0.0
    for r in records:
        times = r.token_times
        if not times:
            continue
        inside = sum(1 for t in times if start <= t <= end)
        if inside:
            total += r.output_tokens * inside / len(times)
    return total


def compute_metrics(
    records: Sequence[RequestRecord],
    *,
    duration: float,
    warmup: float = 0.0,
    slo: SLO | None = None,
    measure_end: float | None = None,
) -> BenchMetrics:
    """The metrics of one run (see the module docstring for every definition).

    ``duration`` is the run's length from its origin (the last request's
    end); ``warmup`` the cut: records scheduled before it are left out of
    the latencies; ``measure_end`` (default ``duration``) ends the window
    throughput is counted in.
    """
    slo = slo or SLO()
    end = duration if measure_end is None else measure_end
    measured = [r for r in records if r.scheduled_at >= warmup]
    ok = [r for r in measured if r.outcome is Outcome.OK]
    ended_ok = [
        r for r in records if r.outcome is Outcome.OK and warmup <= r.end_at <= end
    ]
    window = max(0.0, end - warmup)

    def per_second(count: float) -> float:
        return count / window if window > 0 else 0.0

    outcomes = {o.value: 0 for o in Outcome}
    for r in measured:
        outcomes[r.outcome.value] += 1
    total = len(measured)
    rates = {k: (v / total if total else 0.0) for k, v in outcomes.items()}
    output_tokens = sum(r.output_tokens for r in ok)
    delivered = delivered_tokens(records, warmup, end)

    ttfts = [r.first_token_at - r.sent_at for r in ok if r.first_token_at is not None]
    ttfts_sched = [r.first_token_at - r.scheduled_at for r in ok if r.first_token_at is not None]
    itls = [
        later - earlier
        for r in ok
        for earlier, later in zip(r.token_times, r.token_times[1:], strict=False)
    ]
    tpots = [t for t in (_tpot(r) for r in ok) if t is not None]
    good = sum(1 for r in ended_ok if slo.met_by(r)) if slo.any else None
    return BenchMetrics(
        window=window,
        requests=total,
        ok=len(ok),
        outcomes=outcomes,
        outcome_rates=rates,
        shed_rate=rates[Outcome.SHED.value],
        completed=len(ended_ok),
        request_throughput=per_second(len(ended_ok)),
        output_tokens=output_tokens,
        delivered_tokens=delivered,
        output_token_throughput=per_second(delivered),
        sse_events=sum(r.sse_events for r in measured),
        ttft=Summary.of(ttfts),
        ttft_from_scheduled=Summary.of(ttfts_sched),
        itl=Summary.of(itls),
        tpot=Summary.of(tpots),
        e2e=Summary.of(r.end_at - r.sent_at for r in ok),
        good_requests=good,
        goodput=per_second(good) if good is not None else None,
        peak_concurrency=peak_concurrency(records),
        warmup_requests=len(records) - total,
    )
