"""Tracing's parts on their own: the bounded span queue, the export task, settings, the off path."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pytest
import trio
import trio.testing
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from trio_agent.config import ServerConfig, server_config_from_env
from trio_agent.errors import ConfigError
from trio_agent.tracing import current_tracer, open_tracing, trace_headers, trace_meta, traces_url
from trio_agent.tracing._queue import SpanQueue


def _spans(queue: SpanQueue, n: int) -> None:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(queue)
    tracer = provider.get_tracer("test")
    for i in range(n):
        tracer.start_span(f"s{i}").end()


def test_a_full_queue_drops_and_counts_and_never_grows() -> None:
    queue = SpanQueue(max_size=3, batch_size=2)
    _spans(queue, 5)
    assert len(queue) == 3 and queue.dropped == 2
    assert [s.name for s in queue.take()] == ["s0", "s1"]
    assert [s.name for s in queue.take()] == ["s2"]
    assert queue.take() == [] and queue.dropped == 2


async def test_a_whole_batch_wakes_the_export_task_at_once() -> None:
    queue = SpanQueue(max_size=10, batch_size=2)
    woke: list[float] = []

    async def waiter() -> None:
        await queue.wait_for_batch()
        woke.append(trio.current_time())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            _spans(queue, 1)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []
            _spans(queue, 1)
    assert len(woke) == 1


class _Exporter(SpanExporter):
    """Records batches; ``result`` decides each export's outcome; ``delay`` blocks the thread."""

    def __init__(self, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        self.batches: list[list[str]] = []
        self.spans: list[ReadableSpan] = []
        self.result = result
        self.shut = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.batches.append([s.name for s in spans])
        self.spans.extend(spans)
        return self.result

    def shutdown(self) -> None:
        self.shut = True


async def test_open_tracing_exports_every_span_and_flushes_on_exit() -> None:
    exporter = _Exporter()
    assert current_tracer() is None
    async with open_tracing(endpoint="http://127.0.0.1:1", exporter=exporter, batch_size=2) as tracer:
        assert current_tracer() is tracer
        for i in range(5):
            with tracer.span(f"s{i}"):
                pass
    assert current_tracer() is None
    assert sorted(n for b in exporter.batches for n in b) == [f"s{i}" for i in range(5)]
    stats = tracer.statistics()
    assert stats is not None and stats.exported == 5 and stats.dropped == 0 and stats.queued == 0
    assert exporter.shut


async def test_failed_exports_are_counted_as_drops() -> None:
    exporter = _Exporter(SpanExportResult.FAILURE)
    async with open_tracing(endpoint="http://127.0.0.1:1", exporter=exporter) as tracer:
        with tracer.span("a"), tracer.span("b"):
            pass
    stats = tracer.statistics()
    assert stats is not None and stats.exported == 0 and stats.dropped_export_failed == 2


async def test_spans_nest_through_trio_tasks_and_carry_a_traceparent() -> None:
    exporter = _Exporter()
    seen: dict[str, dict[str, str]] = {}
    async with open_tracing(endpoint="http://127.0.0.1:1", exporter=exporter) as tracer:
        with tracer.span("parent") as parent:

            async def child(name: str) -> None:
                headers: dict[str, str] = {}
                trace_headers(headers)
                seen[name] = headers

            async with trio.open_nursery() as nursery:
                nursery.start_soon(child, "a")
                nursery.start_soon(child, "b")
            meta = trace_meta()
    expected = f"00-{parent.trace_id:032x}-{parent.span_id:016x}-"
    assert seen["a"]["traceparent"].startswith(expected)
    assert seen["b"]["traceparent"].startswith(expected)
    assert meta is not None and meta["traceparent"].startswith(expected)


def test_without_a_tracer_the_helpers_do_nothing() -> None:
    headers: dict[str, str] = {}
    trace_headers(headers)
    assert headers == {} and trace_meta() is None and current_tracer() is None


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://localhost:4318", "http://localhost:4318/v1/traces"),
        ("http://localhost:4318/", "http://localhost:4318/v1/traces"),
        ("https://cloud.langfuse.com/api/public/otel", "https://cloud.langfuse.com/api/public/otel/v1/traces"),
        ("http://jaeger:4318/v1/traces", "http://jaeger:4318/v1/traces"),
    ],
)
def test_traces_url(endpoint: str, url: str) -> None:
    assert traces_url(endpoint) == url


def test_settings_from_flags_and_the_standard_variables() -> None:
    assert server_config_from_env({}).otlp_endpoint is None
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SERVICE_NAME": "gw"}
    assert server_config_from_env(base).otlp_endpoint == "http://collector:4318"
    traces = {**base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/v1/traces"}
    assert server_config_from_env(traces).otlp_endpoint == "http://t:4318/v1/traces"
    assert server_config_from_env({**base, "OTEL_SDK_DISABLED": "true"}).otlp_endpoint is None
    ours = {**base, "TRIO_AGENT_OTLP_ENDPOINT": "http://ours:4318", "TRIO_AGENT_TRACE_CONTENT": "true"}
    config = server_config_from_env(ours)
    assert config.otlp_endpoint == "http://ours:4318" and config.trace_content is True
    assert server_config_from_env(base, server={"otlp_endpoint": "http://flag:4318"}).otlp_endpoint == (
        "http://flag:4318"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"otlp_endpoint": "collector:4318"}, "otlp_endpoint must start with http"),
        ({"trace_queue_size": 0}, "trace_queue_size must be >= 1"),
        ({"trace_export_timeout": 0}, "trace_export_timeout must be > 0"),
    ],
)
def test_bad_tracing_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServerConfig(**kwargs)  # type: ignore[arg-type]


def test_tracing_off_loads_no_opentelemetry() -> None:
    import subprocess

    code = (
        "import sys, trio_agent, trio_agent.server, trio_agent.agent, trio_agent.tracing; "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


class _Coded(Exception):
    code = "upstream_timeout"


def test_error_type_is_the_code_the_client_got() -> None:
    from trio_agent.tracing._tracer import error_type

    assert error_type(_Coded("slow")) == "upstream_timeout"
    assert error_type(ValueError("x")) == "ValueError"
    cancelled = trio.Cancelled._create()  # type: ignore[attr-defined]
    assert error_type(cancelled) == "cancelled"
    assert error_type(BaseExceptionGroup("g", [cancelled])) == "cancelled"
    assert error_type(BaseExceptionGroup("g", [cancelled, ValueError()])) == "BaseExceptionGroup"


async def test_the_server_spans_status_follows_the_clients_answer() -> None:
    exporter = _Exporter()
    cases = [(200, "done"), (200, None), (503, "overloaded"), (200, "disconnect"), (0, None)]
    async with open_tracing(endpoint="http://127.0.0.1:1", exporter=exporter) as tracer:
        for status, outcome in cases:
            span = tracer.start_server(method="POST", path="/chat", route="/chat", request_id="r", headers={})
            tracer.end_server(span, status=status, outcome=outcome)
    statuses = [(s.status.status_code.name, s.status.description, s.attributes.get("error.type")) for s in exporter.spans]
    assert statuses == [
        ("UNSET", None, None),
        ("UNSET", None, None),
        ("ERROR", "overloaded", "overloaded"),
        ("ERROR", "cancelled: the client disconnected", "disconnect"),
        ("ERROR", "cancelled", "cancelled"),
    ]
