"""OpenAIBackend against the mock LLM server over real sockets: every deadline, retry, budget
and fault path, end to end.

The real-socket counterparts of the autojump-clock tests in tests/test_llm_openai.py: the
upstream client (``open_openai_backend``) talks HTTP/1.1 over loopback to ``serve_mock_llm``
on a real Hypercorn at 127.0.0.1:0, in real time with small delays. Faults are chosen on the
server side (``ScriptedMockServer`` sets the ``X-Mock-Fault`` of the n-th chat request from a
script, or the config's random fault rates apply), so the product code runs unchanged. Each
test asserts the typed error, the attempts the server saw, and that capacity is back to zero
on both sides (backend ``in_flight``, server ``active`` and ``queued``).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import fields
from typing import Any, TypeVar

import pytest
import trio

from tests._mock_server import ScriptedMockServer, serving_mock_llm
from trio_agent import (
    UpstreamConfig,
    UpstreamConnectError,
    UpstreamConnectTimeoutError,
    UpstreamError,
    UpstreamFirstTokenTimeoutError,
    UpstreamIdleTimeoutError,
    UpstreamStatusError,
    UpstreamStreamError,
    UpstreamTimeoutError,
    UpstreamTotalTimeoutError,
)
from trio_agent.config import MockLLMConfig, MockServerConfig
from trio_agent.llm import ChatChunk, ChatRequest, OpenAIBackend, RetryBudget, open_openai_backend
from trio_agent.mock_server import MockServerStatistics

pytestmark = pytest.mark.e2e

E = TypeVar("E", bound=UpstreamError)

WORDS = ["alpha", "beta", "gamma"]
Q = ChatRequest.from_question(" ".join(WORDS))
TOKENS = 12
# The mock echoes the question's words, so every reply's text is known in advance.
REPLY = " ".join(WORDS[i % len(WORDS)] for i in range(TOKENS))
FAST = MockLLMConfig(ttft=0.0, itl=0.002, tokens=TOKENS, seed=1, content="echo")
SLOW = MockLLMConfig(ttft=0.0, itl=0.01, tokens=500, seed=1, content="echo")  # 5 s long


def server_config(llm: MockLLMConfig = FAST, **overrides: Any) -> MockServerConfig:
    return MockServerConfig(port=0, llm=llm, drain_timeout=0.2, **overrides)


def upstream_config(base_url: str, **overrides: Any) -> UpstreamConfig:
    values: dict[str, Any] = {
        "base_url": base_url,
        "model": "mock-llm",
        "connect_timeout": 1.0,
        "first_token_timeout": 2.0,
        "idle_timeout": 1.0,
        "total_timeout": 5.0,
        "max_attempts": 3,
        "backoff_base": 0.01,
        "backoff_max": 0.02,
        "seed": 0,
    }
    return UpstreamConfig(**(values | overrides))


@asynccontextmanager
async def mock_upstream(
    script: Iterable[str] = (),
    *,
    server: MockServerConfig | None = None,
    budget: RetryBudget | None = None,
    **upstream: Any,
) -> AsyncIterator[tuple[OpenAIBackend, ScriptedMockServer]]:
    """A mock LLM server taking its faults from ``script``, and a backend pointed at it."""
    config = server or server_config()
    app = ScriptedMockServer(config, script)
    async with serving_mock_llm(config, app) as url:
        async with open_openai_backend(upstream_config(f"{url}/v1", **upstream), budget=budget) as backend:
            yield backend, app


async def settled(
    backend: OpenAIBackend, app: ScriptedMockServer, *, within: float = 1.0, **expected: int
) -> MockServerStatistics:
    """Wait (at most ``within`` s) until the server is idle with the ``expected`` counters.

    The server learns of a client that left over a real socket, so this waits for it, bounded;
    then the backend must hold nothing either.
    """
    names = {f.name for f in fields(MockServerStatistics)}
    assert set(expected) <= names, f"unknown counters {set(expected) - names}"

    def done(s: MockServerStatistics) -> bool:
        return (
            s.active == 0
            and s.queued == 0
            and all(getattr(s, name) == value for name, value in expected.items())
        )

    with trio.move_on_after(within):
        stats = await app.wait_until(done)
        assert backend.statistics().in_flight == 0
        return stats
    raise AssertionError(f"the server did not settle at {expected} within {within} s: {app.statistics()}")


async def read_all(backend: OpenAIBackend, request: ChatRequest = Q) -> list[ChatChunk]:
    async with backend.stream_chat(request) as chunks:
        return [chunk async for chunk in chunks]


def text(chunks: list[ChatChunk]) -> str:
    return "".join(c.delta for c in chunks)


async def read_until_error(backend: OpenAIBackend, error: type[E], deltas: list[str]) -> E:
    """Stream ``Q``, appending each delta to ``deltas``, until it raises ``error``."""
    with pytest.raises(error) as info:
        async with backend.stream_chat(Q) as chunks:
            async for chunk in chunks:
                deltas.append(chunk.delta)
    return info.value


# The streamed body is read below httpx (trio_agent/llm/_h11_body.py) unless read_below_httpx
# is off; the tests of mid-stream behaviour run both ways.
BELOW = pytest.mark.parametrize("below", [True, False], ids=["below-httpx", "aiter-raw"])


# -- the happy paths ---------------------------------------------------------------------------


@BELOW
async def test_stream_has_deltas_finish_reason_and_usage_and_reuses_the_connection(
    below: bool,
) -> None:
    with trio.fail_after(10):
        async with mock_upstream(read_below_httpx=below) as (backend, app):
            for _ in range(2):
                async with backend.stream_chat(Q) as chunks:
                    # Under the pinned httpx/httpcore the fast path is taken (a version whose
                    # objects no longer fit would fall back silently: this fails then).
                    assert (getattr(chunks, "_body", None) is not None) is below
                    got = [chunk async for chunk in chunks]
                assert text(got) == REPLY
                assert sum(1 for c in got if c.delta) == TOKENS
                assert [c.finish_reason for c in got if c.finish_reason] == ["stop"]
                usage = [c.usage for c in got if c.usage is not None]
                assert len(usage) == 1
                assert (usage[0].prompt_tokens, usage[0].completion_tokens) == (3, TOKENS)
            stats = await settled(backend, app, completed=2)
            assert (stats.requests, stats.tokens, stats.cancelled, stats.faults) == (2, 2 * TOKENS, 0, 0)
            # A stream read to [DONE] hands its connection back to the pool: same client port.
            assert app.peers[0] == app.peers[1]
            s = backend.statistics()
            assert (s.requests, s.attempts, s.retries, s.errors) == (2, 2, 0, {})


class _StepCounter(trio.abc.Instrument):
    """Counts the scheduler steps each watched task takes."""

    def __init__(self) -> None:
        self.steps: dict[trio.lowlevel.Task, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task in self.steps:
            self.steps[task] += 1


async def test_calls_arriving_together_each_get_their_own_connection_at_once() -> None:
    # httpcore's pool gives every request queued at one moment the same idle connection;
    # all but one find it taken and go round again, a few scheduler passes each (under
    # load, seconds per request). The pool is one httpx client per connection, and a call
    # takes an idle one: 8 calls arriving together reuse the 8 warm connections, each in
    # as few passes as a call on its own.
    n = 8
    with trio.fail_after(10):
        async with mock_upstream(max_connections=n) as (backend, app):
            counter = _StepCounter()
            opened: list[int] = []

            async def open_one(go: trio.Event) -> None:
                await go.wait()
                task = trio.lowlevel.current_task()
                counter.steps[task] = 0
                async with backend.stream_chat(Q) as chunks:
                    opened.append(counter.steps.pop(task))
                    assert text([c async for c in chunks]) == REPLY

            async def round_of(calls: int) -> list[int]:
                opened.clear()
                go = trio.Event()
                async with trio.open_nursery() as nursery:
                    for _ in range(calls):
                        nursery.start_soon(open_one, go)
                    await trio.testing.wait_all_tasks_blocked()
                    go.set()
                return sorted(opened)

            trio.lowlevel.add_instrument(counter)
            try:
                await round_of(n)  # opens the n connections
                alone = max(await round_of(1))
                together = await round_of(n)
            finally:
                trio.lowlevel.remove_instrument(counter)
            await settled(backend, app, completed=2 * n + 1)
            # Every warm connection used once, none opened anew.
            assert len(set(app.peers[-n:])) == n and set(app.peers[-n:]) == set(app.peers[:n])
            assert together[-1] <= alone + 2, (alone, together)  # a read may wait once more
            assert backend._load == [0] * n and sorted(backend._idle) == list(range(n))


async def test_complete_chat_and_list_models() -> None:
    with trio.fail_after(10):
        async with mock_upstream() as (backend, app):
            reply = await backend.complete_chat(ChatRequest.from_question(" ".join(WORDS), max_tokens=5))
            assert reply.content == " ".join(WORDS[i % 3] for i in range(5))
            assert reply.finish_reason == "length"
            assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 5)
            assert reply.model == "mock-llm"
            assert await backend.list_models() == ["mock-llm"]
            stats = await settled(backend, app, completed=1)
            assert (stats.requests, stats.tokens) == (1, 5)
            s = backend.statistics()
            assert (s.requests, s.attempts, s.retries, s.errors) == (1, 1, 0, {})


# -- connecting --------------------------------------------------------------------------------


@contextmanager
def refusing_port() -> Iterator[int]:
    """A port bound but not listening: connecting is refused at once, and no one can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextmanager
