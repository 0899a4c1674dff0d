"""trio_agent.bench._metrics: every figure checked against hand-computed records."""

from __future__ import annotations

import pytest

from trio_agent.bench import (
    SLO,
    Outcome,
    RequestRecord,
    Summary,
    compute_metrics,
    peak_concurrency,
    percentile,
)


def rec(
    index: int,
    scheduled: float,
    sent: float,
    end: float,
    outcome: Outcome = Outcome.OK,
    tokens: tuple[float, ...] = (),
    output_tokens: int | None = None,
    **kw: object,
) -> RequestRecord:
    return RequestRecord(
        index=index,
        scheduled_at=scheduled,
        sent_at=sent,
        end_at=end,
        outcome=outcome,
        first_token_at=tokens[0] if tokens else None,
        token_times=tokens,
        output_tokens=len(tokens) if output_tokens is None else output_tokens,
        **kw,  # type: ignore[arg-type]
    )


# Times are dyadic fractions so that differences are exact in binary floating point.
RECORDS = [
    rec(0, 0.5, 0.5, 2.0, tokens=(1.0, 2.0)),  # warm-up: left out, but loads the server
    rec(1, 1.0, 1.0, 2.0, tokens=(1.5, 1.75, 2.0)),
    rec(2, 2.0, 3.0, 3.75, tokens=(3.25, 3.75)),  # queued 1 s in the client
    rec(3, 4.0, 4.0, 4.5, tokens=(4.125, 4.25, 4.375, 4.5), output_tokens=5),  # coalesced
    rec(4, 5.0, 5.0, 5.0625, Outcome.SHED, status_code=503, retry_after=2.0),
    rec(5, 6.0, 6.0, 9.0, Outcome.TIMEOUT),
    rec(6, 6.0, 6.0, 7.0, tokens=(6.5,)),
    rec(7, 6.5, 6.5, 6.5, Outcome.CONNECT_ERROR),
    rec(8, 6.25, 6.25, 6.75, Outcome.UPSTREAM_ERROR, error_code="upstream_timeout"),
]


def test_counts_throughput_and_rates() -> None:
    m = compute_metrics(RECORDS, duration=11.0, warmup=1.0)
    assert m.window == 10.0
    assert m.requests == 8
    assert m.warmup_requests == 1
    assert m.ok == 4
    assert m.outcomes == {
        "ok": 4,
        "shed": 1,
        "timeout": 1,
        "http_error": 0,
        "upstream_error": 1,
        "protocol_error": 0,
        "connect_error": 1,
        "cancelled": 0,
    }
    assert m.outcome_rates["ok"] == 0.5
    assert m.shed_rate == 0.125
    # Throughput counts what happened in the window [1, 11], whatever the schedule: request 0
    # (scheduled in the warm-up) ended at 2.0, inside it, with both its token events.
    assert m.completed == 5  # requests 0, 1, 2, 3, 6
    assert m.request_throughput == 0.5
    assert m.output_tokens == 11  # of the measured ok requests: 3 + 2 + 5 + 1
    assert m.delivered_tokens == 13.0  # 2 + 3 + 2 + 4 events x 1.25 + 1
    assert m.output_token_throughput == 1.3
    assert m.peak_concurrency == 3
    assert m.goodput is None and m.good_requests is None


def test_latency_summaries() -> None:
    m = compute_metrics(RECORDS, duration=11.0, warmup=1.0)
    assert m.ttft == Summary(n=4, mean=0.34375, p50=0.375, p90=0.5, p95=0.5, p99=0.5, max=0.5)
    sched = m.ttft_from_scheduled
    assert (sched.n, sched.mean, sched.p50, sched.max) == (4, 0.59375, 0.5, 1.25)
    assert sched.p90 == pytest.approx(0.5 + 0.7 * 0.75, rel=1e-12)
    assert sched.p99 == pytest.approx(0.5 + 0.97 * 0.75, rel=1e-12)
    assert (m.itl.n, m.itl.p50, m.itl.max) == (6, 0.1875, 0.5)
    assert m.itl.mean == pytest.approx(1.375 / 6, rel=1e-12)
    # TPOT: (e2e - ttft) / (tokens - 1): 0.5/2, 0.5/1, 0.375/4; the one-token request has none.
    assert (m.tpot.n, m.tpot.mean, m.tpot.p50, m.tpot.max) == (3, 0.28125, 0.25, 0.5)
    assert (m.e2e.n, m.e2e.mean, m.e2e.p50, m.e2e.max) == (4, 0.8125, 0.875, 1.0)


