"""Tracing end to end: a real gateway exporting to a real OTLP/HTTP receiver (tests/_otlp_receiver.py).

Each test runs ``serve`` on 127.0.0.1:0 with ``otlp_endpoint`` at the receiver,
sends real requests, and reads back the spans the SDK's OTLP exporter sent:
a streamed chat (server, admission and chat spans, an incoming traceparent
continued), a chat proxied to a real mock LLM server (the traceparent it got
is the chat span's), a client that leaves (cancelled), a dead collector
(requests unaffected, drops counted in /metrics).
"""

from __future__ import annotations

import dataclasses
import shlex
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests._agent_fakes import ScriptedLLM, finish, one_call, text
from tests._mock_server import serving_mock_llm
from tests._otlp_receiver import (
    KIND_CLIENT,
    KIND_SERVER,
    STATUS_ERROR,
    STATUS_UNSET,
    ReceivedSpan,
    receiving_otlp,
)
from tests._reliability import running_gateway
from trio_agent.config import MockLLMConfig, MockServerConfig, ServerConfig, UpstreamConfig
from trio_agent.mock_server import MockServerApp

pytestmark = pytest.mark.e2e

BODY = {"messages": [{"role": "user", "content": "hello"}]}
INCOMING = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _config(endpoint: str, **kwargs: Any) -> ServerConfig:
    mock = MockLLMConfig(ttft=0.01, itl=0.002, tokens=8)
    # Exports every 0.2 s (the default 5 s would make each test wait for its spans).
    kwargs.setdefault("trace_export_interval", 0.2)
    return ServerConfig(port=0, access_log=False, otlp_endpoint=endpoint, mock=mock, **kwargs)


def _agent_config(endpoint: str, **kwargs: Any) -> ServerConfig:
    """A traced gateway for the agent runs (their model is the test's scripted backend)."""
    return ServerConfig(
        port=0, access_log=False, otlp_endpoint=endpoint, trace_export_interval=0.2, example_tools=False, **kwargs
    )


def _has(*names: str) -> Callable[[list[ReceivedSpan]], bool]:
    return lambda spans: all(any(s.name == n for s in spans) for n in names)


async def test_a_streamed_chat_exports_server_admission_and_chat_spans() -> None:
    with receiving_otlp() as rx, trio.fail_after(60):
        async with running_gateway(_config(rx.url)) as srv, httpx.AsyncClient(base_url=srv.url) as client:
            response = await client.post("/chat/stream", json=BODY, headers={"traceparent": INCOMING})
            assert response.status_code == 200 and "event: done" in response.text
        # serve() flushed the queue on its way out.
        await rx.wait_for(_has("POST /chat/stream", "chat mock-llm"))
    server, chat = rx.one("POST /chat/stream"), rx.one("chat mock-llm")
    # Admitted at once: no admission span (see test_a_wait_or_a_refusal_gets_an_admission_span).
    assert rx.named("admission") == []
    # The incoming traceparent is continued: same trace, the caller's span is the parent.
    assert server.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert server.parent_span_id == "b7ad6b7169203331"
    assert server.kind == KIND_SERVER and server.status_code == STATUS_UNSET
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["url.path"] == "/chat/stream"
    assert server.attributes["http.route"] == "/chat/stream"
    assert server.attributes["http.response.status_code"] == 200
    assert server.service_name == "trio-agent"
    assert chat.parent_span_id == server.span_id
    assert chat.kind == KIND_CLIENT and chat.status_code == STATUS_UNSET
    attrs = chat.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai" and attrs["gen_ai.system"] == "openai"
    assert attrs["gen_ai.request.model"] == "mock-llm"
    assert attrs["gen_ai.usage.output_tokens"] == 8 and attrs["gen_ai.usage.input_tokens"] > 0
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    # Without --trace-content no prompt or completion is recorded.
    assert "gen_ai.input.messages" not in attrs and "gen_ai.output.messages" not in attrs
    (first,) = [t for name, t in chat.events if name == "gen_ai.first_token"]
    assert chat.start_ns < first < chat.end_ns <= server.end_ns


async def test_a_whole_reply_has_its_usage_and_finish_reason_on_the_chat_span() -> None:
    # A non-streamed model call sets its attributes on the span before ending it.
    with receiving_otlp() as rx, trio.fail_after(60):
        async with running_gateway(_config(rx.url)) as srv, httpx.AsyncClient(base_url=srv.url) as client:
            response = await client.post("/v1/chat/completions", json={**BODY, "model": "mock-llm"})
            assert response.status_code == 200, response.text
        await rx.wait_for(_has("POST /v1/chat/completions", "chat mock-llm"))
    attrs = rx.one("chat mock-llm").attributes
    usage = response.json()["usage"]
    assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 8
    assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attrs["gen_ai.response.model"] == "mock-llm"
    assert list(attrs["gen_ai.response.finish_reasons"]) == ["stop"]