def full_backlog_port() -> Iterator[int]:
    """A port listening with its accept queue full and never accepting.

    Linux drops the SYN of a connection to a listener whose accept queue is full (unless
    net.ipv4.tcp_abort_on_overflow is set), so a connect there hangs until its timeout.
    """
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(4):
            filler = socket.socket()
            fillers.append(filler)
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_connection_refused_is_retried_then_upstream_connect_error() -> None:
    with trio.fail_after(10), refusing_port() as port:
        config = upstream_config(f"http://127.0.0.1:{port}/v1", max_attempts=3)
        async with open_openai_backend(config) as backend:
            with pytest.raises(UpstreamConnectError) as info:
                await read_all(backend)
            assert type(info.value) is UpstreamConnectError
            assert info.value.upstream_status is None
            s = backend.statistics()
            assert (s.requests, s.attempts, s.retries, s.in_flight) == (1, 3, 2, 0)
            assert s.errors == {"upstream_unavailable": 1}


async def test_connect_timeout_when_the_listener_never_accepts() -> None:
    with trio.fail_after(10), full_backlog_port() as port:
        config = upstream_config(f"http://127.0.0.1:{port}/v1", connect_timeout=0.2, max_attempts=2)
        async with open_openai_backend(config) as backend:
            start = trio.current_time()
            with pytest.raises(UpstreamConnectTimeoutError) as info:
                await read_all(backend)
            elapsed = trio.current_time() - start
            assert info.value.timeout == 0.2
            assert 2 * 0.2 <= elapsed < 1.5  # two attempts, each cut by connect_timeout
            s = backend.statistics()
            assert (s.requests, s.attempts, s.retries, s.in_flight) == (1, 2, 1, 0)
            assert s.errors == {"upstream_connect_timeout": 1}


