"""Streamed endpoints driven over ASGI memory channels, on the autojump clock.

Every cancellation or failure test ends by checking that the admission lease,
the queue, the upstream call and the drain registry are all back to zero.
"""

from __future__ import annotations

import logging
import math

import orjson
import pytest
import trio
import trio.testing

from tests._asgi import Exchange, data, request
from tests._fakes import FakeLLM, assert_released, make_gateway
from trio_agent.config import MockLLMConfig, ServerConfig
from trio_agent.server import create_app
from trio_agent.sse import ServerSentEvent

Q = {"question": "hello"}
TERMINAL = ("done", "error")


def kinds(events: list[ServerSentEvent]) -> list[str]:
    return [e.event for e in events]


def assert_one_terminal(events: list[ServerSentEvent]) -> None:
    terminal = [e for e in events if e.event in TERMINAL]
    assert len(terminal) == 1 and events[-1] is terminal[0]


async def test_stream_events_ids_headers_and_timings(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.1, itl=0.01, tokens=3))
    r = await request(gw, "POST", "/chat/stream", json=Q)
    assert r.status == 200
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-accel-buffering"] == "no"
    assert len(r.headers["x-request-id"]) == 32
    assert kinds(r.events) == ["thinking", "token", "token", "token", "done"]
    assert [e.id for e in r.events] == ["1", "2", "3", "4", "5"]
    for e in r.events:
        assert data(e)["type"] == e.event
    assert "".join(data(e)["content"] for e in r.events if e.event == "token") == "t0 t1 t2 "
    done = data(r.events[-1])
    assert done["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert done["timings"] == {"queued_ms": 0.0, "ttft_ms": 100.0, "total_ms": 120.0}
    assert done["finish_reason"] == "stop"
    assert data(r.events[0])["request_id"] == r.headers["x-request-id"]
    assert_released(gw, llm)
    assert llm.finished == 1


async def test_thinking_is_sent_before_the_upstream_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=30.0, itl=0.0, tokens=1), keepalive_interval=100.0)
    async with trio.open_nursery() as n:
        ex = Exchange(gw, "POST", "/chat/stream", json=Q).start(n)
        first = await ex.next_event()
        assert first is not None and first.event == "thinking"
        assert trio.current_time() == 0.0
        assert llm.tokens == 0
        rest = await ex.events()
    assert kinds(rest) == ["token", "done"]
    assert_released(gw, llm)


async def test_keepalive_comments_at_exact_idle_intervals(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=40.0, itl=0.0, tokens=1), keepalive_interval=15.0)
    seen: list[tuple[float, bytes]] = []
    async with trio.open_nursery() as n:
        ex = Exchange(gw, "POST", "/chat/stream", json=Q).start(n)
        while (chunk := await ex.read_chunk()) is not None:
            seen.append((trio.current_time(), chunk))
    keepalives = [t for t, c in seen if c == b": keepalive\n\n"]
    assert keepalives == [15.0, 30.0]
    assert_released(gw, llm)


async def test_a_slow_reader_gets_coalesced_token_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.0, itl=0.001, tokens=40))
    tokens: list[str] = []
    async with trio.open_nursery() as n:
        ex = Exchange(gw, "POST", "/chat/stream", json=Q, buffer=0).start(n)
        while (ev := await ex.next_event()) is not None:
            if ev.event == "token":
                tokens.append(data(ev)["content"])
            await trio.sleep(0.01)  # ten times slower than the upstream
    assert "".join(tokens) == "".join(f"t{i} " for i in range(40))
    assert 1 < len(tokens) < 40
    assert gw.metrics.tokens_streamed == 40
    assert gw.metrics.token_events == len(tokens)
    assert_released(gw, llm)