async def test_a_wait_or_a_refusal_gets_an_admission_span() -> None:
    with receiving_otlp() as rx, trio.fail_after(60):
        config = dataclasses.replace(
            _config(rx.url), max_concurrency=1, max_queued=1, mock=MockLLMConfig(ttft=0.2, itl=0.01, tokens=4)
        )
        async with running_gateway(config) as srv, httpx.AsyncClient(base_url=srv.url) as client:
            statuses: list[int] = []

            async def one() -> None:
                statuses.append((await client.post("/chat/stream", json=BODY)).status_code)

            # One streams, one waits for its slot, the third finds the queue full: refused.
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(one)
                    await trio.sleep(0.05)
            assert sorted(statuses) == [200, 200, 503]
        await rx.wait_for(lambda spans: len([s for s in spans if s.name == "admission"]) == 2)
    waited, refused = sorted(rx.named("admission"), key=lambda s: s.attributes["trio_agent.admission.outcome"])
    assert waited.attributes["trio_agent.admission.outcome"] == "admitted"
    assert waited.attributes["trio_agent.admission.queued_ms"] > 50 and waited.status_code == STATUS_UNSET
    assert refused.status_code == STATUS_ERROR
    code = refused.attributes["trio_agent.admission.outcome"]
    parent = rx.by_id(refused.parent_span_id)
    assert parent.attributes["http.response.status_code"] == 503 and parent.attributes["error.type"] == code
    assert rx.by_id(waited.parent_span_id).attributes["http.response.status_code"] == 200


async def test_trace_content_records_prompt_and_completion() -> None:
    with receiving_otlp() as rx, trio.fail_after(60):
        async with running_gateway(_config(rx.url, trace_content=True)) as srv:
            async with httpx.AsyncClient(base_url=srv.url) as client:
                assert (await client.post("/chat/stream", json=BODY)).status_code == 200
                assert (await client.post("/chat", json=BODY)).status_code == 200
        await rx.wait_for(lambda spans: len([s for s in spans if s.name == "chat mock-llm"]) == 2)
    for chat in rx.named("chat mock-llm"):
        attrs = chat.attributes
        assert '"content":"hello"' in attrs["gen_ai.input.messages"]
        assert '"role":"assistant"' in attrs["gen_ai.output.messages"]
        # Read off the chunks the gateway watched: the model the upstream named.
        assert attrs["gen_ai.response.model"] == "mock-llm"
        assert attrs["gen_ai.usage.output_tokens"] == 8


class _RecordingUpstream(MockServerApp):
    """The mock LLM server, noting the traceparent of every chat request it gets."""

    def __init__(self, config: MockServerConfig) -> None:
        super().__init__(config)
        self.traceparents: list[str | None] = []
        self.relayed: list[str | None] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/") and scope["method"] == "POST":
            value = dict(scope["headers"]).get(b"traceparent")
            seen = self.traceparents if scope["path"] == "/v1/chat/completions" else self.relayed
            seen.append(None if value is None else value.decode())
        await super().__call__(scope, receive, send)


@asynccontextmanager
async def _proxying_gateway(endpoint: str, upstream_app: _RecordingUpstream) -> AsyncIterator[httpx.AsyncClient]:
    """A traced gateway whose upstream is ``upstream_app`` (a mock LLM server); a client of it."""
    async with serving_mock_llm(upstream_app.config, upstream_app) as base:
        upstream = UpstreamConfig(base_url=f"{base}/v1", model="mock-llm")
        config = dataclasses.replace(_config(endpoint), upstream=upstream)
        async with running_gateway(config) as srv, httpx.AsyncClient(base_url=srv.url) as client:
            yield client


async def test_a_proxied_chat_carries_the_chat_spans_traceparent_upstream() -> None:
    upstream_app = _RecordingUpstream(MockServerConfig(port=0, llm=MockLLMConfig(ttft=0.01, itl=0.002, tokens=6)))
    with receiving_otlp() as rx, trio.fail_after(60):
        async with _proxying_gateway(rx.url, upstream_app) as client:
            streamed = await client.post("/chat/stream", json=BODY)
            relayed = await client.post("/v1/chat/completions", json={**BODY, "stream": True})
            assert streamed.status_code == 200 and relayed.status_code == 200
        await rx.wait_for(lambda spans: len([s for s in spans if s.name == "chat mock-llm"]) == 2)
    chats = sorted(rx.named("chat mock-llm"), key=lambda s: s.start_ns)
    # Each upstream request carried the context of its own chat span, sampled.
    received = [tp.split("-") if tp else [] for tp in upstream_app.traceparents]
    assert [r[1:3] for r in received] == [[chat.trace_id, chat.span_id] for chat in chats]
    assert all(int(r[3], 16) & 1 for r in received)
    for chat, route in zip(chats, ("/chat/stream", "/v1/chat/completions"), strict=True):
        parent = rx.by_id(chat.parent_span_id)
        assert parent.attributes["http.route"] == route and parent.kind == KIND_SERVER
        assert chat.attributes["gen_ai.usage.output_tokens"] == 6


