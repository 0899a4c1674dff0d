"""OpenAIBackend: wire parsing, deadlines, retries, budget, cancellation, secrets.

Most tests use a scripted httpx transport whose bodies are paced by trio sleeps, so
they run on the autojump clock with exact times; the e2e tests go over real sockets
to a trio_agent gateway serving its OpenAI-compatible /v1 from the MockLLM.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import orjson
import pytest
import trio

from tests._fakes import drain_ready
from trio_agent import (
    UpstreamConfig,
    UpstreamConnectError,
    UpstreamFirstTokenTimeoutError,
    UpstreamIdleTimeoutError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamStreamError,
    UpstreamTotalTimeoutError,
)
from trio_agent.config import MockLLMConfig, ServerConfig
from trio_agent.errors import ConfigError
from trio_agent.llm import ChatRequest, MockLLM, OpenAIBackend, RetryBudget, open_openai_backend
from trio_agent.server import serve

CANARY = "sk-canary-upstream-0123456789"
Q = ChatRequest.from_question("hello")


def frame(
    delta: str | None = None, finish: str | None = None, usage: dict[str, int] | None = None
) -> bytes:
    obj: dict[str, Any] = {"object": "chat.completion.chunk", "choices": []}
    if delta is not None or finish is not None:
        obj["choices"] = [
            {"index": 0, "delta": {"content": delta} if delta else {}, "finish_reason": finish}
        ]
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + orjson.dumps(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"
ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}\n\n'


class Body(httpx.AsyncByteStream):
    """A response body: a script of (delay, bytes) steps, recording when it is closed."""

    def __init__(self, steps: list[tuple[float, bytes]], log: dict[str, Any]) -> None:
        self.steps = steps
        self.log = log

    def __aiter__(self) -> Body:
        self.position = 0
        return self

    async def __anext__(self) -> bytes:
        if self.position >= len(self.steps):
            raise StopAsyncIteration
        delay, data = self.steps[self.position]
        self.position += 1
        await trio.sleep(delay)
        return data

    async def aclose(self) -> None:
        self.log["closed_at"] = trio.current_time()


class Script:
    """Answers the n-th request with the n-th response factory."""

    def __init__(self, *responses: Callable[[dict[str, Any]], httpx.Response]) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []
        self.log: dict[str, Any] = {}

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(trio.current_time())
        return self.responses[min(len(self.requests), len(self.responses)) - 1](self.log)


def ok(*steps: tuple[float, bytes]) -> Callable[[dict[str, Any]], httpx.Response]:
    return lambda log: httpx.Response(
        200, stream=Body(list(steps), log), headers={"content-type": "text/event-stream"}
    )


def status(
    code: int, headers: dict[str, str] | None = None
) -> Callable[[dict[str, Any]], httpx.Response]:
    body = orjson.dumps({"error": {"message": f"nope {CANARY}", "type": "x"}})
    return lambda log: httpx.Response(code, content=body, headers=headers or {})


def refuse_connect(log: dict[str, Any]) -> httpx.Response:
    raise httpx.ConnectError("connection refused")


def standard_stream() -> Callable[[dict[str, Any]], httpx.Response]:
    return ok(
        (0.1, ROLE),
        (0.0, frame("Hel")),
        (0.02, frame("lo")),
        (0.02, frame(finish="stop")),
        (0.0, frame(usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})),
        (0.0, DONE),
    )


def make_backend(script: Script, **cfg: Any) -> OpenAIBackend:
    config = UpstreamConfig(base_url="http://upstream.test/v1", api_key=CANARY, seed=1, **cfg)
    client = httpx.AsyncClient(transport=httpx.MockTransport(script))
    return OpenAIBackend(config, client=client, rng=random.Random(1))


async def collect(backend: OpenAIBackend, req: ChatRequest = Q) -> list[tuple[float, Any]]:
    out = []
    async with backend.stream_chat(req) as chunks:
        async for c in chunks:
            out.append((trio.current_time(), c))
    return out


async def test_streams_deltas_finish_and_usage(autojump_clock: trio.testing.MockClock) -> None:
    script = Script(standard_stream())
    backend = make_backend(script)
    got = await collect(backend)
    # Every upstream chunk comes through, the role chunk too (a relay forwards each one).
    assert [c.delta for _, c in got] == ["", "Hel", "lo", "", ""]
    assert [round(t, 9) for t, _ in got[:3]] == [0.1, 0.1, 0.12]
    assert got[3][1].finish_reason == "stop"
    assert got[4][1].usage is not None and got[4][1].usage.completion_tokens == 2
    body = orjson.loads(script.requests[0].content)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert script.requests[0].headers["authorization"] == f"Bearer {CANARY}"
    stats = backend.statistics()
    assert (stats.requests, stats.attempts, stats.retries, stats.in_flight) == (1, 1, 0, 0)


async def test_retries_503_honouring_retry_after(autojump_clock: trio.testing.MockClock) -> None:
    script = Script(
        status(503, {"Retry-After": "2"}), status(429, {"retry-after-ms": "500"}), standard_stream()
    )
    backend = make_backend(script)
    got = await collect(backend)
    assert script.times == [0, 2.0, 2.5]
    assert "".join(c.delta for _, c in got) == "Hello"
    assert backend.statistics().retries == 2


async def test_backoff_is_full_jitter_and_capped_by_attempts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script = Script(status(500))
    backend = make_backend(script, max_attempts=3, backoff_base=1.0)
    with pytest.raises(UpstreamStatusError) as info:
        await collect(backend)
    assert info.value.upstream_status == 500 and len(script.requests) == 3
    rng = random.Random(1)
    first = rng.uniform(0, 1.0)
    second = first + rng.uniform(0, 2.0)
    assert script.times == pytest.approx([0, first, second])


@pytest.mark.parametrize("code", [400, 401, 403, 404, 422])
async def test_client_errors_are_never_retried(
    code: int, autojump_clock: trio.testing.MockClock
) -> None:
    script = Script(status(code), standard_stream())
    with pytest.raises(UpstreamStatusError) as info:
        await collect(make_backend(script))
    assert info.value.upstream_status == code and len(script.requests) == 1


async def test_retry_after_beyond_the_deadline_fails_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script = Script(status(429, {"Retry-After": "60"}), standard_stream())
    with pytest.raises(UpstreamStatusError) as info:
        await collect(make_backend(script, first_token_timeout=10))
    assert info.value.retry_after == 60 and trio.current_time() == 0 and len(script.requests) == 1


async def test_connection_errors_are_retried(autojump_clock: trio.testing.MockClock) -> None:
    script = Script(refuse_connect, standard_stream())
    got = await collect(make_backend(script))
    assert len(script.requests) == 2 and "".join(c.delta for _, c in got) == "Hello"
    script = Script(refuse_connect)
    with pytest.raises(UpstreamConnectError):
        await collect(make_backend(script))
    assert len(script.requests) == 3


async def test_retry_budget_caps_retries_across_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script = Script(status(503))
    backend = make_backend(script, max_attempts=5, retry_budget_ratio=0.1, retry_budget_min=1)
    messages = []
    for _ in range(20):
        # A retry the budget refuses is a detail of the failure, never another code.
        with pytest.raises(UpstreamStatusError) as info:
            await collect(backend)
        assert info.value.code == "upstream_status" and info.value.upstream_status == 503
        messages.append(info.value.message)
    stats = backend.statistics()
    # 20 requests: the floor of 1 plus 10 % of them, never the 4 retries each would take.
    assert stats.retries <= 1 + 2
    assert stats.attempts <= 1.2 * stats.requests
    assert any("not retried: the retry budget is spent" in m for m in messages)


async def test_no_retry_after_the_first_token(autojump_clock: trio.testing.MockClock) -> None:
    script = Script(
        ok((0.0, frame("a")), (0.1, b'data: {"error": {"message": "boom"}}\n\n')), standard_stream()
    )
    backend = make_backend(script)
    seen = []
    with pytest.raises(UpstreamStreamError):
        async with backend.stream_chat(Q) as chunks:
            async for c in chunks:
                seen.append(c.delta)
    assert seen == ["a"] and len(script.requests) == 1 and backend.statistics().in_flight == 0


async def test_first_token_timeout(autojump_clock: trio.testing.MockClock) -> None:
    script = Script(ok((30.0, frame("late")), (0, DONE)))
    with pytest.raises(UpstreamFirstTokenTimeoutError):
        await collect(make_backend(script, first_token_timeout=5))
    assert trio.current_time() == 5
    assert script.log["closed_at"] == 5


async def test_idle_timeout_mid_stream(autojump_clock: trio.testing.MockClock) -> None:
    script = Script(ok((0.0, frame("a")), (100.0, frame("b"))))
    with pytest.raises(UpstreamIdleTimeoutError):
        await collect(make_backend(script, idle_timeout=3))
    assert trio.current_time() == 3


async def test_a_dribbling_upstream_is_caught_by_the_event_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    one_event = frame("slow")
    dribble = [
        (0.5, bytes([b])) for b in one_event
    ]  # 0.5 s a byte, every byte within httpx's read timeout
    script = Script(ok((0.0, frame("a")), *dribble))
    with pytest.raises(UpstreamIdleTimeoutError):
        await collect(make_backend(script, idle_timeout=4))
    assert trio.current_time() == 4


async def test_total_timeout(autojump_clock: trio.testing.MockClock) -> None:
    steps = [(0.0, frame("a"))] + [(1.0, frame("x")) for _ in range(100)]
    with pytest.raises(UpstreamTotalTimeoutError):
        await collect(make_backend(Script(ok(*steps)), idle_timeout=2, total_timeout=10))
    assert trio.current_time() == 10


async def test_stream_without_done_is_a_protocol_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(UpstreamProtocolError):
        await collect(make_backend(Script(ok((0.0, frame("a"))))))
    with pytest.raises(UpstreamProtocolError):
        await collect(make_backend(Script(ok((0.0, b"data: not json\n\n")))))


async def test_cancellation_closes_the_response(autojump_clock: trio.testing.MockClock) -> None:
    steps = [(0.0, frame("a"))] + [(1.0, frame("x")) for _ in range(100)]
    script = Script(ok(*steps))
    backend = make_backend(script)
    with trio.move_on_after(5.5):
        await collect(backend)
    assert script.log["closed_at"] == 5.5
    assert backend.statistics().in_flight == 0


async def test_the_key_never_leaks(autojump_clock: trio.testing.MockClock) -> None:
    errors: list[BaseException] = []
    for script in (
        Script(status(401)),
        Script(status(503, {"Retry-After": "999"})),
        Script(
            ok(
                (0.0, frame("a")),
                (0.0, b'data: {"error": {"message": "bad key ' + CANARY.encode() + b'"}}\n\n'),
            )
        ),
        Script(refuse_connect),
    ):
        backend = make_backend(script)
        with pytest.raises(Exception) as info:
            await collect(backend)
        errors.append(info.value)
        assert CANARY not in repr(backend)
    assert len(errors) == 4
    for exc in errors:
        assert CANARY not in str(exc) and CANARY not in repr(exc)
    assert CANARY not in repr(UpstreamConfig(base_url="http://x", api_key=CANARY))


async def test_complete_chat_and_models(autojump_clock: trio.testing.MockClock) -> None:
    completion = orjson.dumps(
        {
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )
    script = Script(status(502), lambda log: httpx.Response(200, content=completion))
    done = await make_backend(script).complete_chat(Q)
    assert done.content == "hi" and done.usage.completion_tokens == 1 and len(script.requests) == 2
    models = Script(
        lambda log: httpx.Response(200, content=b'{"data": [{"id": "a"}, {"id": "b"}]}')
    )
    assert await make_backend(models).list_models() == ["a", "b"]


def test_retry_budget_window(autojump_clock: trio.testing.MockClock) -> None:
    async def main() -> None:
        budget = RetryBudget(ratio=0.5, window=10, min_retries=0)
        for _ in range(4):
            budget.record_request()
        assert [budget.try_spend() for _ in range(3)] == [True, True, False]
        await trio.sleep(10)
        assert budget.statistics().requests_in_window == 0
        assert budget.try_spend() is False

    trio.run(main, clock=autojump_clock)


# -- over real sockets, against a trio_agent gateway serving /v1 from the MockLLM -----


@asynccontextmanager
async def upstream_gateway(mock: MockLLMConfig) -> AsyncIterator[tuple[str, MockLLM]]:
    llm = MockLLM(mock)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(
            partial(
                serve,
                ServerConfig(port=0, access_log=False),
                handle_signals=False,
                shutdown_trigger=stop.wait,
                backend=llm,
            )
        )
        try:
            yield f"http://{host}:{port}/v1", llm
        finally:
            stop.set()


@pytest.mark.e2e
async def test_real_socket_stream_and_cancel_seen_upstream() -> None:
    with trio.fail_after(20):
        async with upstream_gateway(MockLLMConfig(ttft=0.05, itl=0.01, tokens=200)) as (url, llm):
            async with open_openai_backend(UpstreamConfig(base_url=url, api_key=CANARY)) as backend:
                got = await collect(backend, ChatRequest.from_question("hi", max_tokens=5))
                assert sum(1 for _, c in got if c.delta) == 5
                assert got[-1][1].usage is not None and got[-1][1].usage.completion_tokens == 5
                # Leave mid-stream: the upstream must see the disconnect and cancel its stream.
                async with backend.stream_chat(Q) as chunks:
                    async for _ in chunks:
                        break
                left = trio.current_time()
                while llm.statistics().cancelled < 1:
                    assert trio.current_time() - left < 2, "upstream never saw the disconnect"
                    await trio.sleep(0.005)
                assert llm.statistics().active == 0
                assert backend.statistics().in_flight == 0


async def test_receive_nowait_hands_over_events_already_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Four events arrive in one read (the caller fell behind), then the end later.
    burst = frame("a") + frame("b") + ROLE + frame("c") + frame(finish="stop")
    script = Script(ok((0.1, burst), (0.05, DONE)))
    backend = make_backend(script)
    async with backend.stream_chat(Q) as chunks:
        first = await chunks.__anext__()
        ready = drain_ready(chunks)
        rest = [c async for c in chunks]
    assert first.delta == "a"
    assert [(c.delta, c.finish_reason) for c in ready] == [
        ("b", None),
        ("", None),  # the role chunk, passed on as it came
        ("c", None),
        ("", "stop"),
    ]
    assert rest == []  # [DONE] was left to __anext__, which ended the stream
    assert backend.statistics().in_flight == 0


def test_the_pool_is_one_httpx_client_per_connection_unless_told() -> None:
    from trio_agent.llm._openai import _open_clients, pool_shards

    def cfg(**kw: Any) -> UpstreamConfig:
        return UpstreamConfig(base_url="http://u.test/v1", **kw)

    assert pool_shards(cfg(max_connections=200)) == 200
    assert pool_shards(cfg()) == 100
    assert pool_shards(cfg(max_connections=200, pool_shards=2)) == 2
    auto = _open_clients(cfg(max_connections=3, max_keepalive_connections=2))
    auto_pools = [c._transport._pool for c in auto]  # type: ignore[attr-defined]
    limits = [(p._max_connections, p._max_keepalive_connections) for p in auto_pools]
    assert limits == [(1, 1), (1, 1), (1, 0)]
    clients = _open_clients(cfg(max_connections=10, max_keepalive_connections=5, pool_shards=3))
    pools = [c._transport._pool for c in clients]  # type: ignore[attr-defined]
    assert [p._max_connections for p in pools] == [4, 3, 3]  # every connection is somewhere
    assert [p._max_keepalive_connections for p in pools] == [2, 2, 1]
    # One TLS context for all shards (building one loads the CA bundle: ~50 ms each).
    assert len({id(p._ssl_context) for p in pools}) == 1 and pools[0]._ssl_context is not None
    with pytest.raises(ConfigError):
        cfg(max_connections=4, pool_shards=5)
    with pytest.raises(ConfigError):
        cfg(pool_shards=-1)
    # No size given: 100 on its own (the gateway sizes it, see test_server_serve), every
    # connection kept alive unless told otherwise.
    assert (cfg().connections, cfg().keepalive_connections) == (100, 100)
    assert cfg(max_connections=40).keepalive_connections == 40
    assert cfg(max_connections=40, max_keepalive_connections=0).keepalive_connections == 0


async def test_a_call_takes_an_idle_client_else_the_one_with_the_fewest_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scripts = [Script(standard_stream()) for _ in range(3)]
    clients = [httpx.AsyncClient(transport=httpx.MockTransport(s)) for s in scripts]
    config = UpstreamConfig(base_url="http://upstream.test/v1", api_key=CANARY, seed=1)
    backend = OpenAIBackend(config, client=clients, rng=random.Random(1))
    async with trio.open_nursery() as nursery:
        for _ in range(5):  # 5 streams open at once over 3 clients: 2, 2, 1
            nursery.start_soon(collect, backend)
    assert sorted(len(s.requests) for s in scripts) == [1, 2, 2]
    assert backend._load == [0, 0, 0] and sorted(backend._idle) == [0, 1, 2]
    assert backend.statistics().in_flight == 0
    # All idle again: one call after another takes the client freed last (its connection
    # is the likeliest to be alive), so they all reuse one.
    before = [len(s.requests) for s in scripts]
    for _ in range(3):
        got = await collect(backend)
        assert got[-1][1].usage is not None
    assert sorted(len(s.requests) - b for s, b in zip(scripts, before, strict=True)) == [0, 0, 3]