async def test_disconnect_cancels_the_upstream_and_frees_the_slot_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.1, itl=1.0, tokens=100))
    async with trio.open_nursery() as n:
        ex = Exchange(gw, "POST", "/chat/stream", json=Q).start(n)
        for _ in range(3):  # thinking + two tokens
            await ex.next_event()
        assert gw.limits.statistics().in_flight == 1
        at = trio.current_time()
        ex.disconnect()
        await ex.finished.wait()
        assert trio.current_time() == at
    assert llm.cancelled == 1
    assert gw.metrics.disconnects == 1
    assert not any(e.event in TERMINAL for e in await ex.events())
    assert_released(gw, llm)


@pytest.mark.parametrize("ending", ["done", "disconnect"])
async def test_the_slot_is_given_back_only_after_the_upstream_call_closed(
    autojump_clock: trio.testing.MockClock, ending: str
) -> None:
    # An upstream response takes a moment to close (shielded, as OpenAIBackend closes it):
    # however the request ends, the lease outlives that close, so admission never lets more
    # upstream calls run than max_concurrency.
    from contextlib import asynccontextmanager

    from tests._fakes import FakeLLM

    held_at_close: list[int] = []

    class SlowToClose(FakeLLM):
        @asynccontextmanager
        async def stream_chat(self, request):  # type: ignore[no-untyped-def]
            try:
                async with super().stream_chat(request) as chunks:
                    yield chunks
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(0.05)
                held_at_close.append(gw.limits.statistics().in_flight)

    from trio_agent.config import ServerConfig
    from trio_agent.server import create_app

    llm = SlowToClose(MockLLMConfig(ttft=0.1, itl=0.01 if ending == "done" else 1.0, tokens=3))
    gw = create_app(ServerConfig(), backend=llm)
    async with trio.open_nursery() as n:
        ex = Exchange(gw, "POST", "/chat/stream", json=Q).start(n)
        if ending == "disconnect":
            await ex.next_event()  # thinking
            await ex.next_event()  # the first token
            ex.disconnect()
        await ex.finished.wait()
    assert held_at_close == [1]
    assert_released(gw, llm)


