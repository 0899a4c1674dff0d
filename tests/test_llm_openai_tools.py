"""The OpenAI backend carrying agent traffic, against the real mock LLM server on 127.0.0.1:0.

Tool-call deltas and each chunk's raw bytes arrive as the mock sent them; the client's body is
forwarded unchanged but for what the gateway owns (checked through ``GET /mock/last-request``);
the other OpenAI routes relay bytes through ``open_relay`` with retries before the first byte.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
import trio

from tests._mock_server import serving_mock_llm
from trio_agent import UpstreamConfig
from trio_agent.config import MockLLMConfig, MockServerConfig
from trio_agent.errors import UpstreamError, UpstreamIdleTimeoutError
from trio_agent.llm import ChatMessage, ChatRequest, OpenAIBackend, open_openai_backend
from trio_agent.mock_server import MockServerApp
from trio_agent.mock_server._app import Message, Receive, Send
from trio_agent.sse import SSEDecoder

pytestmark = pytest.mark.e2e

LLM = MockLLMConfig(ttft=0.0, itl=0.002, tokens=8, seed=1, tool_calls=2)
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city"], "additionalProperties": False}, "strict": True}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}


class RecordingServer(MockServerApp):
    """The real mock server, keeping the body bytes it sent on each response, per path."""

    def __init__(self, config: MockServerConfig) -> None:
        super().__init__(config)
        self.sent: list[tuple[str, list[bytes]]] = []

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        parts: list[bytes] = []
        # Recorded as it is sent: the client may have it all before this call returns.
        self.sent.append((scope["path"], parts))

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
            await send(message)

        await super().__call__(scope, receive, recording_send)

    def last(self) -> bytes:
        return b"".join(self.sent[-1][1])


@asynccontextmanager
async def upstream(
    llm: MockLLMConfig = LLM, **overrides: Any
) -> AsyncIterator[tuple[OpenAIBackend, RecordingServer, str]]:
    config = MockServerConfig(port=0, llm=llm, drain_timeout=0.2)
    app = RecordingServer(config)
    async with serving_mock_llm(config, app) as url:
        values: dict[str, Any] = {"base_url": f"{url}/v1", "model": "mock-llm", "first_token_timeout": 2.0,
                                  "idle_timeout": 1.0, "total_timeout": 5.0, "backoff_base": 0.01,
                                  "backoff_max": 0.02} | overrides
        async with open_openai_backend(UpstreamConfig(**values)) as backend:
            yield backend, app, url


def data_of(stream: bytes) -> list[bytes]:
    return [e.data.encode() for e in SSEDecoder().feed(stream)]


async def last_request(url: str) -> Any:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{url}/mock/last-request")
    assert response.status_code == 200
    return orjson.loads(response.content)


@pytest.mark.parametrize("below", [True, False], ids=["below-httpx", "aiter-raw"])
async def test_tool_call_deltas_and_raw_bytes_arrive_verbatim(below: bool) -> None:
    with trio.fail_after(10):
        async with upstream(read_below_httpx=below) as (backend, app, _):
            request = ChatRequest(
                messages=(ChatMessage(role="user", content="weather in Paris?"),), tools=(WEATHER, ADD)
            )
            async with backend.stream_chat(request) as chunks:
                got = [c async for c in chunks]
            sent = data_of(app.last())
            assert sent[-1] == b"[DONE]"
            # Every chunk the upstream sent, its bytes exactly as sent, in order.
            assert [c.raw for c in got] == sent[:-1]
            heads = [d for c in got for d in c.tool_calls if d.id is not None]
            assert [(d.index, d.name, d.arguments) for d in heads] == [(0, "get_weather", ""), (1, "add", "")]
            arguments = {i: "".join(d.arguments for c in got for d in c.tool_calls if d.index == i) for i in (0, 1)}
            assert set(orjson.loads(arguments[1])) == {"a", "b"}
            assert "city" in orjson.loads(arguments[0])
            assert [c.finish_reason for c in got if c.finish_reason] == ["tool_calls"]
            assert got[-1].usage is not None


async def test_complete_chat_returns_tool_calls_and_the_upstream_json() -> None:
    with trio.fail_after(10):
        async with upstream() as (backend, app, _):
            request = ChatRequest(messages=(ChatMessage(role="user", content="hi"),), tools=(WEATHER,))
            done = await backend.complete_chat(request)
            assert done.raw == app.last()
            assert [c.name for c in done.tool_calls] == ["get_weather", "get_weather"]
            assert done.finish_reason == "tool_calls"
            assert orjson.loads(done.raw)["choices"][0]["message"]["tool_calls"][0]["id"] == done.tool_calls[0].id


async def test_a_request_built_from_fields_carries_tool_messages() -> None:
    with trio.fail_after(10):
        async with upstream() as (backend, _, url):
            from trio_agent.llm import ToolCall

            call = ToolCall(id="call_1", name="get_weather", arguments='{"city":"Oslo"}')
            messages = (
                ChatMessage(role="user", content="weather?"),
                ChatMessage(role="assistant", content=None, tool_calls=(call,)),
                ChatMessage(role="tool", content="snow", tool_call_id="call_1", name="get_weather"),
            )
            done = await backend.complete_chat(
                ChatRequest(messages=messages, tools=(WEATHER,), tool_choice="auto", max_tokens=50)
            )
            assert "get_weather returned snow" in done.content
            assert await last_request(url) == {
                "model": "mock-llm",
                "messages": [
                    {"role": "user", "content": "weather?"},
                    {"role": "assistant", "content": None, "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
                    {"role": "tool", "content": "snow", "tool_call_id": "call_1", "name": "get_weather"},
                ],
                "stream": False,
                "max_tokens": 50,
                "tools": [WEATHER],
                "tool_choice": "auto",
            }


# Every documented chat-completions parameter, and one OpenAI may add tomorrow.
EVERYTHING: dict[str, Any] = {
    "model": "gpt-4o-2024-08-06",
    "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "You help."}], "name": "sys"},
        {"role": "user", "name": "ann", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "file", "file": {"file_id": "file-abc"}},
        ]},
        {"role": "assistant", "content": None, "refusal": None, "audio": {"id": "audio_1"}, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "21 C"}]},
        {"role": "user", "content": "Thanks, and tomorrow? ☀"},
    ],
    "tools": [WEATHER, ADD],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "response_format": {"type": "json_schema", "json_schema": {"name": "w", "strict": True, "schema": {
        "type": "object", "properties": {"t": {"type": "number"}}, "required": ["t"], "additionalProperties": False}}},
    "seed": 42,
    "temperature": 0.2,
    "top_p": 0.9,
    "stop": ["\n\n", "END"],
    "user": "user-1234",
    "logprobs": True,
    "top_logprobs": 3,
    "n": 1,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "logit_bias": {"50256": -100, "1734": 5},
    "max_tokens": 100,
    "max_completion_tokens": 64,
    "metadata": {"team": "agents", "run": "7"},
    "store": False,
    "reasoning_effort": "low",
    "service_tier": "auto",
    "prediction": {"type": "content", "content": "It will be sunny."},
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "wav"},
    "web_search_options": {"search_context_size": "low"},
    "verbosity": "low",
    "prompt_cache_key": "k1",
    "safety_identifier": "s1",
    "stream_options": {"include_usage": False, "include_obfuscation": False},
    "x_future_field": {"nested": [1, 2.5, None, True, "text"]},
}


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
async def test_the_clients_body_is_forwarded_unchanged_but_for_what_the_gateway_owns(stream: bool) -> None:
    with trio.fail_after(10):
        async with upstream() as (backend, _, url):
            request = ChatRequest(messages=(ChatMessage(role="user", content="x"),), openai_body=EVERYTHING)
            if stream:
                async with backend.stream_chat(request) as chunks:
                    async for _ in chunks:
                        pass
            else:
                await backend.complete_chat(request)
            seen = await last_request(url)
            expected = dict(EVERYTHING, stream=stream)
            if stream:  # usage is counted from the stream; the client's other options stay
                expected["stream_options"] = {"include_usage": True, "include_obfuscation": False}
            assert seen == expected
            assert list(seen) == list(expected)  # the client's key order too
            # A body naming no model gets the default one.
            body = {k: v for k, v in EVERYTHING.items() if k != "model"}
            await backend.complete_chat(ChatRequest(messages=request.messages, openai_body=body))
            assert (await last_request(url))["model"] == "mock-llm"


async def test_relay_embeddings_and_errors_through_the_backend() -> None:
    with trio.fail_after(10):
        async with upstream() as (backend, app, url):
            body = orjson.dumps({"model": "emb", "input": ["one", "two"], "dimensions": 4})
            async with backend.open_relay("/embeddings", body, stream=False) as relay:
                assert relay.status == 200 and not relay.streaming
                assert relay.body == app.last()
                assert relay.usage is not None and relay.usage.prompt_tokens == 2
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{url}/mock/last-request")).content == body
            # The upstream's own 400 is relayed as it is, not retried.
            async with backend.open_relay("/embeddings", b'{"input": 7}', stream=False) as relay:
                assert relay.status == 400
                assert orjson.loads(relay.body)["error"]["param"] == "input"
            async with backend.open_relay("/nowhere", b"{}", stream=False) as relay:
                assert relay.status == 404 and orjson.loads(relay.body)["error"]["message"]
            s = backend.statistics()
            assert (s.retries, s.in_flight) == (0, 0)


async def test_relay_streams_responses_events_verbatim() -> None:
    with trio.fail_after(10):
        async with upstream() as (backend, app, _):
            body = orjson.dumps({"model": "m", "input": "hello", "stream": True})
            pieces = []
            async with backend.open_relay("/responses", body, stream=True) as relay:
                assert relay.streaming and relay.first_byte_at is not None
                async for data in relay:
                    assert data.endswith(b"\n\n")
                    pieces.append(data)
            assert b"".join(pieces) == app.last()
            events = SSEDecoder().feed(b"".join(pieces))
            assert events[0].event == "response.created" and events[-1].event == "response.completed"
            assert relay.usage is not None and relay.usage.completion_tokens == 8


class FailingFirst(RecordingServer):
    """Answers the first ``failures`` relayed calls with an injected 503."""

    def __init__(self, config: MockServerConfig, failures: int) -> None:
        super().__init__(config)
        self.failures = failures

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/responses" and self.failures:
            self.failures -= 1
            scope = {**scope, "headers": [*scope["headers"], (b"x-mock-fault", b"503")]}
        await super().__call__(scope, receive, send)


async def test_relay_retries_only_before_the_first_byte() -> None:
    config = MockServerConfig(port=0, llm=LLM, drain_timeout=0.2)
    app = FailingFirst(config, failures=2)
    with trio.fail_after(10):
        async with serving_mock_llm(config, app) as url:
            cfg = UpstreamConfig(base_url=f"{url}/v1", backoff_base=0.01, backoff_max=0.02, max_attempts=3)
            async with open_openai_backend(cfg) as backend:
                async with backend.open_relay("/responses", b'{"input": "x", "stream": true}', stream=True) as relay:
                    assert relay.status == 200
                    assert b"response.completed" in b"".join([d async for d in relay])
                assert backend.statistics().retries == 2
                app.failures = 5
                # Failing on: retried until the attempts or the retry budget run out, then raised.
                with pytest.raises(UpstreamError):
                    async with backend.open_relay("/responses", b'{"input": "x"}', stream=False):
                        pass


class Faulting(RecordingServer):
    """Every relayed call gets the ``X-Mock-Fault`` header ``fault``."""

    def __init__(self, config: MockServerConfig, fault: bytes) -> None:
        super().__init__(config)
        self.fault = fault

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/responses":
            scope = {**scope, "headers": [*scope["headers"], (b"x-mock-fault", self.fault)]}
        await super().__call__(scope, receive, send)


async def test_a_stalled_relay_hits_the_idle_deadline_and_leaving_early_cancels_upstream() -> None:
    slow = MockLLMConfig(ttft=0.0, itl=0.01, tokens=300, seed=1)
    config = MockServerConfig(port=0, llm=slow, drain_timeout=0.2)
    app = Faulting(config, b"stall-after=3")
    body = b'{"input": "x", "stream": true}'
    with trio.fail_after(10):
        async with serving_mock_llm(config, app) as url:
            cfg = UpstreamConfig(base_url=f"{url}/v1", idle_timeout=0.2, first_token_timeout=2.0)
            async with open_openai_backend(cfg) as backend:
                got = []
                with pytest.raises(UpstreamIdleTimeoutError):
                    async with backend.open_relay("/responses", body, stream=True) as relay:
                        async for data in relay:
                            got.append(data)
                # What came before the stall, whole events only, then the deadline. The mock
                # stalls after 3 writes, and a write holds every event that was due by then
                # (more than one on a busy machine), so at least 3 events arrived.
                events = b"".join(got).split(b"\n\n")
                assert events[-1] == b""
                assert len(events) - 1 >= 3
                await app.wait_until(lambda s: s.active == 0 and s.cancelled == 1)
                # Leaving a healthy stream early closes the upstream call: the server sees it go.
                app.fault = b""
                async with backend.open_relay("/responses", body, stream=True) as relay:
                    async for _ in relay:
                        break
                stats = await app.wait_until(lambda s: s.active == 0 and s.cancelled == 2)
                assert stats.completed == 0
                assert backend.statistics().in_flight == 0