# -- deadlines ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first_token_timeout", "total_timeout", "error"),
    [(0.3, 5.0, UpstreamFirstTokenTimeoutError), (2.0, 0.3, UpstreamTotalTimeoutError)],
    ids=["first-token", "total-before-first-token"],
)
async def test_no_first_token_in_time_cancels_the_upstream_request(
    first_token_timeout: float, total_timeout: float, error: type[UpstreamTimeoutError]
) -> None:
    with trio.fail_after(10):
        async with mock_upstream(
            ["ttft=3.0"], first_token_timeout=first_token_timeout, total_timeout=total_timeout
        ) as (backend, app):
            start = trio.current_time()
            with pytest.raises(error) as info:
                await read_all(backend)
            assert type(info.value) is error
            assert info.value.timeout == 0.3
            assert 0.3 <= trio.current_time() - start < 1.0
            # The server sees the client leave and cancels its reply: nothing keeps generating.
            stats = await settled(backend, app, cancelled=1)
            assert (stats.requests, stats.completed, stats.tokens) == (1, 0, 0)
            s = backend.statistics()
            assert (s.attempts, s.retries) == (1, 0)
            assert s.errors == {error.code: 1}


async def test_complete_chat_total_timeout_cancels_the_upstream_request() -> None:
    with trio.fail_after(10):
        async with mock_upstream(["ttft=3.0"], total_timeout=0.3) as (backend, app):
            with pytest.raises(UpstreamTotalTimeoutError) as info:
                await backend.complete_chat(Q)
            assert info.value.timeout == 0.3
            stats = await settled(backend, app, cancelled=1)
            assert (stats.requests, stats.completed) == (1, 0)
            assert backend.statistics().attempts == 1