async def test_a_failed_write_ends_the_request_like_a_disconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The fallback when no http.disconnect arrives: the first failing write ends everything."""
    gw, llm = make_gateway(MockLLMConfig(ttft=0.1, itl=1.0, tokens=100))
    async with trio.open_nursery() as n:
        ex = Exchange(gw, "POST", "/chat/stream", json=Q, fail_sends_after=4).start(n)
        await ex.finished.wait()
        assert trio.current_time() == pytest.approx(2.1)
    assert llm.cancelled == 1 and gw.metrics.disconnects == 1
    assert_released(gw, llm)


async def test_request_deadline_ends_the_stream_with_a_timeout_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = make_gateway(
        MockLLMConfig(ttft=0.5, itl=0.1, tokens=10, stall_after_tokens=2),
        request_timeout=5.0,
        keepalive_interval=100.0,
    )
    async with trio.open_nursery() as n:
        ex = Exchange(gw, "POST", "/chat/stream", json=Q).start(n)
        events = await ex.events()
        assert trio.current_time() == 5.0
    assert kinds(events) == ["thinking", "token", "token", "error"]
    err = data(events[-1])
    assert err["code"] == "timeout" and err["retryable"] is True
    assert err["request_id"] == ex.headers["x-request-id"]
    assert llm.cancelled == 1 and gw.metrics.timeouts == 1
    assert_released(gw, llm)


async def test_deadline_while_queued_is_a_504_without_any_sse_byte(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = make_gateway(
        MockLLMConfig(ttft=100.0, tokens=1),
        max_concurrency=1,
        max_queue_wait=60.0,
        request_timeout=3.0,
        keepalive_interval=1000.0,
    )
    async with trio.open_nursery() as n:
        first = Exchange(gw, "POST", "/chat/stream", json=Q).start(n)
        await first.next_event()
        r = await request(gw, "POST", "/chat/stream", json=Q)
        assert trio.current_time() == 3.0
        assert r.status == 504
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"]["code"] == "timeout"
        first.disconnect()
    assert_released(gw, llm)


async def test_overload_is_503_with_retry_after_while_admitted_streams_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=1.0, itl=0.1, tokens=3), max_concurrency=1, max_queued=0)
    async with trio.open_nursery() as n:
        first = Exchange(gw, "POST", "/chat/stream", json=Q).start(n)
        await first.next_event()
        r = await request(gw, "POST", "/chat/stream", json=Q)
        assert r.status == 503
        assert r.headers["content-type"] == "application/json"
        assert int(r.headers["retry-after"]) >= 1
        body = r.json()["error"]
        assert body["code"] == "overloaded" and body["retryable"] is True
        assert body["request_id"] == r.headers["x-request-id"]
        events = await first.events()
    assert events[-1].event == "done"
    assert llm.started == 1
    assert gw.limits.statistics().shed_full == 1
    assert_released(gw, llm)


async def test_queued_stream_starts_when_a_slot_frees(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=1.0, itl=0.0, tokens=1), max_concurrency=1)
    async with trio.open_nursery() as n:
        first = Exchange(gw, "POST", "/chat/stream", json=Q).start(n)
        head = await first.next_event()
        second = Exchange(gw, "POST", "/chat/stream", json=Q).start(n)
        a, b = [head, *await first.events()], await second.events()
    assert kinds(a) == kinds(b) == ["thinking", "token", "done"]
    assert data(b[0])["queued_ms"] == 1000.0
    assert data(b[-1])["timings"]["queued_ms"] == 1000.0
    assert_released(gw, llm)


@pytest.mark.parametrize(
    ("mock", "expected"),
    [
        (MockLLMConfig(ttft=0.1, tokens=3, fail_before_first=True), ["thinking", "error"]),
        (MockLLMConfig(ttft=0.1, itl=0.1, tokens=5, fail_after_tokens=2), ["thinking", "token", "token", "error"]),
    ],
)
async def test_upstream_failure_is_one_error_event(
    autojump_clock: trio.testing.MockClock, mock: MockLLMConfig, expected: list[str]
) -> None:
    gw, llm = make_gateway(mock)
    r = await request(gw, "POST", "/chat/stream", json=Q)
    assert kinds(r.events) == expected
    err = data(r.events[-1])
    assert err["code"] == "upstream_status" and err["retryable"] is True
    assert gw.metrics.upstream_errors == {"upstream_status": 1}
    assert llm.failed == 1
    assert_released(gw, llm)


async def test_stalled_writes_end_the_stream_and_cancel_the_upstream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.1, itl=0.1, tokens=1000), write_timeout=2.0)
    async with trio.open_nursery() as n:
        ex = Exchange(gw, "POST", "/chat/stream", json=Q, buffer=0).start(n)
        await ex.next_event()  # thinking; then stop reading
        await ex.finished.wait()
        assert trio.current_time() == pytest.approx(2.1)
    assert llm.cancelled == 1
    assert gw.metrics.write_stalls == 1
    assert_released(gw, llm)


async def test_drain_grace_then_shutting_down_event(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(
        MockLLMConfig(ttft=0.1, itl=1.0, tokens=100), max_concurrency=1, keepalive_interval=100.0
    )
    async with trio.open_nursery() as n:
        streaming = Exchange(gw, "POST", "/chat/stream", json=Q).start(n)
        await streaming.next_event()
        queued = Exchange(gw, "POST", "/chat/stream", json=Q).start(n)
        await trio.testing.wait_all_tasks_blocked()
        assert gw.limits.statistics().queued == 1
        n.start_soon(gw.drain.drain, 5.0)
        await trio.testing.wait_all_tasks_blocked()
        # the queued request is refused at once, before any SSE byte
        assert await queued.response_start() == 503
        await queued.read_all()
        assert queued.json()["error"]["code"] == "shutting_down"
        late = await request(gw, "POST", "/chat/stream", json=Q)
        assert late.status == 503 and late.json()["error"]["code"] == "shutting_down"
        events = await streaming.events()
        assert trio.current_time() == 5.0
    assert events[-1].event == "error" and data(events[-1])["code"] == "shutting_down"
    assert_one_terminal(events)
    assert gw.metrics.drain_cancelled == 1
    assert_released(gw, llm)


async def test_drain_lets_short_streams_finish(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.1, itl=0.1, tokens=5))
    async with trio.open_nursery() as n:
        ex = Exchange(gw, "POST", "/chat/stream", json=Q).start(n)
        await ex.next_event()
        cancelled = await gw.drain.drain(10.0)
        events = await ex.events()
    assert cancelled == 0
    assert events[-1].event == "done"
    assert trio.current_time() < 1.0
    assert_released(gw, llm)


async def test_validation_errors_come_before_the_stream(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway()
    r = await request(gw, "POST", "/chat/stream", json={"question": "x", "max_tokens": 0})
    assert r.status == 422 and r.json()["error"]["field"] == "max_tokens"
    r = await request(gw, "POST", "/chat/stream", body=b"{oops", headers={"content-type": "application/json"})
    assert r.status == 400
    assert llm.started == 0 and gw.limits.statistics().admitted == 0


async def test_body_read_disconnect_is_quiet(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway()
    async with trio.open_nursery() as n:
        ex = Exchange(
            gw, "POST", "/chat/stream", chunks=[b'{"quest'], hold_body=True,
            headers={"content-type": "application/json"},
        ).start(n)
        await trio.testing.wait_all_tasks_blocked()
        ex.disconnect()
        await ex.finished.wait()
    assert ex.status is None
    assert_released(gw, llm)


# -- OpenAI wire format ------------------------------------------------------------------


def openai_frames(body: bytes) -> list[str]:
    return [line[len("data: ") :] for line in body.decode().split("\n") if line.startswith("data: ")]


async def test_openai_stream_relays_each_chunk_then_done(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.1, itl=0.01, tokens=2))
    r = await request(
        gw,
        "POST",
        "/v1/chat/completions",
        json={
            "model": "m1",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "top_p": 1,
        },
    )
    assert r.status == 200
    frames = openai_frames(r.body)
    assert frames[-1] == "[DONE]"
    chunks = [orjson.loads(f) for f in frames[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {"m1"}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == "t0 t1 "
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert_released(gw, llm)


async def test_openai_stream_failure_before_the_first_chunk_is_a_json_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.1, tokens=3, fail_before_first=True))
    r = await request(
        gw, "POST", "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
    )
    assert r.status == 502 and r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == "upstream_status" and err["type"] == "server_error"
    assert_released(gw, llm)


async def test_openai_stream_failure_mid_stream_is_one_error_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.1, tokens=3, fail_after_tokens=1))
    r = await request(
        gw, "POST", "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
    )
    frames = openai_frames(r.body)
    assert r.status == 200 and "[DONE]" not in frames
    assert orjson.loads(frames[0])["choices"][0]["delta"] == {"content": "t0 "}
    err = orjson.loads(frames[-1])["error"]
    assert err["code"] == "upstream_status" and err["type"] == "server_error"
    assert_released(gw, llm)


async def test_openai_overload_uses_openai_error_shape(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=10.0, tokens=1), max_concurrency=1, max_queued=0)
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with trio.open_nursery() as n:
        first = Exchange(gw, "POST", "/v1/chat/completions", json=body).start(n)
        await first.read_chunk()
        r = await request(gw, "POST", "/v1/chat/completions", json=body)
        first.disconnect()
    assert r.status == 503 and "retry-after" in r.headers
    err = r.json()["error"]
    assert err["code"] == "overloaded" and err["type"] == "server_error" and err["message"]
    assert_released(gw, llm)


# -- batches over SSE ----------------------------------------------------------------------


async def test_batch_stream_one_event_per_item_as_it_completes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.1, itl=0.1, tokens=10))
    r = await request(
        gw,
        "POST",
        "/chat/batch",
        json={"requests": [{"question": "a", "max_tokens": 5}, {"question": "b", "max_tokens": 1}]},
        headers={"accept": "text/event-stream"},
    )
    assert r.status == 200
    assert kinds(r.events) == ["thinking", "result", "result", "done"]
    first, second = data(r.events[1]), data(r.events[2])
    assert (first["index"], first["status"], first["content"]) == (1, "ok", "t0 ")
    assert (second["index"], second["status"]) == (0, "ok")
    assert data(r.events[-1]) == {"type": "done", "items": 2, "ok": 2, "error": 0, "timeout": 0}
    assert_released(gw, llm)


async def test_batch_never_bypasses_the_global_cap(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(
        MockLLMConfig(ttft=0.1, itl=0.0, tokens=1), max_concurrency=2, batch_concurrency=8
    )
    r = await request(
        gw, "POST", "/chat/batch", json={"questions": ["q"] * 6}, headers={"accept": "text/event-stream"}
    )
    assert [data(e)["status"] for e in r.events if e.event == "result"] == ["ok"] * 6
    assert llm.max_active == 2
    assert gw.limits.statistics().admitted == 6
    assert_released(gw, llm)


async def test_batch_items_past_the_queue_are_explicit_errors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = make_gateway(
        MockLLMConfig(ttft=0.1, itl=0.0, tokens=1), max_concurrency=1, max_queued=0, batch_concurrency=3
    )
    r = await request(
        gw, "POST", "/chat/batch", json={"questions": ["q"] * 3}, headers={"accept": "text/event-stream"}
    )
    results = sorted((data(e) for e in r.events if e.event == "result"), key=lambda d: d["index"])
    statuses = [d["status"] for d in results]
    assert statuses.count("ok") == 1 and statuses.count("error") == 2
    assert {d["error"]["code"] for d in results if d["status"] == "error"} == {"overloaded"}
    assert r.events[-1].event == "done"
    assert_released(gw, llm)


async def test_batch_deadline_reports_unfinished_items_as_timeouts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = make_gateway(
        MockLLMConfig(ttft=0.1, itl=1.0, tokens=100), request_timeout=4.0, keepalive_interval=100.0
    )
    r = await request(
        gw,
        "POST",
        "/chat/batch",
        json={"requests": [{"question": "a", "max_tokens": 2}, {"question": "b"}]},
        headers={"accept": "text/event-stream"},
    )
    assert trio.current_time() == 4.0
    results = [data(e) for e in r.events if e.event == "result"]
    assert [(d["index"], d["status"]) for d in results] == [(0, "ok"), (1, "timeout")]
    assert results[1]["error"]["code"] == "timeout"
    assert data(r.events[-1])["timeout"] == 1
    assert_one_terminal(r.events)
    assert_released(gw, llm)


async def test_batch_disconnect_cancels_every_item(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.1, itl=1.0, tokens=100))
    async with trio.open_nursery() as n:
        ex = Exchange(
            gw, "POST", "/chat/batch", json={"questions": ["a", "b", "c"]},
            headers={"accept": "text/event-stream"},
        ).start(n)
        await ex.next_event()
        await trio.sleep(1.0)
        assert llm.active == 3
        ex.disconnect()
        await ex.finished.wait()
    assert llm.cancelled == 3
    assert_released(gw, llm)


def test_terminal_helper_rejects_two_terminals() -> None:
    ev = [ServerSentEvent(data="{}", event="done"), ServerSentEvent(data="{}", event="error")]
    with pytest.raises(AssertionError):
        assert_one_terminal(ev)


async def test_an_unexpected_backend_bug_is_an_internal_error_event(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    llm = FakeLLM(
        MockLLMConfig(ttft=0.1, itl=0.1, tokens=3), bug_after_first=RuntimeError("secret internals")
    )
    gw = create_app(ServerConfig(), backend=llm)
    caplog.set_level(logging.CRITICAL)
    r = await request(gw, "POST", "/chat/stream", json=Q)
    assert kinds(r.events) == ["thinking", "token", "error"]
    err = data(r.events[-1])
    assert err["code"] == "internal_error" and "secret" not in r.events[-1].data
    assert_released(gw, llm)


async def test_many_requests_with_random_endings_leave_nothing_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Overload, queueing, deadlines, disconnects and slow readers at once: capacity returns to zero."""
    import random

    rng = random.Random(7)
    gw, llm = make_gateway(
        MockLLMConfig(ttft=0.2, itl=0.05, tokens=40),
        max_concurrency=5,
        max_queued=10,
        max_queue_wait=1.0,
        request_timeout=2.5,
        write_timeout=0.5,
        keepalive_interval=0.3,
    )
    statuses: list[int] = []
    terminals: list[str | None] = []  # of clients that stayed and kept up

    async def client(i: int) -> None:
        await trio.sleep(rng.random() * 3)
        leave_after = rng.choice([None, None, 0.1, 0.5, 1.5])
        slow = rng.random() < 0.2
        async with trio.open_nursery() as n:
            ex = Exchange(gw, "POST", "/chat/stream", json=Q, buffer=0 if slow else math.inf).start(n)
            if leave_after is not None:
                n.start_soon(lambda: _leave_later(ex, leave_after))
            try:
                status = await ex.response_start()
            except trio.EndOfChannel:  # left while queued: no response at all
                status = 0
            statuses.append(status)
            last = None
            while status and (ev := await ex.next_event()) is not None:
                last = ev.event
                if slow:
                    await trio.sleep(1.0)
            if status == 200 and leave_after is None and not slow:
                terminals.append(last)
            n.cancel_scope.cancel()

    async with trio.open_nursery() as n:
        for i in range(120):
            n.start_soon(client, i)
    assert set(statuses) <= {0, 200, 503, 504}
    assert 503 in statuses and 200 in statuses
    assert terminals and set(terminals) <= {"done", "error"}
    stats = gw.limits.statistics()
    assert stats.admitted == llm.started
    assert llm.finished + llm.cancelled + llm.failed == llm.started
    assert_released(gw, llm)


