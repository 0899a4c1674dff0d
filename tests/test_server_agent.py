"""The agent routes over ASGI memory channels, on the autojump clock.

``POST /agent/stream`` and ``POST /agent``: events in order, tools started
while the model still streams, disconnect cancelling every tool, admission up
front, model calls waiting for a slot without a 503, upstream errors as one
SSE error event, validation before the stream. Each ends with the agent's
statistics, the admission and the drain registry back at zero.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from tests._agent_fakes import ScriptedLLM, finish, one_call, text
from tests._asgi import Exchange, data, request
from trio_agent.agent import Agent, open_agent, tool
from trio_agent.config import AgentConfig, MockLLMConfig, ServerConfig
from trio_agent.errors import UpstreamConnectError
from trio_agent.llm import ChatBackend, MockLLM
from trio_agent.server import Gateway, create_app
from trio_agent.server._admission import Admission
from trio_agent.sse import ServerSentEvent

Q = {"question": "What is the weather?"}
STARTS: list[float] = []
CANCELLED: list[str] = []


@tool
async def lookup(city: str) -> str:
    """Look a city up.

    Args:
        city: The city.
    """
    STARTS.append(trio.current_time())
    await trio.sleep(1.0)
    return f"sunny in {city}"


@tool
async def hang(tag: str) -> str:
    """Never returns on its own.

    Args:
        tag: A label.
    """
    try:
        await trio.sleep_forever()
    finally:
        CANCELLED.append(tag)
    raise AssertionError("unreachable")


@pytest.fixture(autouse=True)
def _clear() -> None:
    STARTS.clear()
    CANCELLED.clear()


@asynccontextmanager
async def gateway(
    backend: ChatBackend, tools: list[Any] | None = None, **server: Any
) -> AsyncIterator[tuple[Gateway, Agent]]:
    config = ServerConfig(access_log=False, example_tools=False, max_loop_lag=0, **server)
    async with open_agent(backend, tools=tools or [lookup], config=config.agent) as agent:
        yield create_app(config, backend=backend, agent=agent), agent


def assert_idle(gw: Gateway, agent: Agent) -> None:
    s = agent.statistics()
    assert (s.running_runs, s.running_tools, s.queued_tools) == (0, 0, 0)
    assert s.tools.borrowed_tokens == 0
    a = gw.limits.statistics()
    assert (a.in_flight, a.queued, a.slots_waiting) == (0, 0, 0)
    assert gw.drain.active == 0


def kinds(events: list[ServerSentEvent]) -> list[str]:
    return [e.event or "" for e in events]


def mock(**kw: Any) -> MockLLM:
    return MockLLM(MockLLMConfig(ttft=0.1, itl=0.01, tokens=4, **kw))


async def test_a_run_over_three_steps_streams_its_events_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with gateway(mock(tool_calls=2, tool_rounds=2)) as (gw, agent):
        r = await request(gw, "POST", "/agent/stream", json=Q)
    assert r.status == 200
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    names = kinds(r.events)
    assert names[0] == "thinking"
    assert data(r.events[0])["run_id"] == r.headers["x-request-id"]
    assert [e.id for e in r.events] == [str(i) for i in range(1, len(r.events) + 1)]
    for e in r.events:
        assert data(e)["type"] == e.event
    assert names.count("step_start") == names.count("step_end") == 3
    assert names.count("tool_call") == names.count("tool_started") == names.count("tool_result") == 4
    assert names[-1] == "done" and names.count("done") == 1 and "error" not in names
    # Within each step: its start, then calls, starts and results, then its end.
    steps = [i for i, n in enumerate(names) if n == "step_start"]
    ends = [i for i, n in enumerate(names) if n == "step_end"]
    for s, e in zip(steps, ends, strict=True):
        inside = names[s + 1 : e]
        assert "step_start" not in inside
    results = [data(e) for e in r.events if e.event == "tool_result"]
    assert all(res["name"] == "lookup" and res["content"].startswith("sunny in ") for res in results)
    done = data(r.events[-1])
    assert done["finish_reason"] == "stop" and done["steps"] == 3 and done["tool_calls"] == 4
    assert "lookup returned sunny in" in done["answer"]
    assert_idle(gw, agent)
    assert gw.limits.statistics().slots_granted == 3


async def test_a_tool_starts_before_the_model_stream_ends(autojump_clock: trio.testing.MockClock) -> None:
    llm = ScriptedLLM(
        [
            [
                *one_call(0, "c1", "lookup", {"city": "Paris"}),
                0.5,
                *one_call(1, "c2", "lookup", {"city": "Oslo"}),
                0.5,
                finish("tool_calls"),
            ],
            [text("done"), finish()],
        ]
    )
    async with gateway(llm) as (gw, agent):
        r = await request(gw, "POST", "/agent/stream", json=Q)
    assert kinds(r.events)[-1] == "done"
    first_turn_end = llm.chunk_times[0][-1]
    assert STARTS[0] < first_turn_end
    assert STARTS[0] == llm.chunk_times[0][2]  # the moment its arguments were complete
    assert_idle(gw, agent)


async def test_a_disconnect_during_tools_cancels_them_all(autojump_clock: trio.testing.MockClock) -> None:
    async with gateway(mock(tool_calls=3), tools=[hang]) as (gw, agent):
        async with trio.open_nursery() as nursery:
            ex = Exchange(gw, "POST", "/agent/stream", json=Q).start(nursery)
            started = 0
            while started < 3:
                event = await ex.next_event()
                assert event is not None
                started += event.event == "tool_started"
            assert agent.statistics().running_tools == 3
            ex.disconnect()
            await ex.finished.wait()
        assert sorted(CANCELLED) and len(CANCELLED) == 3
        assert_idle(gw, agent)
        metrics = await request(gw, "GET", "/metrics")
    body = metrics.body.decode()
    assert "trio_agent_agent_running_tools 0" in body
    assert "trio_agent_agent_queued_tools 0" in body
    assert 'trio_agent_agent_runs_total{outcome="disconnect"} 1' in body
    assert 'trio_agent_agent_tool_calls_total{tool="hang",outcome="cancelled"} 3' in body


async def test_a_full_gateway_refuses_the_run_up_front(autojump_clock: trio.testing.MockClock) -> None:
    async with gateway(mock(), max_concurrency=1, max_queued=0) as (gw, agent):
        async with gw.limits.lease():
            r = await request(gw, "POST", "/agent/stream", json=Q)
        assert r.status == 503
        assert r.json()["error"]["code"] == "overloaded"
        assert "retry-after" in r.headers
        metrics = (await request(gw, "GET", "/metrics")).body.decode()
        assert 'trio_agent_agent_runs_total{outcome="refused"} 1' in metrics
        assert_idle(gw, agent)


async def test_model_calls_wait_for_a_slot_without_a_503(autojump_clock: trio.testing.MockClock) -> None:
    # Admitted up front (a queue place is free), the run's model call then waits for the one
    # slot, held elsewhere for 5 s, and goes on: no refusal midway, however long the wait.
    async with gateway(mock(), max_concurrency=1, max_queued=1, max_queue_wait=0.5) as (gw, agent):
        release = trio.Event()

        async def hold() -> None:
            async with gw.limits.lease():
                await release.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(_release_after, release, 5.0)
            start = trio.current_time()
            r = await request(gw, "POST", "/agent/stream", json=Q)
        assert kinds(r.events)[-1] == "done"
        assert trio.current_time() - start >= 5.0
        stats = gw.limits.statistics()
        assert stats.slot_waits == 1 and stats.shed_timeout == 0
        assert_idle(gw, agent)


async def _release_after(event: trio.Event, seconds: float) -> None:
    await trio.sleep(seconds)
    event.set()


async def test_an_upstream_error_mid_run_is_one_sse_error_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    llm = ScriptedLLM(
        [
            [*one_call(0, "c1", "lookup", {"city": "Paris"}), finish("tool_calls")],
            [text("par"), UpstreamConnectError("upstream went away")],
        ]
    )
    async with gateway(llm) as (gw, agent):
        r = await request(gw, "POST", "/agent/stream", json=Q)
        assert r.status == 200
        names = kinds(r.events)
        assert names.count("error") == 1 and names[-1] == "error" and "done" not in names
        assert "tool_result" in names
        assert data(r.events[-1])["code"] == "upstream_unavailable"
        assert llm.open_streams == 0
        assert_idle(gw, agent)


async def test_an_unknown_tool_in_the_allowlist_is_a_400_naming_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with gateway(mock()) as (gw, agent):
        r = await request(gw, "POST", "/agent/stream", json={**Q, "tools": ["lookup", "nope"]})
        assert r.status == 400
        err = r.json()["error"]
        assert err["field"] == "tools" and "nope" in err["message"]
        for body, field in (
            ({**Q, "max_steps": 0}, "max_steps"),
            ({**Q, "max_steps": 99}, "max_steps"),
            ({**Q, "tools": "lookup"}, "tools"),
            ({**Q, "extra": 1}, "extra"),
            ({**Q, "tool_choice": "none"}, "tool_choice"),
            ({}, "question"),
        ):
            r = await request(gw, "POST", "/agent", json=body)
            assert r.status == 422, body
            assert r.json()["error"]["field"] == field
        assert_idle(gw, agent)


async def test_an_empty_allowlist_offers_no_tools(autojump_clock: trio.testing.MockClock) -> None:
    async with gateway(mock()) as (gw, _agent):
        r = await request(gw, "POST", "/agent/stream", json={**Q, "tools": []})
        assert "tool_call" not in kinds(r.events)
        assert data(r.events[-1])["finish_reason"] == "stop"


async def test_post_agent_answers_with_the_trace(autojump_clock: trio.testing.MockClock) -> None:
    async with gateway(mock(tool_calls=2)) as (gw, agent):
        r = await request(gw, "POST", "/agent", json={**Q, "max_steps": 2})
        assert r.status == 200
        body = r.json()
        assert body["run_id"] == r.headers["x-request-id"]
        assert body["finish_reason"] == "stop" and body["steps"] == 2 and body["tool_calls"] == 2
        assert "lookup returned" in body["answer"]
        types = [e["type"] for e in body["events"]]
        assert types[0] == "step_start" and types[-1] == "done"
        assert types.count("tool_result") == 2
        metrics = (await request(gw, "GET", "/metrics")).body.decode()
        assert 'trio_agent_agent_runs_total{outcome="done"} 1' in metrics
        assert 'trio_agent_agent_tool_calls_total{tool="lookup",outcome="result"} 2' in metrics
        assert "trio_agent_agent_steps_total 2" in metrics
        assert_idle(gw, agent)


async def test_post_agent_upstream_error_is_a_json_502(autojump_clock: trio.testing.MockClock) -> None:
    llm = ScriptedLLM([[UpstreamConnectError("down")]])
    async with gateway(llm) as (gw, agent):
        r = await request(gw, "POST", "/agent", json=Q)
        assert r.status == 502
        assert r.json()["error"]["code"] == "upstream_unavailable"
        assert_idle(gw, agent)


async def test_the_request_deadline_ends_a_run_with_one_error_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with gateway(mock(tool_calls=1), tools=[hang], request_timeout=3.0) as (gw, agent):
        r = await request(gw, "POST", "/agent/stream", json=Q)
        names = kinds(r.events)
        assert names[-1] == "error" and names.count("error") == 1
        assert data(r.events[-1])["code"] == "timeout"
        assert CANCELLED == [data(e)["arguments"]["tag"] for e in r.events if e.event == "tool_call"]
        assert_idle(gw, agent)


async def test_keepalive_comments_while_a_tool_runs_long(autojump_clock: trio.testing.MockClock) -> None:
    async with gateway(mock(tool_calls=1), keepalive_interval=0.3) as (gw, _agent):
        async with trio.open_nursery() as nursery:
            ex = Exchange(gw, "POST", "/agent/stream", json=Q).start(nursery)
            await ex.read_all()
        assert b": keepalive" in ex.body
        assert ex.body.count(b"event: done") == 1


async def test_admission_slot_waits_in_the_queue_without_bound(autojump_clock: trio.testing.MockClock) -> None:
    adm = Admission(max_concurrency=1, max_queued=0, max_queue_wait=0.1)
    order: list[str] = []

    async def patient() -> None:
        async with adm.slot() as lease:
            order.append(f"slot after {lease.queued:g}")

    async with trio.open_nursery() as nursery:
        async with adm.lease():
            nursery.start_soon(patient)
            await trio.testing.wait_all_tasks_blocked()
            s = adm.statistics()
            assert (s.queued, s.slots_waiting, s.slot_waits) == (1, 1, 1)
            assert adm.refuse_nowait() is not None  # the queue (bound 0) counts the waiter
            await trio.sleep(10)
    assert order == ["slot after 10"]
    s = adm.statistics()
    assert (s.in_flight, s.queued, s.slots_waiting, s.slots_granted, s.admitted) == (0, 0, 0, 1, 1)

    # Cancelled while waiting: the place is given up, nothing leaks.
    async with adm.lease():
        with trio.move_on_after(1):
            async with adm.slot():
                raise AssertionError("no slot is free")
    s = adm.statistics()
    assert (s.in_flight, s.queued, s.slots_waiting) == (0, 0, 0)


def test_agent_config_comes_from_the_environment_and_flags() -> None:
    from trio_agent.config import server_config_from_env

    config = server_config_from_env(
        {"TRIO_AGENT_TOOL_TIMEOUT": "5", "TRIO_AGENT_MCP": "fs=mcp-fs /tmp", "TRIO_AGENT_EXAMPLE_TOOLS": "false"},
        agent={"max_tool_concurrency": 4},
    )
    assert config.agent == AgentConfig(tool_timeout=5.0, max_tool_concurrency=4)
    assert config.mcp == ("fs=mcp-fs /tmp",) and config.example_tools is False
    from trio_agent.errors import ConfigError

    with pytest.raises(ConfigError, match="TRIO_AGENT_MAX_AGENT_STEPS"):
        server_config_from_env({"TRIO_AGENT_MAX_AGENT_STEPS": "0"})
    with pytest.raises(ConfigError, match="NAME=COMMAND"):
        ServerConfig(mcp=("no-name",))


def test_serve_offers_the_example_tools_unless_a_module_takes_their_names() -> None:
    from trio_agent.agent import examples
    from trio_agent.server._agent import gateway_tools

    default = [t.name for t in gateway_tools(ServerConfig())]
    assert sorted(default) == sorted(examples.__all__)
    assert gateway_tools(ServerConfig(example_tools=False)) == []
    mine = gateway_tools(ServerConfig(tools=("tests._server_agent_tools", "benchmarks.agent_tools")))
    names = [t.name for t in mine]
    assert names[:6] == ["shout", "ponder", "search_web", "get_weather", "lookup_order", "fetch_price"]
    assert names.count("get_weather") == 1 and "calculate" in names
    from benchmarks import agent_tools

    assert next(t for t in mine if t.name == "get_weather") is agent_tools.get_weather


async def test_tools_start_while_the_client_reads_nothing(autojump_clock: trio.testing.MockClock) -> None:
    # The socket takes nothing (an unbuffered ASGI send nobody reads): the run's events wait
    # in the route's small buffer, and the tools start on time, not behind the writes.
    async with gateway(mock(tool_calls=3), tools=[hang]) as (gw, agent):
        async with trio.open_nursery() as nursery:
            ex = Exchange(gw, "POST", "/agent/stream", json=Q, buffer=0).start(nursery)
            thinking = await ex.next_event()
            assert thinking is not None and thinking.event == "thinking"
            # On the autojump clock: the model streams its three calls within a virtual second.
            await trio.sleep(1.0)
            assert agent.statistics().running_tools == 3
            ex.disconnect()
            await ex.events()
            await ex.finished.wait()
        assert len(CANCELLED) == 3
        assert_idle(gw, agent)
