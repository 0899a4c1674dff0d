"""Tracing's parts on their own: the bounded span queue, the export task, settings, the off path."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pytest
import trio
import trio.testing
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from trio_agent.config import ServerConfig, server_config_from_env
from trio_agent.errors import ConfigError
from trio_agent.tracing import current_tracer, open_tracing, trace_headers, trace_meta, traces_url
from trio_agent.tracing._queue import SpanQueue
from trio_agent.tracing._tracer import GatewayTracer


def _spans(queue: SpanQueue, n: int) -> None:
    tracer = GatewayTracer(queue, ALWAYS_ON, content=False)
    for i in range(n):
        tracer.start(f"s{i}").end()


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
        ({"trace_export_interval": 0}, "trace_export_interval must be > 0"),
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
    statuses = [
        (s.status.status_code.name, s.status.description, (s.attributes or {}).get("error.type")) for s in exporter.spans
    ]
    assert statuses == [
        ("UNSET", None, None),
        ("UNSET", None, None),
        ("ERROR", "overloaded", "overloaded"),
        ("ERROR", "cancelled: the client disconnected", "disconnect"),
        ("ERROR", "cancelled", "cancelled"),
    ]


async def test_the_exported_span_is_the_sdks_view_of_what_was_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    from trio_agent.tracing._tracer import TraceSpan

    monkeypatch.setenv("OTEL_SERVICE_NAME", "gw-test")
    exporter = _Exporter()
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with open_tracing(endpoint="http://127.0.0.1:1", exporter=exporter) as tracer:
        server = tracer.start_server(
            method="POST", path="/chat", route="/chat", request_id="r1", headers={b"traceparent": incoming.encode()}
        )
        with tracer.span("chat m", attributes={"gen_ai.request.model": "m"}) as chat:
            chat.set("gen_ai.usage.output_tokens", 7)
            chat.set("gen_ai.response.id", None)  # None: left unset
            chat.event("gen_ai.first_token", at_ns=chat.start_ns + 5)
            assert isinstance(chat, TraceSpan)
        chat.set("late", 1)  # an ended span keeps what it had
        chat.end()  # a second end does nothing
        tracer.end_server(server, status=200, outcome="done")
    by_name = {s.name: s for s in exporter.spans}
    assert sorted(by_name) == ["POST /chat", "chat m"]
    got, root = by_name["chat m"], by_name["POST /chat"]
    assert dict(got.attributes or {}) == {"gen_ai.request.model": "m", "gen_ai.usage.output_tokens": 7}
    assert [(e.name, e.timestamp) for e in got.events] == [("gen_ai.first_token", chat.start_ns + 5)]
    assert got.parent is not None and got.parent.span_id == root.context.span_id
    # The server span continues the caller's trace, as a child of its remote span.
    assert root.context.trace_id == got.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert root.parent is not None and root.parent.is_remote and root.parent.span_id == 0xB7AD6B7169203331
    assert root.start_time is not None and root.end_time is not None and root.start_time <= root.end_time
    assert root.resource.attributes["service.name"] == "gw-test"
    assert root.instrumentation_scope is not None and root.instrumentation_scope.name == "trio_agent"
    assert root.context.trace_flags.sampled and dict(root.attributes or {})["http.response.status_code"] == 200


async def test_a_trace_the_sampler_drops_is_neither_recorded_nor_exported_but_travels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = _Exporter()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    not_sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    async with open_tracing(endpoint="http://127.0.0.1:1", exporter=exporter) as tracer:
        # The caller did not sample its trace: neither does the gateway, and says so downstream.
        server = tracer.start_server(
            method="POST", path="/chat", route="/chat", request_id="r", headers={b"traceparent": not_sampled.encode()}
        )
        with tracer.span("chat m"):
            headers: dict[str, str] = {}
            trace_headers(headers)
        tracer.end_server(server, status=200, outcome="done")
        # A root trace is sampled (always_on for roots): the same tracer records that one.
        with tracer.span("root"):
            pass
    assert headers["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert headers["traceparent"].endswith("-00")
    assert [s.name for s in exporter.spans] == ["root"]
    stats = tracer.statistics()
    assert stats is not None and stats.exported == 1 and stats.dropped == 0


async def test_otel_traces_sampler_always_off_exports_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = _Exporter()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    async with open_tracing(endpoint="http://127.0.0.1:1", exporter=exporter) as tracer:
        for i in range(3):
            with tracer.span(f"s{i}"):
                pass
    assert exporter.spans == []


def test_the_resource_hashes_once_and_as_the_sdks() -> None:
    from opentelemetry.sdk.resources import Resource

    from trio_agent.tracing._resource import HashedResource, service_resource

    resource = service_resource()
    assert isinstance(resource, HashedResource)
    plain = Resource(resource.attributes, resource.schema_url)
    assert hash(resource) == hash(plain) and resource == plain
    assert resource._hash is not None  # kept: the next hash reads it
    assert hash(resource) == hash(plain)


async def test_spans_leave_every_interval_or_at_once_when_a_batch_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exporter = _Exporter()

    # Bounded in virtual time: an export that never happens fails here, not hangs.
    with trio.fail_after(60):
        async with open_tracing(endpoint="http://127.0.0.1:1", exporter=exporter, batch_size=3) as tracer:
            export = tracer.export
            assert export is not None

            async def started(n: int) -> float:
                """The (virtual) time the ``n``th export started (counted in the trio thread,
                before the worker thread runs it: the clock jumps while a thread works)."""
                while export.batches < n:  # noqa: ASYNC110 (a counter, no event to wait on)
                    await trio.sleep(0.01)
                return trio.current_time()

            start = trio.current_time()
            tracer.start("one").end()
            await trio.sleep(4.9)
            assert export.batches == 0  # the interval (5 s) has not passed
            first = await started(1)
            assert 5.0 <= first - start <= 5.02
            while not exporter.batches:  # noqa: ASYNC110 (the first export's thread is done)
                await trio.sleep(0.01)
            queued = trio.current_time()
            for name in ("a", "b", "c"):  # a whole batch: out without waiting for the interval
                tracer.start(name).end()
            assert await started(2) - queued <= 0.02
            # Left only once the thread is done: under the autojump clock the flush deadline
            # on leaving would pass while the thread still runs, and abandon it.
            while len(exporter.batches) < 2:  # noqa: ASYNC110 (the export thread's result)
                await trio.sleep(0.01)
    assert exporter.batches == [["one"], ["a", "b", "c"]]


def test_a_custom_sampler_is_asked_for_every_span_a_built_in_one_once_per_trace() -> None:
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_ON,
        Decision,
        Sampler,
        SamplingResult,
        TraceIdRatioBased,
    )

    class ByName(Sampler):
        """Keeps the spans named ``keep``: a decision per span, not per trace."""

        def __init__(self) -> None:
            self.asked: list[str] = []

        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):  # type: ignore[no-untyped-def]
            self.asked.append(name)
            return SamplingResult(Decision.RECORD_AND_SAMPLE if name == "keep" else Decision.DROP)

        def get_description(self) -> str:
            return "ByName"

    queue = SpanQueue(max_size=100, batch_size=100)
    custom = ByName()
    tracer = GatewayTracer(queue, custom, content=False)
    with tracer.span("keep"), tracer.span("drop"), tracer.span("keep"):
        pass
    assert custom.asked == ["keep", "drop", "keep"]
    assert sorted(s.name for s in queue.take()) == ["keep", "keep"]

    # A ratio decides on the trace id: every span of a trace shares its root's decision.
    for sampler in (TraceIdRatioBased(0.5), ALWAYS_ON):
        tracer = GatewayTracer(queue, sampler, content=False)
        for _ in range(20):
            with tracer.span("root") as root, tracer.span("child") as child:
                pass
            assert child.context.trace_flags.sampled == root.context.trace_flags.sampled
        taken = queue.take()
        assert len(taken) % 2 == 0 and {s.name for s in taken} <= {"root", "child"}


async def test_an_endpoint_given_explicitly_traces_even_with_otel_sdk_disabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # OTEL_SDK_DISABLED turns the standard endpoint variables off (server_config_from_env);
    # an endpoint the operator gives trio_agent itself is an explicit ask.
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert server_config_from_env({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}).otlp_endpoint is None
    exporter = _Exporter()
    async with open_tracing(endpoint="http://127.0.0.1:1", exporter=exporter) as tracer:
        with tracer.span("explicit"):
            pass
    assert [s.name for s in exporter.spans] == ["explicit"]


async def test_an_odd_attribute_value_is_cleaned_as_the_sdk_would_and_fails_no_batch() -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    class Encoding(_Exporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            encode_spans(spans).SerializePartialToString()  # raises on a value it cannot encode
            return super().export(spans)

    exporter = Encoding()
    async with open_tracing(endpoint="http://127.0.0.1:1", exporter=exporter, batch_size=3) as tracer:
        with tracer.span("plain", attributes={"s": "x", "n": 1, "f": 0.5, "b": True, "t": ("stop",)}):
            pass
        with tracer.span("odd", attributes={"none": None, "list": ["a", "b"], "obj": ValueError("v")}):
            pass
    by_name = {s.name: dict(s.attributes or {}) for s in exporter.spans}
    assert by_name["plain"] == {"s": "x", "n": 1, "f": 0.5, "b": True, "t": ("stop",)}
    assert by_name["odd"] == {"list": ("a", "b"), "obj": "v"}
    stats = tracer.statistics()
    assert stats is not None and stats.exported == 2 and stats.dropped == 0