async def test_a_relayed_call_has_its_model_call_span_and_carries_it_upstream() -> None:
    upstream_app = _RecordingUpstream(MockServerConfig(port=0, llm=MockLLMConfig(ttft=0.01, itl=0.002, tokens=6)))
    with receiving_otlp() as rx, trio.fail_after(60):
        async with _proxying_gateway(rx.url, upstream_app) as client:
            response = await client.post("/v1/completions", json={"model": "mock-llm", "prompt": "hi"})
            assert response.status_code == 200, response.text
        await rx.wait_for(_has("text_completion mock-llm"))
    span = rx.one("text_completion mock-llm")
    assert span.kind == KIND_CLIENT and span.attributes["gen_ai.operation.name"] == "text_completion"
    assert span.attributes["gen_ai.usage.output_tokens"] == 6
    assert rx.by_id(span.parent_span_id).attributes["http.route"] == "/v1/completions"
    (received,) = upstream_app.relayed
    assert received is not None and received.split("-")[1:3] == [span.trace_id, span.span_id]


async def test_a_client_that_leaves_ends_its_spans_cancelled() -> None:
    with receiving_otlp() as rx, trio.fail_after(60):
        config = dataclasses.replace(_config(rx.url), mock=MockLLMConfig(ttft=0.01, itl=0.05, tokens=1000))
        async with running_gateway(config) as srv, httpx.AsyncClient(base_url=srv.url) as client:
            async with client.stream("POST", "/chat/stream", json=BODY) as response:
                async for line in response.aiter_lines():
                    if line.startswith("event: token"):
                        break  # leave mid-stream: the connection closes
            with trio.fail_after(10):
                for _ in range(1000):
                    if srv.gw.metrics.disconnects:
                        break
                    await trio.sleep(0.01)
        await rx.wait_for(_has("POST /chat/stream", "chat mock-llm"))
    server, chat = rx.one("POST /chat/stream"), rx.one("chat mock-llm")
    assert server.status_code == STATUS_ERROR
    assert server.status_message == "cancelled: the client disconnected"
    assert server.attributes["error.type"] == "disconnect"
    assert chat.status_code == STATUS_ERROR and chat.attributes["error.type"] == "cancelled"
    assert chat.parent_span_id == server.span_id


def _dead_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_a_dead_collector_costs_requests_nothing_and_drops_are_counted() -> None:
    config = _config(f"http://127.0.0.1:{_dead_port()}", trace_export_timeout=0.2)
    with trio.fail_after(60):
        async with running_gateway(config) as srv, httpx.AsyncClient(base_url=srv.url) as client:
            for _ in range(20):
                response = await client.post("/chat/stream", json=BODY)
                assert response.status_code == 200 and "event: done" in response.text
            failed = 'trio_agent_trace_spans_dropped_total{reason="export_failed"}'
            # Spans go out at most a second after they end; the refused exports are counted.
            with trio.fail_after(20):
                while True:
                    text = (await client.get("/metrics")).text
                    if _metric(text, failed) >= 60:  # three spans per request
                        break
                    await trio.sleep(0.1)
            assert _metric(text, "trio_agent_trace_spans_exported_total") == 0
            assert _metric(text, 'trio_agent_trace_spans_dropped_total{reason="queue_full"}') == 0


class _ScriptedBackend(ScriptedLLM):
    def statistics(self) -> None:
        return None