@BELOW
async def test_idle_timeout_after_k_tokens_of_a_stalled_stream(below: bool) -> None:
    with trio.fail_after(10):
        async with mock_upstream(
            ["stall-after=4"], idle_timeout=0.3, read_below_httpx=below
        ) as (backend, app):
            deltas: list[str] = []
            error = await read_until_error(backend, UpstreamIdleTimeoutError, deltas)
            assert error.timeout == 0.3
            assert "".join(deltas) == " ".join(WORDS[i % 3] for i in range(4))
            stats = await settled(backend, app, cancelled=1)
            assert (stats.requests, stats.tokens, stats.completed) == (1, 4, 0)
            s = backend.statistics()
            assert (s.attempts, s.retries, s.errors) == (1, 0, {"upstream_idle_timeout": 1})


@BELOW
async def test_a_dribbling_upstream_is_caught_by_the_per_event_deadline(below: bool) -> None:
    # One byte per >= 1 ms: an event (~230 bytes) takes >= 0.23 s, though bytes never stop for
    # longer than a few ms, so httpx's per-read timeout (here 3 s) would never fire.
    with trio.fail_after(10):
        async with mock_upstream(
            ["slow-bytes"],
            server=server_config(slow_bytes_delay=0.001),
            first_token_timeout=3.0,
            idle_timeout=0.1,
            read_below_httpx=below,
        ) as (backend, app):
            deltas: list[str] = []
            times: list[float] = []
            with pytest.raises(UpstreamIdleTimeoutError) as info:
                async with backend.stream_chat(Q) as chunks:
                    async for chunk in chunks:
                        deltas.append(chunk.delta)
                        times.append(trio.current_time())
            gap = trio.current_time() - times[-1]
            assert info.value.timeout == 0.1
            assert [d for d in deltas if d] == ["alpha"]  # the first came within first_token_timeout; no second
            assert 0.1 <= gap < 1.0  # the event deadline, not httpx's 3 s read timeout
            stats = await settled(backend, app, cancelled=1)
            assert (stats.requests, stats.completed, stats.faults) == (1, 0, 1)


@BELOW
async def test_total_timeout_mid_stream(below: bool) -> None:
    with trio.fail_after(10):
        async with mock_upstream(
            server=server_config(SLOW), total_timeout=0.5, read_below_httpx=below
        ) as (backend, app):
            start = trio.current_time()
            deltas: list[str] = []
            error = await read_until_error(backend, UpstreamTotalTimeoutError, deltas)
            assert error.timeout == 0.5
            assert 0.5 <= trio.current_time() - start < 1.0
            assert 0 < len(deltas) < SLOW.tokens  # cut mid-stream
            stats = await settled(backend, app, cancelled=1)
            assert (stats.requests, stats.completed) == (1, 0)
            assert backend.statistics().errors == {"upstream_total_timeout": 1}


# -- retries -----------------------------------------------------------------------------------


async def test_statuses_before_the_first_token_are_retried_until_success() -> None:
    script = ["503", "500", "429;retry-after=0", "408"]
    with trio.fail_after(10):
        async with mock_upstream(script, max_attempts=5, retry_budget_min=10) as (backend, app):
            assert text(await read_all(backend)) == REPLY
            stats = await settled(backend, app, completed=1)
            assert (stats.requests, stats.faults) == (5, 4)
            s = backend.statistics()
            assert (s.requests, s.attempts, s.retries, s.errors) == (1, 5, 4, {})


async def test_a_drop_before_the_first_token_is_retried() -> None:
    with trio.fail_after(10):
        async with mock_upstream(["drop-after=0"]) as (backend, app):
            assert text(await read_all(backend)) == REPLY
            stats = await settled(backend, app, completed=1)
            assert (stats.requests, stats.faults, stats.tokens) == (2, 1, TOKENS)
            # The dropped connection is not reused.
            assert app.peers[0] != app.peers[1]
            s = backend.statistics()
            assert (s.attempts, s.retries, s.errors) == (2, 1, {})


async def test_complete_chat_retries_a_503() -> None:
    with trio.fail_after(10):
        async with mock_upstream(["503"]) as (backend, app):
            reply = await backend.complete_chat(Q)
            assert reply.content == REPLY
            stats = await settled(backend, app, completed=1)
            assert (stats.requests, stats.faults) == (2, 1)
            assert (backend.statistics().attempts, backend.statistics().retries) == (2, 1)