async def _leave_later(ex: Exchange, delay: float) -> None:
    await trio.sleep(delay)
    ex.disconnect()


async def test_tokens_that_are_already_there_go_out_as_one_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # itl 0: every token is due at once, as when the gateway falls behind its upstream.
    from trio_agent import ServerConfig
    from trio_agent.llm import MockLLM
    from trio_agent.server import create_app

    def run(itl: float) -> MockLLM:
        return MockLLM(ttft=0.05, itl=itl, tokens=40, seed=2, pacing_resolution=0)

    texts = {}
    for itl in (0.0, 0.01):
        llm = run(itl)
        gw = create_app(ServerConfig(), backend=llm)
        r = await request(gw, "POST", "/chat/stream", json=Q)
        tokens = [orjson.loads(e.data)["content"] for e in r.events if e.event == "token"]
        done = orjson.loads(r.events[-1].data)
        assert done["usage"]["completion_tokens"] == 40
        assert gw.metrics.tokens_streamed == 40
        texts[itl] = "".join(tokens)
        if itl == 0.0:
            assert len(tokens) <= 3  # the first token, then what was ready, 64 at most per event
        else:
            assert len(tokens) == 40  # a gateway that keeps up sends each token at once
        assert llm.statistics().active == 0 and gw.limits.statistics().in_flight == 0
    assert texts[0.0] == texts[0.01] and len(texts[0.0].split()) == 40