async def test_an_agent_run_nests_steps_model_calls_and_parallel_tools() -> None:
    llm = _ScriptedBackend(
        [
            [
                *one_call(0, "c1", "nap", {"seconds": 0.3, "tag": "a"}),
                *one_call(1, "c2", "nap", {"seconds": 0.3, "tag": "b"}),
                finish("tool_calls"),
            ],
            [text("both napped"), finish("stop")],
        ]
    )
    with receiving_otlp() as rx, trio.fail_after(60):
        config = _agent_config(rx.url, tools=("tests._tracing_tools",))
        async with running_gateway(config, backend=llm) as srv, httpx.AsyncClient(base_url=srv.url) as client:
            response = await client.post("/agent", json={"messages": [{"role": "user", "content": "nap twice"}]})
            assert response.status_code == 200, response.text
            assert response.json()["answer"] == "both napped"
        await rx.wait_for(_has("POST /agent", "invoke_agent", "step 1", "step 2"))
    server, run = rx.one("POST /agent"), rx.one("invoke_agent")
    assert run.parent_span_id == server.span_id and run.status_code == STATUS_UNSET
    assert run.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert run.attributes["gen_ai.usage.input_tokens"] == 20 and run.attributes["trio_agent.agent.steps"] == 2
    step1, step2 = rx.one("step 1"), rx.one("step 2")
    assert step1.parent_span_id == run.span_id and step2.parent_span_id == run.span_id
    assert step1.end_ns <= step2.start_ns
    chats = rx.named("chat scripted")
    assert sorted(c.parent_span_id for c in chats) == sorted([step1.span_id, step2.span_id])
    tools = sorted(rx.named("execute_tool nap"), key=lambda s: s.attributes["gen_ai.tool.call.id"])
    assert [t.attributes["gen_ai.tool.call.id"] for t in tools] == ["c1", "c2"]
    for t in tools:
        # Children of their step (not of the model call they were started during).
        assert t.parent_span_id == step1.span_id
        assert t.attributes["gen_ai.tool.name"] == "nap"
        assert t.attributes["trio_agent.tool.outcome"] == "result"
        assert t.attributes["trio_agent.tool.queued_ms"] >= 0
        assert step1.start_ns <= t.start_ns and t.end_ns <= step1.end_ns
    a, b = tools
    assert a.start_ns < b.end_ns and b.start_ns < a.end_ns, "parallel tool calls overlap in time"


async def test_an_mcp_tool_call_carries_its_spans_traceparent() -> None:
    server_script = Path(__file__).parent / "mcp_servers" / "recording_server.py"
    llm = _ScriptedBackend(
        [[*one_call(0, "c1", "traceparent", {}), finish("tool_calls")], [text("ok"), finish("stop")]]
    )
    with receiving_otlp() as rx, trio.fail_after(60):
        config = _agent_config(rx.url, mcp=(f"rec={shlex.join([sys.executable, str(server_script)])}",))
        async with running_gateway(config, backend=llm) as srv, httpx.AsyncClient(base_url=srv.url) as client:
            response = await client.post("/agent", json={"messages": [{"role": "user", "content": "trace"}]})
            assert response.status_code == 200, response.text
            (result,) = [e for e in response.json()["events"] if e["type"] == "tool_result"]
        await rx.wait_for(_has("execute_tool traceparent"))
    span = rx.one("execute_tool traceparent")
    assert result["content"].split("-")[1:3] == [span.trace_id, span.span_id]


async def test_a_tool_call_that_cannot_run_still_has_its_span() -> None:
    llm = _ScriptedBackend(
        [[*one_call(0, "c1", "no_such_tool", {}), finish("tool_calls")], [text("sorry"), finish("stop")]]
    )
    with receiving_otlp() as rx, trio.fail_after(60):
        config = _agent_config(rx.url, tools=("tests._tracing_tools",))
        async with running_gateway(config, backend=llm) as srv, httpx.AsyncClient(base_url=srv.url) as client:
            response = await client.post("/agent", json={"messages": [{"role": "user", "content": "x"}]})
            assert response.status_code == 200, response.text
        await rx.wait_for(_has("execute_tool no_such_tool", "step 1"))
    span = rx.one("execute_tool no_such_tool")
    assert span.status_code == STATUS_ERROR and span.attributes["error.type"] == "unknown_tool"
    assert span.attributes["trio_agent.tool.outcome"] == "unknown_tool"
    assert span.parent_span_id == rx.one("step 1").span_id


async def test_a_client_leaving_an_agent_run_ends_the_run_and_its_tools_cancelled() -> None:
    llm = _ScriptedBackend(
        [[*one_call(0, "c1", "nap", {"seconds": 30, "tag": "a"}), *one_call(1, "c2", "nap", {"seconds": 30, "tag": "b"}),
          finish("tool_calls")]]
    )  # fmt: skip
    with receiving_otlp() as rx, trio.fail_after(60):
        config = _agent_config(rx.url, tools=("tests._tracing_tools",))
        async with running_gateway(config, backend=llm) as srv, httpx.AsyncClient(base_url=srv.url) as client:
            body = {"messages": [{"role": "user", "content": "nap"}]}
            started = 0
            async with client.stream("POST", "/agent/stream", json=body) as response:
                async for line in response.aiter_lines():
                    started += line == "event: tool_started"
                    if started == 2:
                        break  # both tools run: leave
        await rx.wait_for(_has("POST /agent/stream", "invoke_agent", "step 1"))
        await rx.wait_for(lambda spans: len([s for s in spans if s.name == "execute_tool nap"]) == 2)
    server, run, step = rx.one("POST /agent/stream"), rx.one("invoke_agent"), rx.one("step 1")
    assert server.attributes["error.type"] == "disconnect"
    assert server.status_message == "cancelled: the client disconnected"
    for span in (run, step, *rx.named("execute_tool nap")):
        assert span.status_code == STATUS_ERROR and span.attributes["error.type"] == "cancelled", span
