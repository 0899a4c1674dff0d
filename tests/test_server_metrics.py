"""Metrics: cheap counters, cumulative histograms, valid Prometheus text."""

from __future__ import annotations

import re
from dataclasses import dataclass

from trio_agent.concurrency import LoopLagStatistics
from trio_agent.http import ConnectionCounter
from trio_agent.server import AdmissionStatistics, GatewayMetrics, Histogram

STATS = AdmissionStatistics(
    in_flight=3, queued=2, max_concurrency=10, max_queued=5, admitted=40,
    shed_full=4, shed_timeout=1, shed_key_limit=0, shed_loop_lag=2, keys_in_flight=0, mean_service_time=1.0,
)
SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+]+$')


def test_histogram_is_cumulative_with_inf_bucket() -> None:
    h = Histogram("x_seconds", "help", buckets=(0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 5.0):
        h.observe(v)
    lines = list(h.render())
    assert 'x_seconds_bucket{le="0.1"} 2' in lines
    assert 'x_seconds_bucket{le="1"} 3' in lines
    assert 'x_seconds_bucket{le="+Inf"} 4' in lines
    assert "x_seconds_count 4" in lines
    assert "x_seconds_sum 5.650000" in lines


@dataclass
class BackendStats:
    retries: int


def test_render_is_valid_exposition_text() -> None:
    m = GatewayMetrics()
    m.count_response("/chat/stream", 200)
    m.count_response("/chat/stream", 200)
    m.count_response("/chat", 503)
    m.count_upstream_error("upstream_status")
    m.tokens_streamed += 7
    m.ttft.observe(0.2)
    text = m.render(STATS, draining=True, backend_statistics=BackendStats(retries=5))
    lines = text.splitlines()
    for line in lines:
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or SAMPLE.match(line), line
    for expected in (
        "trio_agent_in_flight 3",
        "trio_agent_queued 2",
        'trio_agent_shed_total{reason="queue_full"} 4',
        'trio_agent_shed_total{reason="queue_timeout"} 1',
        "trio_agent_draining 1",
        'trio_agent_responses_total{route="/chat/stream",status="200"} 2',
        'trio_agent_upstream_errors_total{kind="upstream_status"} 1',
        "trio_agent_upstream_retries_total 5",
        "trio_agent_tokens_streamed_total 7",
        "trio_agent_ttft_seconds_count 1",
    ):
        assert expected in lines, expected
    names = [ln.split()[2] for ln in lines if ln.startswith("# TYPE")]
    assert len(names) == len(set(names))


def test_retries_are_left_out_when_the_backend_has_none() -> None:
    text = GatewayMetrics().render(STATS, draining=False)
    assert "retries" not in text
    assert "trio_agent_draining 0" in text.splitlines()


def test_repr() -> None:
    assert "tokens=0" in repr(GatewayMetrics())


def test_render_shows_loop_lag_and_connections_when_known() -> None:
    m = GatewayMetrics()
    lag = LoopLagStatistics(current=0.25, last=0.3, peak=0.5, samples=9, running=True)
    conns = ConnectionCounter()
    conns.open, conns.opened = 3, 7
    text = m.render(STATS, draining=False, loop_lag=lag, connections=conns)
    lines = text.splitlines()
    assert "trio_agent_loop_lag_seconds 0.25" in lines
    assert "trio_agent_loop_lag_peak_seconds 0.5" in lines
    assert "trio_agent_connections_open 3" in lines
    assert "trio_agent_connections_total 7" in lines
    assert "trio_agent_connections_limit" not in text  # unbounded
    conns.limit, conns.refused, conns.closed_at_once, conns.idle_closed = 10, 4, 1, 2
    conns.accept_failures = 5
    lines = m.render(STATS, draining=False, connections=conns).splitlines()
    assert "trio_agent_connections_limit 10" in lines
    assert "trio_agent_connections_idle 0" in lines
    assert 'trio_agent_connections_refused_total{reason="limit"} 4' in lines
    assert 'trio_agent_connections_refused_total{reason="limit_closed"} 1' in lines
    assert 'trio_agent_connections_refused_total{reason="fd_exhausted"} 5' in lines
    assert "trio_agent_connections_idle_closed_total 2" in lines
    assert 'trio_agent_shed_total{reason="loop_lag"} 2' in lines
    assert all(SAMPLE.match(line) for line in lines if not line.startswith("#"))
    # A monitor that is not running and a server that served no connection: no such lines.
    quiet = m.render(
        STATS,
        draining=False,
        loop_lag=LoopLagStatistics(current=0, last=0, peak=0, samples=0, running=False),
        connections=ConnectionCounter(),
    )
    assert "loop_lag_seconds" not in quiet and "connections_open" not in quiet