async def test_a_lagging_scheduler_gets_new_requests_a_503_and_streams_keep_going(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from trio_agent import LoopLag, ServerConfig
    from trio_agent.llm import MockLLM
    from trio_agent.server import create_app

    lag = LoopLag(interval=0.01)
    # 5 s long: the stream is still held while the lag is made and the refusals checked.
    llm = MockLLM(ttft=0.05, itl=0.05, tokens=100, seed=1, pacing_resolution=0)
    # 10 slots: the one stream held is the tenth below which the lag rule stands aside.
    gw = create_app(ServerConfig(max_loop_lag=0.1, max_concurrency=10), backend=llm, loop_lag=lag)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lag.run)
        ex = Exchange(gw, "POST", "/chat/stream", json=Q).start(nursery)
        await ex.response_start()
        assert ex.status == 200
        for _ in range(6):  # every pass now 'takes' 0.3 s of CPU
            autojump_clock.jump(0.3)
            await trio.lowlevel.checkpoint()
        assert lag.overloaded(0.1)
        for path, body in (("/chat/stream", Q), ("/chat", Q)):
            r = await request(gw, "POST", path, json=body)
            assert r.status == 503, (path, r.body)
            assert r.json()["error"]["code"] == "overloaded"
            assert "behind" in r.json()["error"]["message"]
            assert r.headers["retry-after"] == "1"
        oa = await request(
            gw, "POST", "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        )  # fmt: skip
        assert oa.status == 503 and oa.json()["error"]["code"] == "overloaded"
        # The stream admitted before the lag is not touched: it ends with done.
        events = await ex.events()
        assert events[-1].event == "done"
        assert gw.limits.statistics().shed_loop_lag == 3
        # Caught up again: new requests are admitted.
        await trio.sleep(1.0)
        r = await request(gw, "POST", "/chat/stream", json=Q)
        assert r.status == 200 and r.events[-1].event == "done"
        nursery.cancel_scope.cancel()
    assert gw.limits.statistics().in_flight == 0 and llm.statistics().active == 0


class _Passes(trio.abc.Instrument):
    """Counts the scheduler's passes (one I/O check each)."""

    def __init__(self) -> None:
        self.count = 0

    def after_io_wait(self, timeout: float) -> None:
        self.count += 1


class _SocketLikeExchange(Exchange):
    """An exchange whose sends never yield, as a write to a socket with room does not; it notes
    the pass (counted from the app's start) in which each kind of event was first sent."""

    def __init__(self, passes: _Passes, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.passes = passes
        self.start_pass = 0
        self.sent_in: dict[str, int] = {}

    async def run(self) -> None:
        self.start_pass = self.passes.count
        await super().run()

    async def _send(self, message: dict[str, object]) -> None:
        body = message.get("body")
        if isinstance(body, bytes):
            for line in body.split(b"\n"):
                if line.startswith(b"event: "):
                    kind = line[7:].decode()
                    self.sent_in.setdefault(kind, self.passes.count - self.start_pass)
        self._tx.send_nowait(message)
        await trio.lowlevel.checkpoint_if_cancelled()


async def test_a_first_token_due_at_once_is_written_one_pass_after_the_head(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Under load every scheduler pass is long (each busy stream takes its turn in it), so each
    # pass between a request and its first token is time to first token (docs/decisions/015):
    # the request's task sends the head and takes the first token itself; the writer task
    # started beside it sends what this harness cannot write directly, one pass later.
    from trio_agent.llm import MockLLM

    llm = MockLLM(ttft=0.0, itl=0.01, tokens=4, seed=1, pacing_resolution=0)
    gw = create_app(ServerConfig(max_loop_lag=0), backend=llm)
    passes = _Passes()
    trio.lowlevel.add_instrument(passes)
    try:
        async with trio.open_nursery() as nursery:
            ex = _SocketLikeExchange(passes, gw, "POST", "/chat/stream", json=Q)
            ex.start(nursery)
            events = await ex.events()
    finally:
        trio.lowlevel.remove_instrument(passes)
    assert kinds(events) == ["thinking", "token", "token", "token", "token", "done"]
    assert ex.sent_in["thinking"] == 0
    assert ex.sent_in["token"] == 1
    stats = gw.limits.statistics()
    assert (stats.in_flight, stats.queued, llm.statistics().active, gw.drain.active) == (0, 0, 0, 0)