def test_goodput_judges_from_the_scheduled_time() -> None:
    m = compute_metrics(RECORDS, duration=11.0, warmup=1.0, slo=SLO(ttft=0.5, tpot=0.3, e2e=1.0))
    # Request 2 had a 0.25 s TTFT from sending but waited 1 s in the client: not good.
    assert m.good_requests == 3
    assert m.goodput == 0.3
    strict = compute_metrics(RECORDS, duration=11.0, warmup=1.0, slo=SLO(tpot=0.2))
    assert strict.good_requests == 2  # requests 3 and 6 (no TPOT with one token)


def test_the_window_ends_at_measure_end_and_splits_requests_that_straddle_it() -> None:
    m = compute_metrics(RECORDS, duration=11.0, warmup=1.0, measure_end=4.25)
    assert m.window == 3.25
    # Ended in [1, 4.25]: requests 0, 1, 2 (request 3 ends at 4.5, request 6 at 7.0).
    assert m.completed == 3
    # Token events in [1, 4.25]: 2 + 3 + 2, and request 3's first two of four events,
    # each worth 5/4 tokens (coalesced); request 6's token at 6.5 is past the end.
    assert m.delivered_tokens == 9.5
    assert m.output_token_throughput == 9.5 / 3.25
    # Latencies still follow every measured request to its end.
    assert m.ttft.n == 4 and m.e2e.max == 1.0
    late = compute_metrics(RECORDS, duration=11.0, warmup=3.5, measure_end=4.25)
    # Only request 2's last event (3.75) and request 3's first two events count.
    assert late.delivered_tokens == 1 + 2.5
    assert late.completed == 1  # request 2, ended at 3.75


def test_goodput_counts_requests_that_ended_in_the_window() -> None:
    slo = SLO(ttft=0.5, tpot=0.3, e2e=1.0)
    m = compute_metrics(RECORDS, duration=11.0, warmup=1.0, slo=slo, measure_end=4.25)
    assert m.good_requests == 1  # of 0, 1, 2 only request 1 (0: e2e 1.5 s; 2: queued 1 s)
    assert m.goodput == 1 / 3.25


def test_no_warmup_counts_everything() -> None:
    m = compute_metrics(RECORDS, duration=10.0)
    assert m.requests == 9
    assert m.ok == 5
    assert m.request_throughput == 0.5


def test_empty_run() -> None:
    m = compute_metrics([], duration=0.0)
    assert m.requests == 0
    assert m.request_throughput == 0.0
    assert m.ttft == Summary(n=0)
    assert m.shed_rate == 0.0
    assert m.peak_concurrency == 0


def test_peak_concurrency_treats_intervals_as_half_open() -> None:
    back_to_back = [rec(0, 0.0, 0.0, 1.0), rec(1, 1.0, 1.0, 2.0), rec(2, 2.0, 2.0, 3.0)]
    assert peak_concurrency(back_to_back) == 1
    nested = [
        rec(0, 0.0, 0.0, 4.0),
        rec(1, 1.0, 1.0, 3.0),
        rec(2, 2.0, 2.0, 2.5),
        rec(3, 3.0, 3.0, 5.0),
    ]
    assert peak_concurrency(nested) == 3


def test_percentile_interpolates_linearly() -> None:
    data = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(data, 0) == 1.0
    assert percentile(data, 50) == 3.0
    assert percentile(data, 100) == 5.0
    assert percentile(data, 90) == 4.6
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(data, 101)
