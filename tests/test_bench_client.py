"""trio_agent.bench._client: the lean HTTP/1.1 + SSE load client and the in-process client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import orjson
import pytest
import trio
import trio.testing

from tests._bench_server import Behaviour, handle_connection
from trio_agent.bench import HTTPClientStatistics, HTTPStreamClient, Outcome, RequestTrace

URL = "http://test.invalid:8000"


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
TRIO_AGENT_RESPONSE = (
    HEAD
    + _chunk(b'event: thinking\ndata: {"type":"thinking"}\n\n')
    + _chunk(
        b'event: token\ndata: {"type":"token","content":"He"}\n\nevent: token\ndata: {"type":"token",'
    )
    + _chunk(b'"content":"llo"}\n\n')
    + _chunk(
        b'data: {"type":"token","content":" you"}\r\n\r\n'
    )  # no event line: type from the data
    + _chunk(
        b'event: done\ndata: {"type":"done","usage":{"prompt_tokens":1,"completion_tokens":5}}\n\n'
    )
    + b"0\r\n\r\n"
)
OPENAI_RESPONSE = (
    HEAD
    + _chunk(b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n')
    + _chunk(b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n')
    + _chunk(b'data: {"choices":[{"index":0,"delta":{"content":"!"}}]}\n\n')
    + _chunk(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    + _chunk(b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n')
    + _chunk(b"data: [DONE]\n\n")
    + b"0\r\n\r\n"
)


class FakeServer:
    """Hands the client in-memory streams; ``handler`` serves the other end of each."""

    def __init__(
        self, nursery: trio.Nursery, handler: Callable[[trio.abc.Stream], Awaitable[None]]
    ) -> None:
        self.nursery = nursery
        self.handler = handler
        self.connections = 0

    async def connect(self) -> trio.abc.Stream:
        self.connections += 1
        client_end, server_end = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.handler, server_end)
        return client_end


def scripted(raw: bytes, cuts: list[int]) -> Callable[[trio.abc.Stream], Awaitable[None]]:
    """Reads the request, then sends ``raw`` cut at ``cuts``, each piece a separate read."""

    async def handler(stream: trio.abc.Stream) -> None:
        request = await stream.receive_some()
        assert request.startswith(b"POST ")
        last = 0
        for cut in [*cuts, len(raw)]:
            await stream.send_all(raw[last:cut])
            last = cut
            await trio.testing.wait_all_tasks_blocked()
        await trio.testing.wait_all_tasks_blocked()
        await stream.aclose()

    return handler


async def one(client: HTTPStreamClient) -> RequestTrace:
    trace = RequestTrace(index=0, scheduled_at=trio.current_time())
    await client.run(trace)
    return trace


async def test_trio_agent_stream_cut_at_every_byte() -> None:
    for cut in range(len(TRIO_AGENT_RESPONSE) + 1):
        async with trio.open_nursery() as nursery:
            server = FakeServer(nursery, scripted(TRIO_AGENT_RESPONSE, [cut]))
            client = HTTPStreamClient(URL, connect=server.connect)
            trace = await one(client)
            await client.aclose()
        assert trace.outcome is Outcome.OK, (cut, trace)
        assert trace.status_code == 200
        assert len(trace.token_times) == 3, cut  # three token events ...
        assert trace.output_tokens == 5, cut  # ... carrying five tokens, says the usage
        assert trace.sse_events == 5, cut
        assert trace.first_token_at is not None and trace.first_event_at is not None


async def test_openai_stream_cut_everywhere() -> None:
    cuts = list(range(0, len(OPENAI_RESPONSE), 7))
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, scripted(OPENAI_RESPONSE, cuts))
        client = HTTPStreamClient(URL, api="openai", connect=server.connect)
        trace = await one(client)
        await client.aclose()
    assert trace.outcome is Outcome.OK
    assert len(trace.token_times) == 2  # the empty role delta is not a token
    assert trace.output_tokens == 2
    assert trace.sse_events == 6


@pytest.mark.parametrize(
    ("mode", "outcome", "status", "code"),
    [
        ("shed", Outcome.SHED, 503, "overloaded"),
        ("http_500", Outcome.HTTP_ERROR, 500, None),
        ("error_event", Outcome.UPSTREAM_ERROR, 200, "upstream_timeout"),
        ("truncated", Outcome.PROTOCOL_ERROR, 200, None),
        ("not_sse", Outcome.PROTOCOL_ERROR, 200, None),
    ],
)
async def test_failure_outcomes(mode: str, outcome: Outcome, status: int, code: str | None) -> None:
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, partial(handle_connection, behaviour=Behaviour(mode=mode)))
        client = HTTPStreamClient(URL, connect=server.connect)
        trace = await one(client)
        await client.aclose()
    assert trace.outcome is outcome, trace
    assert trace.status_code == status
    assert trace.error_code == code
    if mode == "shed":
        assert trace.retry_after == 2.0


async def test_connect_error() -> None:
    async def refuse() -> trio.abc.Stream:
        raise ConnectionRefusedError("nobody home")

    client = HTTPStreamClient(URL, connect=refuse)
    trace = await one(client)
    assert trace.outcome is Outcome.CONNECT_ERROR
    assert "nobody home" in trace.detail


async def test_keepalive_reuses_one_connection() -> None:
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, partial(handle_connection, behaviour=Behaviour(tokens=2)))
        client = HTTPStreamClient(URL, connect=server.connect)
        for _ in range(3):
            trace = await one(client)
            assert trace.outcome is Outcome.OK
            assert trace.output_tokens == 2
        assert server.connections == 1
        assert client.statistics() == HTTPClientStatistics(in_use=0, idle=1, connects=1, reuses=2)
        assert "idle=1" in repr(client)
        await client.aclose()
        assert client.statistics().idle == 0


async def test_stale_keepalive_connection_is_retried_once_on_a_new_one() -> None:
    async def serve_once(stream: trio.abc.Stream) -> None:
        # Answers one request with keep-alive, then closes the idle connection.
        await scripted(TRIO_AGENT_RESPONSE, [])(stream)

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, serve_once)
        client = HTTPStreamClient(URL, connect=server.connect)
        assert (await one(client)).outcome is Outcome.OK
        await trio.testing.wait_all_tasks_blocked()
        second = await one(client)
        assert second.outcome is Outcome.OK
        assert server.connections == 2
        await client.aclose()


async def test_no_keepalive_opens_a_connection_per_request() -> None:
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, partial(handle_connection, behaviour=Behaviour(tokens=1)))
        client = HTTPStreamClient(URL, connect=server.connect, keepalive=False)
        for _ in range(2):
            assert (await one(client)).outcome is Outcome.OK
        assert server.connections == 2


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        HTTPStreamClient("https://example.com")
    with pytest.raises(ValueError):
        HTTPStreamClient(URL, api="grpc")


@pytest.mark.e2e
async def test_real_sockets_against_a_tiny_trio_server() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            behaviour = Behaviour(tokens=16, ttft=0.005, itl=0.001)
            listeners = await nursery.start(
                partial(
                    trio.serve_tcp,
                    partial(handle_connection, behaviour=behaviour),
                    0,
                    host="127.0.0.1",
                )
            )
            port = listeners[0].socket.getsockname()[1]
            client = HTTPStreamClient(f"http://127.0.0.1:{port}")
            traces = []

            async def worker() -> None:
                for _ in range(5):
                    traces.append(await one(client))

            async with trio.open_nursery() as workers:
                for _ in range(4):
                    workers.start_soon(worker)
            assert client.statistics().connects == 4
            assert client.statistics().in_use == 0
            await client.aclose()
            nursery.cancel_scope.cancel()
    assert len(traces) == 20
    for t in traces:
        assert t.outcome is Outcome.OK
        assert t.output_tokens == 16 and len(t.token_times) == 16
        assert t.sent_at is not None and t.first_token_at is not None
        assert t.first_token_at - t.sent_at >= 0.005


@pytest.mark.e2e
async def test_real_socket_connect_error() -> None:
    probe = trio.socket.socket()
    await probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with trio.fail_after(10):
        trace = await one(HTTPStreamClient(f"http://127.0.0.1:{port}"))
    assert trace.outcome is Outcome.CONNECT_ERROR
    assert "ConnectionRefusedError" in trace.detail


async def test_cancelled_mid_stream_closes_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        behaviour = Behaviour(tokens=100, itl=1.0)
        server = FakeServer(nursery, partial(handle_connection, behaviour=behaviour))
        client = HTTPStreamClient(URL, connect=server.connect)
        trace = RequestTrace(index=0, scheduled_at=0.0)
        with trio.move_on_after(5.5):
            await client.run(trace)
        assert trace.outcome is None  # the runner decides: timeout or cancelled
        assert len(trace.token_times) == 6  # at 0, 1, ..., 5 s
        assert client.statistics() == HTTPClientStatistics(in_use=0, idle=0, connects=1, reuses=0)
        nursery.cancel_scope.cancel()


async def test_extra_body_is_merged_into_the_request_and_tool_call_pieces_are_output() -> None:
    tool_stream = (
        HEAD
        + _chunk(b'data: {"choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,'
                 b'"id":"c","type":"function","function":{"name":"f","arguments":""}}]}}]}\n\n')
        + _chunk(b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}\n\n')
        + _chunk(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n')
        + _chunk(b"data: [DONE]\n\n")
        + b"0\r\n\r\n"
    )  # fmt: skip
    seen: list[bytes] = []

    async def handler(stream: trio.abc.Stream) -> None:
        seen.append(await stream.receive_some())
        await stream.send_all(tool_stream)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, handler)
        client = HTTPStreamClient(URL, api="openai", connect=server.connect,
                                  extra_body='{"tools": [{"type": "function"}], "stream": true}')
        trace = await one(client)
        await client.aclose()
    body = orjson.loads(seen[0].split(b"\r\n\r\n", 1)[1])
    assert body["tools"] == [{"type": "function"}] and body["messages"][0]["role"] == "user"
    assert trace.outcome is Outcome.OK and len(trace.token_times) == 2