async def test_random_503s_are_retried_and_both_sides_count_the_same_attempts() -> None:
    # Half the requests fail at random (seeded); six attempts make each call succeed.
    server = server_config(FAST, fault_503_rate=0.5)
    with trio.fail_after(10):
        async with mock_upstream(
            server=server, max_attempts=6, retry_budget_min=100
        ) as (backend, app):
            for _ in range(8):
                assert text(await read_all(backend)) == REPLY
            stats = await settled(backend, app, completed=8)
            s = backend.statistics()
            assert s.requests == 8 and s.errors == {}
            assert stats.requests == s.attempts and stats.faults == s.retries > 0


async def test_retry_after_is_honoured() -> None:
    # No backoff of our own: only the server's Retry-After makes the client wait.
    with trio.fail_after(10):
        async with mock_upstream(["429;retry-after=0.4"], backoff_base=0.0) as (backend, app):
            start = trio.current_time()
            assert text(await read_all(backend)) == REPLY
            assert 0.4 <= trio.current_time() - start < 1.4
            stats = await settled(backend, app, completed=1)
            assert (stats.requests, stats.faults) == (2, 1)
            assert backend.statistics().retries == 1


async def test_retry_after_beyond_the_deadline_fails_at_once_carrying_it() -> None:
    with trio.fail_after(10):
        async with mock_upstream(["429;retry-after=30"], first_token_timeout=2.0) as (backend, app):
            start = trio.current_time()
            with pytest.raises(UpstreamStatusError) as info:
                await read_all(backend)
            assert trio.current_time() - start < 0.5  # no 30 s wait, no wait for the deadline
            assert (info.value.upstream_status, info.value.retry_after) == (429, 30.0)
            stats = await settled(backend, app, requests=1)
            assert (stats.faults, stats.completed) == (1, 0)
            s = backend.statistics()
            assert (s.attempts, s.retries, s.errors) == (1, 0, {"upstream_status": 1})


async def test_client_error_statuses_are_never_retried() -> None:
    statuses = [400, 401, 403, 404, 422]
    with trio.fail_after(10):
        async with mock_upstream([*map(str, statuses), "400"]) as (backend, app):
            for n, status in enumerate(statuses, start=1):
                with pytest.raises(UpstreamStatusError) as info:
                    await read_all(backend)
                assert type(info.value) is UpstreamStatusError
                assert (info.value.upstream_status, info.value.retry_after) == (status, None)
                assert f"upstream answered {status}" in info.value.message
                assert app.statistics().requests == n  # exactly one request each
            with pytest.raises(UpstreamStatusError) as info:
                await backend.complete_chat(Q)
            assert info.value.upstream_status == 400
            stats = await settled(backend, app, requests=6)
            assert (stats.faults, stats.completed) == (6, 0)
            s = backend.statistics()
            assert (s.requests, s.attempts, s.retries, s.errors) == (6, 6, 0, {"upstream_status": 6})


async def test_retry_budget_bounds_the_attempts_against_a_failing_upstream() -> None:
    # Every request answers 503. The budget allows min_retries + int(ratio * requests in the
    # window) retries, so n sequential requests make exactly n + 1 + int(0.2 * n) attempts:
    # request 1 retries once (the floor), requests 2-4 not at all, request 5 once (1 + 5 // 5);
    # every request ends when the next retry is refused.
    n = 5
    budget = RetryBudget(ratio=0.2, window=10.0, min_retries=1)
    with trio.fail_after(10):
        async with mock_upstream(
            server=server_config(fault_503_rate=1.0), budget=budget, max_attempts=3, backoff_base=0.0
        ) as (backend, app):
            for _ in range(n):
                with pytest.raises(UpstreamStatusError) as info:
                    await read_all(backend)
                assert info.value.upstream_status == 503
                assert "not retried: the retry budget is spent" in info.value.message
                assert isinstance(info.value.__cause__, UpstreamStatusError)
            attempts = n + 1 + int(0.2 * n)
            stats = await settled(backend, app, requests=attempts)
            assert (stats.faults, stats.completed) == (attempts, 0)
            s = backend.statistics()
            assert (s.requests, s.attempts, s.retries) == (n, attempts, attempts - n)
            assert s.errors == {"upstream_status": n}
            b = budget.statistics()
            assert (b.requests_in_window, b.retries_in_window, b.refused) == (n, 2, n)


