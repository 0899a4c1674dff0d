"""Gateway metrics, rendered by hand in the Prometheus text format (no dependency).

Updates are on the hot path, so they are plain attribute increments on one
object (``metrics.tokens_streamed += n``); labelled counters (status codes,
upstream error kinds) are touched once per request, never per token.
Gauges that other objects already know (in flight, queued, admitted, shed,
upstream retries) are read from their ``statistics()`` at scrape time.
"""

from __future__ import annotations

import gc
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from ..concurrency import LoopLagStatistics
from ..http import ConnectionCounter
from ..llm import Usage
from ._admission import AdmissionStatistics
from ._metrics_genai import GenAIMetrics
from ._metrics_merge import format_value
from ._metrics_tracing import trace_metric_lines
from ._metrics_upstreams import upstream_metric_lines
from ._metrics_workers import HostMetrics

__all__ = ["GatewayMetrics", "Histogram"]

_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


class Histogram:
    """A fixed-bucket histogram: ``observe(v)`` is a bisect and three increments."""

    __slots__ = ("buckets", "count", "counts", "help", "name", "sum")

    def __init__(self, name: str, help: str, buckets: tuple[float, ...] = _LATENCY_BUCKETS) -> None:
        self.name = name
        self.help = help
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            running += n
            yield f'{self.name}_bucket{{le="{bound:g}"}} {running}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{self.name}_sum {self.sum:.6f}"
        yield f"{self.name}_count {self.count}"

    def __repr__(self) -> str:
        return f"<Histogram {self.name} count={self.count} sum={self.sum:.3f}>"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class GatewayMetrics:
    """Counters and histograms of one gateway process."""

    def __init__(self) -> None:
        self.responses: dict[tuple[str, int], int] = {}
        self.usage_tokens: dict[tuple[str, str], int] = {}
        self.timeouts = 0
        self.upstream_errors: dict[str, int] = {}
        self.disconnects = 0
        self.write_stalls = 0
        # Refusals answered from the request head, without running the app for them.
        self.early_refusals = 0
        self.drain_cancelled = 0
        self.tokens_streamed = 0
        self.token_events = 0
        self.direct_token_events = 0
        self.streams_started = 0
        self.streams_done = 0
        # Per model call, in the OpenTelemetry GenAI conventions' names (_metrics_genai).
        self.genai = GenAIMetrics()
        # Set in each worker of run_workers: /metrics then answers the whole host's sums.
        self.host: HostMetrics | None = None
        self.queue_wait = Histogram("trio_agent_queue_wait_seconds", "Time spent waiting for admission.")
        self.ttft = Histogram("trio_agent_ttft_seconds", "Time from request to first token.")
        self.total = Histogram("trio_agent_request_seconds", "Time from request to last byte.")
        # The span export's statistics while tracing is on (serve() sets it).
        self.tracing: Callable[[], Any] | None = None

    def count_response(self, route: str, status: int) -> None:
        key = (route, status)
        self.responses[key] = self.responses.get(key, 0) + 1

    def count_usage(self, route: str, usage: Usage | None) -> None:
        """Tokens a finished request used, by route (once per request)."""
        if usage is None:
            return
        for kind, n in (("prompt", usage.prompt_tokens), ("completion", usage.completion_tokens)):
            key = (route, kind)
            self.usage_tokens[key] = self.usage_tokens.get(key, 0) + n

    def count_upstream_error(self, code: str) -> None:
        self.upstream_errors[code] = self.upstream_errors.get(code, 0) + 1

    def render(
        self,
        admission: AdmissionStatistics,
        *,
        draining: bool,
        backend_statistics: Any = None,
        limits_status: dict[str, Any] | None = None,
        loop_lag: LoopLagStatistics | None = None,
        connections: ConnectionCounter | None = None,
    ) -> str:
        """The Prometheus exposition text."""
        lines: list[str] = []

        def metric(name: str, kind: str, help: str, samples: Iterable[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{labels} {format_value(value)}")

        metric("trio_agent_in_flight", "gauge", "Requests holding an admission lease.",
               [("", admission.in_flight)])
        metric("trio_agent_queued", "gauge", "Requests waiting for admission.",
               [("", admission.queued)])
        metric("trio_agent_max_concurrency", "gauge", "Admission capacity of this process.",
               [("", admission.max_concurrency)])
        metric("trio_agent_admitted_total", "counter", "Leases granted.",
               [("", admission.admitted)])
        metric("trio_agent_admitted_newest_first_total", "counter",
               "Leases a busy queue gave to its newest waiter (adaptive LIFO).",
               [("", admission.admitted_newest_first)])
        metric("trio_agent_model_slots_total", "counter",
               "Upstream slots given to admitted work without a refusal (agent runs' model calls).",
               [("", admission.slots_granted)])
        metric("trio_agent_model_slot_waits_total", "counter",
               "Of those, the ones that had to wait for a slot.", [("", admission.slot_waits)])
        metric("trio_agent_model_slots_waiting", "gauge",
               "Agent model calls waiting for an upstream slot now.", [("", admission.slots_waiting)])
        metric("trio_agent_shed_total", "counter", "Requests refused by admission, by reason.", [
            ('{reason="queue_full"}', admission.shed_full),
            ('{reason="queue_timeout"}', admission.shed_timeout),
            ('{reason="key_limit"}', admission.shed_key_limit),
            ('{reason="loop_lag"}', admission.shed_loop_lag),
        ])
        if loop_lag is not None and loop_lag.running:
            metric("trio_agent_loop_lag_seconds", "gauge",
                   "How late the scheduler runs a task due now (moving average).",
                   [("", loop_lag.current)])
            metric("trio_agent_loop_lag_peak_seconds", "gauge", "The largest scheduler lag seen.",
                   [("", loop_lag.peak)])
        # Shown for a server that serves connections (not for an app driven over ASGI alone).
        if connections is not None and (connections.opened or connections.limit is not None):
            conns = connections.statistics()
            metric("trio_agent_connections_open", "gauge", "Client connections open now.",
                   [("", conns.open)])
            metric("trio_agent_connections_idle", "gauge",
                   "Client connections open and idle (between requests) now.", [("", conns.idle)])
            if conns.limit is not None:
                metric("trio_agent_connections_limit", "gauge",
                       "Client connections allowed open at once (max_connections).",
                       [("", conns.limit)])
            metric("trio_agent_connections_total", "counter", "Client connections accepted.",
                   [("", conns.opened)])
            metric("trio_agent_connections_refused_total", "counter",
                   "Client connections refused, by reason: limit (a 503, then closed), "
                   "limit_closed (closed without an answer), fd_exhausted (accept failed for "
                   "want of file descriptors; the client waited in the backlog).", [
                       ('{reason="limit"}', conns.refused),
                       ('{reason="limit_closed"}', conns.closed_at_once),
                       ('{reason="fd_exhausted"}', conns.accept_failures),
                   ])  # fmt: skip
            metric("trio_agent_connections_idle_closed_total", "counter",
                   "Idle keep-alive connections closed early to make room for new ones.",
                   [("", conns.idle_closed)])
        metric("trio_agent_gc_collections_total", "counter",
               "Python garbage collections in this process, by generation.",
               [(f'{{generation="{i}"}}', s["collections"]) for i, s in enumerate(gc.get_stats())])
        metric("trio_agent_draining", "gauge", "1 while the server drains for shutdown.",
               [("", 1 if draining else 0)])
        metric("trio_agent_responses_total", "counter", "Responses by route and status.", [
            (f'{{route="{_escape(route)}",status="{status}"}}', n)
            for (route, status), n in sorted(self.responses.items())
        ])
        metric("trio_agent_usage_tokens_total", "counter",
               "Tokens of finished requests as the upstream counted them, by route and kind.", [
            (f'{{route="{_escape(route)}",kind="{kind}"}}', n)
            for (route, kind), n in sorted(self.usage_tokens.items())
        ])
        metric("trio_agent_timeouts_total", "counter", "Requests that ran past request_timeout.",
               [("", self.timeouts)])
        metric("trio_agent_upstream_errors_total", "counter", "Upstream failures, by kind.", [
            (f'{{kind="{_escape(code)}"}}', n) for code, n in sorted(self.upstream_errors.items())
        ])
        retries = getattr(backend_statistics, "retries", None)
        if isinstance(retries, int):
            metric("trio_agent_upstream_retries_total", "counter",
                   "Upstream attempts retried by the backend.", [("", retries)])
        for field, name, kind, text in (
            ("active", "trio_agent_backend_streams_active", "gauge",
             "Streams open in the backend (the built-in mock) now."),
            ("in_flight", "trio_agent_backend_streams_active", "gauge",
             "Upstream streams open in the backend now."),
            ("peak_active", "trio_agent_backend_streams_peak", "gauge",
             "Most streams the backend (the built-in mock) had open at once."),
            ("cancelled", "trio_agent_backend_streams_cancelled_total", "counter",
             "Backend streams abandoned before their end (client gone, deadline, drain)."),
        ):
            value = getattr(backend_statistics, field, None)
            if isinstance(value, int):
                metric(name, kind, text, [("", value)])
        lines.extend(upstream_metric_lines(backend_statistics))
        lines.extend(trace_metric_lines(self.tracing))
        if limits_status is not None:
            metric("trio_agent_shared_limits_healthy", "gauge",
                   "1 while the shared (Redis) limits are reachable, 0 during an outage.",
                   [("", int(bool(limits_status.get("healthy"))))])
            metric("trio_agent_shared_limits_errors_total", "counter",
                   "Redis errors seen by the shared limits.",
                   [("", int(limits_status.get("redis_errors", 0)))])
        metric("trio_agent_disconnects_total", "counter", "Clients that left before the end.",
               [("", self.disconnects)])
        metric("trio_agent_early_refusals_total", "counter",
               "503/429 answered from the request head, before the app ran.",
               [("", self.early_refusals)])
        metric("trio_agent_write_stalls_total", "counter",
               "Streams ended because a write stalled past write_timeout.",
               [("", self.write_stalls)])
        metric("trio_agent_drain_cancelled_total", "counter",
               "Streams ended by the shutdown drain deadline.", [("", self.drain_cancelled)])
        metric("trio_agent_streams_started_total", "counter", "Streamed replies started.",
               [("", self.streams_started)])
        metric("trio_agent_streams_done_total", "counter", "Streamed replies ended with done.",
               [("", self.streams_done)])
        metric("trio_agent_tokens_streamed_total", "counter", "Token deltas sent to clients.",
               [("", self.tokens_streamed)])
        metric("trio_agent_token_events_total", "counter",
               "SSE token events written (fewer than deltas when coalesced).",
               [("", self.token_events)])
        metric("trio_agent_direct_token_events_total", "counter",
               "Token events written straight to the socket, without a task hop.",
               [("", self.direct_token_events)])
        for hist in (self.queue_wait, self.ttft, self.total):
            lines.extend(hist.render())
        lines.extend(self.genai.render())
        lines.append("")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"<GatewayMetrics streams={self.streams_started} done={self.streams_done}"
            f" tokens={self.tokens_streamed} timeouts={self.timeouts}"
            f" disconnects={self.disconnects}>"
        )
