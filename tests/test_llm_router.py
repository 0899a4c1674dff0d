"""The upstream router on the autojump clock, over scripted fake upstreams: picking, failover,
ejection, probes, fast failure, model routing, per-upstream caps, statistics back to zero.

The fakes are tests/_fake_upstreams.py; times asserted are exact virtual times.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests._fake_upstreams import FakeUpstream, refused, router
from trio_agent.config import UpstreamConfig
from trio_agent.errors import (
    ModelNotFoundError,
    UpstreamConnectError,
    UpstreamFirstTokenTimeoutError,
    UpstreamStatusError,
    UpstreamStreamError,
    UpstreamUnavailableError,
)
from trio_agent.llm import (
    ChatBackend,
    ChatRequest,
    RouterBackend,
    upstream_unavailable,
)

REQ = ChatRequest.from_question("hi")


async def stream(backend: RouterBackend, request: ChatRequest = REQ) -> str:
    async with backend.stream_chat(request) as chunks:
        return "".join([c.delta async for c in chunks])


def states(backend: RouterBackend) -> list[str]:
    return [u.state for u in backend.statistics().upstreams]


def assert_idle(backend: RouterBackend) -> None:
    s = backend.statistics()
    assert s.in_flight == 0 and [u.in_flight for u in s.upstreams] == [0] * len(s.upstreams)


async def test_the_router_is_a_chat_backend() -> None:
    assert isinstance(router(FakeUpstream("a")), ChatBackend)


async def test_sequential_calls_spread_in_proportion_to_the_weights(autojump_clock: trio.testing.MockClock) -> None:
    a, b = FakeUpstream("a"), FakeUpstream("b")
    r = router(a, b, weights=[2, 1])
    texts = [await stream(r) for _ in range(6)]
    assert [t[0] for t in texts] == ["a", "b", "a", "a", "b", "a"]  # smooth weighted round-robin
    assert (len(a.calls), len(b.calls)) == (4, 2)
    assert_idle(r)


async def test_a_call_goes_to_the_upstream_with_the_fewest_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    a, b = FakeUpstream("a", ttft=1.0), FakeUpstream("b", ttft=1.0)
    r = router(a, b)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream, r)
        nursery.start_soon(stream, r)
        await trio.testing.wait_all_tasks_blocked()
        assert [u.in_flight for u in r.statistics().upstreams] == [1, 1]
        nursery.start_soon(stream, r)
        await trio.testing.wait_all_tasks_blocked()
        # 1/1 each, so the tie-break; a fourth goes to the one with fewer.
        in_flight = [u.in_flight for u in r.statistics().upstreams]
        assert sorted(in_flight) == [1, 2]
        nursery.start_soon(stream, r)
        await trio.testing.wait_all_tasks_blocked()
        assert [u.in_flight for u in r.statistics().upstreams] == [2, 2]
    assert_idle(r)


async def test_a_failure_before_the_first_byte_fails_over_at_once(autojump_clock: trio.testing.MockClock) -> None:
    a, b = FakeUpstream("a", script=[refused()]), FakeUpstream("b")
    r = router(a, b)
    t0 = trio.current_time()
    assert (await stream(r)).startswith("b0")
    assert (a.calls, b.calls) == ([t0], [t0])  # no backoff between the two attempts
    s = r.statistics()
    assert (s.requests, s.attempts, s.retries, s.failovers) == (1, 2, 1, 1)
    assert s.upstreams[0].errors == {"upstream_unavailable": 1}
    assert s.upstreams[0].consecutive_failures == 1 and states(r) == ["up", "up"]
    assert_idle(r)


async def test_ejection_after_consecutive_failures_then_a_probe_brings_it_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = FakeUpstream("a"), FakeUpstream("b")
    r = router(a, b, eject_after_failures=3, eject_delay=5.0, eject_max_delay=60.0)
    a.down = UpstreamStatusError("upstream answered 503", upstream_status=503)
    t0 = trio.current_time()
    for _ in range(6):  # a takes every other call first, and fails over to b
        assert (await stream(r)).startswith("b0")
    assert len(a.calls) == 3 and states(r) == ["ejected", "up"]
    ejected_at = a.calls[-1]
    s = r.statistics().upstreams[0]
    assert (s.ejections, s.ejected_for) == (1, pytest.approx(5.0 - (trio.current_time() - ejected_at)))
    # While ejected, a takes nothing.
    for _ in range(3):
        await stream(r)
    assert len(a.calls) == 3
    # Due at ejected_at + 5: the next call is its probe. It fails: ejected for 10 s now.
    await trio.sleep_until(ejected_at + 5.0)
    assert (await stream(r)).startswith("b0")
    assert a.calls[-1] == ejected_at + 5.0 and states(r) == ["ejected", "up"]
    assert r.statistics().upstreams[0].ejections == 2
    await trio.sleep_until(ejected_at + 5.0 + 9.8)  # the call ends at +14.93, before +15
    await stream(r)
    assert len(a.calls) == 4  # not yet due
    # Back up: the probe at +15 s answers and a takes traffic again.
    a.down = None
    await trio.sleep_until(ejected_at + 15.0)
    assert (await stream(r)).startswith("a0")
    assert a.calls[-1] == ejected_at + 15.0 and states(r) == ["up", "up"]
    assert r.statistics().upstreams[0].errors == {"upstream_status": 4}
    assert t0 <= ejected_at
    assert_idle(r)


async def test_only_one_probe_at_a_time(autojump_clock: trio.testing.MockClock) -> None:
    a, b = FakeUpstream("a", ttft=1.0), FakeUpstream("b", ttft=1.0)
    r = router(a, b, eject_after_failures=1, eject_delay=5.0)
    a.script.append(refused())
    await stream(r)  # a refuses: ejected at t=0 for 5 s; the call went to b
    assert states(r) == ["ejected", "up"]
    await trio.sleep(5.0)
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(stream, r)
        await trio.testing.wait_all_tasks_blocked()
        assert states(r) == ["probing", "up"]
        assert [u.in_flight for u in r.statistics().upstreams] == [1, 2]
    assert states(r) == ["up", "up"]
    assert_idle(r)


async def test_an_abandoned_probe_is_due_again_at_once(autojump_clock: trio.testing.MockClock) -> None:
    a, b = FakeUpstream("a", ttft=1.0), FakeUpstream("b")
    r = router(a, b, eject_after_failures=1, eject_delay=5.0)
    a.script.append(refused())
    await stream(r)
    await trio.sleep(5.0)
    with trio.move_on_after(0.5):  # the client leaves before the probe's first byte
        await stream(r)
    assert states(r) == ["ejected", "up"] and r.statistics().upstreams[0].ejected_for == 0
    assert_idle(r)
    assert (await stream(r)).startswith("a0")  # the next call probes, and a is back
    assert states(r) == ["up", "up"]


async def test_every_upstream_ejected_fails_fast_with_retry_after(autojump_clock: trio.testing.MockClock) -> None:
    a, b = FakeUpstream("a"), FakeUpstream("b")
    r = router(a, b, eject_after_failures=1, eject_delay=5.0, max_attempts=2)
    a.down = b.down = refused()
    with pytest.raises(UpstreamConnectError):  # the call that finds both down sees the real failure
        await stream(r)
    assert states(r) == ["ejected", "ejected"]
    await trio.sleep(2.0)
    t0 = trio.current_time()
    for call in (stream(r), r.complete_chat(REQ)):
        with pytest.raises(UpstreamUnavailableError) as exc:
            await call
        assert exc.value.code == "upstream_unavailable"
        assert exc.value.retry_after == pytest.approx(3.0)
    assert trio.current_time() == t0  # no attempt, no wait
    assert (len(a.calls), len(b.calls)) == (1, 1)
    err = upstream_unavailable(r)
    assert err is not None and err.retry_after == pytest.approx(3.0)
    assert r.statistics().fast_failures == 2
    await trio.sleep(3.0)
    assert upstream_unavailable(r) is None  # due for a probe
    assert_idle(r)


async def test_backoff_grows_and_is_capped_and_forgiven_after_staying_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = FakeUpstream("a")
    r = router(a, eject_after_failures=1, eject_delay=5.0, eject_max_delay=12.0, max_attempts=1)
    a.down = refused()
    delays = []
    for _ in range(4):
        with pytest.raises(UpstreamConnectError):
            await stream(r)
        delays.append(r.statistics().upstreams[0].ejected_for)
        await trio.sleep(delays[-1])
    assert delays == [5.0, 10.0, 12.0, 12.0]
    a.down = None
    await stream(r)  # the probe answers: up again
    await trio.sleep(12.0)  # up for eject_max_delay: the next ejection starts from 5 s again
    a.down = refused()
    with pytest.raises(UpstreamConnectError):
        await stream(r)
    assert r.statistics().upstreams[0].ejected_for == 5.0


async def test_a_4xx_answer_is_not_a_failure_and_is_not_retried(autojump_clock: trio.testing.MockClock) -> None:
    a, b = FakeUpstream("a"), FakeUpstream("b")
    r = router(a, b, eject_after_failures=1)
    a.script.append(UpstreamStatusError("upstream answered 400", upstream_status=400))
    with pytest.raises(UpstreamStatusError):
        await stream(r)
    assert len(b.calls) == 0 and states(r) == ["up", "up"]
    assert r.statistics().upstreams[0].errors == {"upstream_status": 1}


async def test_a_failure_after_the_first_byte_is_never_retried(autojump_clock: trio.testing.MockClock) -> None:
    a, b = FakeUpstream("a"), FakeUpstream("b")
    r = router(a, b)
    a.mid_stream = UpstreamStreamError("upstream error mid-stream: boom")
    with pytest.raises(UpstreamStreamError):
        await stream(r)
    assert (len(a.calls), len(b.calls)) == (1, 0)
    s = r.statistics()
    assert s.errors == {"upstream_stream_error": 1} and s.retries == 0
    assert s.upstreams[0].errors == {"upstream_stream_error": 1} and states(r) == ["up", "up"]
    assert_idle(r)


async def test_models_route_calls_and_an_unserved_model_is_model_not_found(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = FakeUpstream("a"), FakeUpstream("b")
    r = router(a, b, models=[("small",), ("big", "huge")], model="small")
    assert (await stream(r)).startswith("a0")  # no model named: the default, "small"
    assert (await stream(r, ChatRequest.from_question("x", model="huge"))).startswith("b0")
    assert (await r.complete_chat(ChatRequest.from_question("x", model="big"))).content == "b"
    async with r.open_relay("/embeddings", b'{"model": "big", "input": "x"}', stream=False) as relay:
        assert relay.body == b"b"
    with pytest.raises(ModelNotFoundError) as exc:
        await stream(r, ChatRequest.from_question("x", model="gpt-9"))
    assert (exc.value.status_code, exc.value.code, exc.value.model) == (404, "model_not_found", "gpt-9")
    assert "big, huge, small" in exc.value.message
    assert await r.list_models() == ["small", "big", "huge"]
    assert (len(a.calls), len(b.calls)) == (1, 3)


async def test_a_full_upstream_is_skipped_and_a_call_waits_when_all_are_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = FakeUpstream("a", ttft=1.0), FakeUpstream("b", ttft=1.0)
    r = router(a, b, caps=[1, 1])
    t0 = trio.current_time()
    done: list[float] = []

    async def one() -> None:
        await stream(r)
        done.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
    # Two run at once (one each); the third waits for a slot, then takes its 1 s + 3 tokens.
    assert done == pytest.approx([1.03, 1.03, 2.06])
    assert (len(a.calls) + len(b.calls), max(len(a.calls), len(b.calls))) == (3, 2)
    assert_idle(r)


async def test_cancellation_anywhere_returns_every_count_to_zero(autojump_clock: trio.testing.MockClock) -> None:
    a, b = FakeUpstream("a", ttft=1.0), FakeUpstream("b", ttft=1.0)
    r = router(a, b, caps=[1, 1])
    async with trio.open_nursery() as nursery:
        for _ in range(5):  # two in their upstream's first second, three waiting for room
            nursery.start_soon(stream, r)
        await trio.testing.wait_all_tasks_blocked()
        assert r.statistics().in_flight == 2
        await trio.sleep(1.005)  # the two are streaming now
        nursery.cancel_scope.cancel()
    assert_idle(r)
    assert (a.open, b.open) == (0, 0)
    # and the router still works
    assert (await stream(r))[0] in "ab"
    assert_idle(r)


async def test_retries_stay_within_max_attempts_and_the_budget(autojump_clock: trio.testing.MockClock) -> None:
    ups = [FakeUpstream(n) for n in "abc"]
    for u in ups:
        u.down = refused()
    r = router(*ups, max_attempts=2, eject_after_failures=100)
    with pytest.raises(UpstreamConnectError):
        await stream(r)
    assert sum(len(u.calls) for u in ups) == 2
    r = router(*ups, max_attempts=3, eject_after_failures=100, retry_budget_min=0, retry_budget_ratio=0.0)
    with pytest.raises(UpstreamConnectError) as exc:
        await stream(r)
    assert "retry budget" in exc.value.message


async def test_a_call_waiting_for_room_gets_the_first_token_timeout(autojump_clock: trio.testing.MockClock) -> None:
    a = FakeUpstream("a", ttft=10.0)
    r = router(a, caps=[1], first_token_timeout=2.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream, r)  # holds a's one slot for 10 s
        await trio.testing.wait_all_tasks_blocked()
        t0 = trio.current_time()
        with pytest.raises(UpstreamFirstTokenTimeoutError):
            await stream(r)
        assert trio.current_time() - t0 == 2.0
        assert "a up in_flight=1" in repr(r)
        nursery.cancel_scope.cancel()
    assert_idle(r)


async def test_an_upstream_is_named_without_its_credentials() -> None:
    from trio_agent.config import UpstreamTarget
    from trio_agent.llm import open_router_backend

    config = UpstreamConfig(
        base_url="http://u:secret@127.0.0.1:9/v1",
        targets=(UpstreamTarget(url="http://u:secret@127.0.0.1:9/v1"), UpstreamTarget(url="https://h/v1")),
    )
    async with open_router_backend(config) as backend:
        names = [u.name for u in backend.statistics().upstreams]
    assert names == ["http://127.0.0.1:9/v1", "https://h/v1"]