# -- no retry after the first token ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "tokens", "error", "code"),
    [
        ("drop-after=3", 3, UpstreamConnectError, "upstream_unavailable"),
        ("error-after=3", 3, UpstreamStreamError, "upstream_stream_error"),
        ("error-after=0", 0, UpstreamStreamError, "upstream_stream_error"),
    ],
)
@BELOW
async def test_a_stream_that_fails_after_it_began_is_not_retried(
    fault: str, tokens: int, error: type[UpstreamError], code: str, below: bool
) -> None:
    with trio.fail_after(10):
        async with mock_upstream([fault], max_attempts=3, read_below_httpx=below) as (backend, app):
            deltas: list[str] = []
            raised = await read_until_error(backend, error, deltas)
            assert type(raised) is error
            assert "".join(deltas) == " ".join(WORDS[i % 3] for i in range(tokens))
            if fault.startswith("drop"):
                assert "mid-stream" in raised.message
            stats = await settled(backend, app, requests=1)
            assert (stats.faults, stats.tokens, stats.completed, stats.cancelled) == (1, tokens, 0, 0)
            s = backend.statistics()
            assert (s.attempts, s.retries, s.errors) == (1, 0, {code: 1})


# -- cancellation and capacity -----------------------------------------------------------------


@BELOW
@pytest.mark.parametrize("how", ["break", "cancel"])
async def test_a_caller_leaving_mid_stream_cancels_the_upstream_and_drops_the_connection(
    how: str, below: bool
) -> None:
    with trio.fail_after(10):
        async with mock_upstream(server=server_config(SLOW), read_below_httpx=below) as (
            backend,
            app,
        ):
            got = 0
            if how == "break":
                async with backend.stream_chat(Q) as chunks:
                    async for _ in chunks:
                        got += 1
                        if got == 3:
                            break
            else:
                # Cancelled from outside mid-stream, after 3 chunks (a fixed timeout would
                # race the first token on a loaded machine).
                with trio.CancelScope() as scope:
                    async with backend.stream_chat(Q) as chunks:
                        async for _ in chunks:
                            got += 1
                            if got == 3:
                                scope.cancel()
                assert scope.cancelled_caught  # the Cancelled went through, not swallowed
            assert 0 < got < SLOW.tokens
            assert backend.statistics().in_flight == 0  # released synchronously on the way out
            stats = await settled(backend, app, cancelled=1)  # the server saw it within 1 s
            assert (stats.requests, stats.completed) == (1, 0)
            # The abandoned connection is closed, not handed back to the pool mid-stream:
            # the next request succeeds, on a new connection.
            got_next = await read_all(backend, ChatRequest.from_question(" ".join(WORDS), max_tokens=3))
            assert text(got_next) == "alpha beta gamma"
            stats = await settled(backend, app, completed=1, cancelled=1)
            assert stats.requests == 2
            assert app.peers[0] != app.peers[1]
            s = backend.statistics()
            assert (s.requests, s.attempts, s.retries, s.errors) == (2, 2, 0, {})


async def test_past_the_server_capacity_429_is_retried_per_retry_after() -> None:
    # One slot and one queue place: A runs, B queues, C is refused 429 (Retry-After 0.3 s)
    # and comes back after that wait.
    server = server_config(max_concurrency=1, max_queued=1, max_queue_wait=5.0, retry_after=0.3)
    with trio.fail_after(10):
        async with mock_upstream(server=server, backoff_base=0.0) as (backend, app):
            a_streaming = trio.Event()
            release_a = trio.Event()
            replies: dict[str, str] = {}
            took: dict[str, float] = {}

            async def a() -> None:
                async with backend.stream_chat(Q) as chunks:
                    first = await chunks.__anext__()
                    a_streaming.set()
                    await release_a.wait()
                    replies["a"] = first.delta + text([c async for c in chunks])

            async def other(name: str) -> None:
                start = trio.current_time()
                replies[name] = text(await read_all(backend))
                took[name] = trio.current_time() - start

            async with trio.open_nursery() as nursery:
                nursery.start_soon(a)
                await a_streaming.wait()
                nursery.start_soon(other, "b")
                await app.wait_until(lambda s: s.queued == 1)
                nursery.start_soon(other, "c")
                await app.wait_until(lambda s: s.rejected == 1)
                release_a.set()
            assert replies == {"a": REPLY, "b": REPLY, "c": REPLY}
            assert took["c"] >= 0.3  # C was sent again only after its Retry-After wait
            stats = await settled(backend, app, completed=3)
            assert (stats.requests, stats.rejected, stats.peak_active, stats.cancelled) == (4, 1, 1, 0)
            s = backend.statistics()
            assert (s.requests, s.attempts, s.retries, s.errors) == (3, 4, 1, {})
