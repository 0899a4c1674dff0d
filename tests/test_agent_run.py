"""The agent loop on the autojump clock: steps, tools started as their calls complete, limits,
deadlines, isolation, bad calls, step limits, cancellation; statistics back to zero after each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from tests._agent_fakes import ScriptedLLM, call_args, call_start, finish, one_call, text
from trio_agent.agent import (
    Agent,
    AgentConfig,
    AgentEvent,
    Done,
    StepEnd,
    StepStart,
    Token,
    ToolCallEvent,
    ToolError,
    ToolProgress,
    ToolResult,
    ToolStarted,
    UnknownToolError,
    open_agent,
    report_progress,
    tool,
)
from trio_agent.errors import UpstreamStreamError


@tool
async def wait(seconds: float, label: str = "") -> str:
    """Sleep, then say so.

    Args:
        seconds: How long.
        label: Echoed back.
    """
    await trio.sleep(seconds)
    return f"waited {seconds} {label}".strip()


@tool(max_concurrency=1)
async def one_at_a_time(seconds: float) -> str:
    """Sleep; one call at a time."""
    await trio.sleep(seconds)
    return "ok"


@tool(timeout=5)
async def slow(seconds: float) -> str:
    """Sleep longer than its own deadline allows."""
    await trio.sleep(seconds)
    return "never"


@tool
async def boom(message: str) -> str:
    """Always fails."""
    await trio.sleep(0.5)
    raise RuntimeError(message)


@tool
async def big(size: int) -> str:
    """Returns ``size`` bytes of text."""
    return "é" * (size // 2)


@tool
async def progress(steps: int) -> str:
    """Reports progress each second."""
    for i in range(steps):
        await trio.sleep(1)
        await report_progress(i + 1, steps, f"step {i + 1}")
    return "done"


TOOLS = [wait, one_at_a_time, slow, boom, big, progress]


async def collect(agent: Agent, question: str = "go", **kwargs: Any) -> list[tuple[float, AgentEvent]]:
    out: list[tuple[float, AgentEvent]] = []
    async with agent.run(question, **kwargs) as events:
        async for event in events:
            out.append((trio.current_time(), event))
    return out


def of_type(events: list[tuple[float, AgentEvent]], cls: type) -> list[Any]:
    return [e for _, e in events if isinstance(e, cls)]


def assert_idle(agent: Agent, backend: ScriptedLLM) -> None:
    s = agent.statistics()
    assert (s.running_runs, s.queued_tools, s.running_tools) == (0, 0, 0)
    assert s.tools.borrowed_tokens == 0 and s.tools.tasks_waiting == 0
    assert all(x.borrowed_tokens == 0 and x.tasks_waiting == 0 for x in s.per_tool.values())
    assert backend.open_streams == 0


def tool_messages(backend: ScriptedLLM, turn: int) -> dict[str, Any]:
    return {
        m.tool_call_id: orjson.loads(m.content) if m.content and m.content.startswith("{") else m.content
        for m in backend.requests[turn].messages
        if m.role == "tool"
    }


async def test_two_steps_with_a_tool_then_the_answer(autojump_clock: trio.testing.MockClock) -> None:
    backend = ScriptedLLM(
        [
            [0.5, text("Let me wait. "), *one_call(0, "c1", "wait", {"seconds": 2}), finish("tool_calls")],
            [0.5, text("Done "), text("waiting."), finish("stop", 30, 7)],
        ]
    )
    async with open_agent(backend, tools=TOOLS) as agent:
        t0 = trio.current_time()
        events = await collect(agent, "wait 2 s please")
        assert_idle(agent, backend)
    kinds = [e.type for _, e in events]
    assert kinds == [
        "step_start", "token", "tool_call", "tool_started", "tool_result", "step_end",
        "step_start", "token", "token", "step_end", "done",
    ]
    call = of_type(events, ToolCallEvent)[0]
    assert (call.call_id, call.name, call.arguments, call.step) == ("c1", "wait", {"seconds": 2}, 1)
    [(t_result, result)] = [(t, e) for t, e in events if isinstance(e, ToolResult)]
    assert result.content == "waited 2.0" and result.duration_ms == 2000.0
    assert t_result - t0 == pytest.approx(2.5)
    done = events[-1][1]
    assert isinstance(done, Done)
    assert (done.finish_reason, done.answer, done.steps, done.tool_calls) == ("stop", "Done waiting.", 2, 1)
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (40, 12, 52)
    assert done.duration_ms == 3000.0 and done.model_ms == 1000.0
    assert done.to_json()["type"] == "done" and done.to_json()["usage"]["total_tokens"] == 52
    # The second model call saw the assistant's call and the tool's answer.
    second = backend.requests[1].messages
    assert [m.role for m in second] == ["user", "assistant", "tool"]
    assert second[1].content == "Let me wait. " and second[1].tool_calls[0].id == "c1"
    assert second[2].tool_call_id == "c1" and second[2].content == "waited 2.0"
    assert backend.requests[0].tool_choice is None
    assert {t["function"]["name"] for t in backend.requests[0].tools} == {t.name for t in TOOLS}


async def test_tools_start_while_the_model_still_streams_and_run_in_parallel(autojump_clock: trio.testing.MockClock) -> None:
    # Call a's arguments are complete at t=1; call b's only at t=3, when the message ends.
    backend = ScriptedLLM(
        [
            [
                *one_call(0, "a", "wait", {"seconds": 2, "label": "a"}, gap=0.5),
                *one_call(1, "b", "wait", {"seconds": 2, "label": "b"}, gap=1.0),
                finish("tool_calls"),
            ],
            [text("both done"), finish()],
        ]
    )
    async with open_agent(backend, tools=TOOLS) as agent:
        t0 = trio.current_time()
        events = await collect(agent)
        assert_idle(agent, backend)
    started = {e.call_id: t - t0 for t, e in events if isinstance(e, ToolStarted)}
    ended = {e.call_id: t - t0 for t, e in events if isinstance(e, ToolResult)}
    last_chunk = backend.chunk_times[0][-1] - t0
    assert started == {"a": 1.0, "b": 3.0}
    assert started["a"] < last_chunk == 3.0
    assert ended == {"a": 3.0, "b": 5.0}  # a ran while b's arguments still streamed
    steps = [t - t0 for t, e in events if isinstance(e, StepStart)]
    assert steps == [0.0, 5.0]
    done = events[-1][1]
    assert isinstance(done, Done) and done.tool_ms == 4000.0 and done.duration_ms == 5000.0


async def test_limits_queue_calls_and_report_queued_ms(autojump_clock: trio.testing.MockClock) -> None:
    calls = [c for i in range(4) for c in one_call(i, f"w{i}", "wait", {"seconds": 1})]
    single = [c for i in range(3) for c in one_call(i, f"s{i}", "one_at_a_time", {"seconds": 1})]
    backend = ScriptedLLM(
        [[*calls, finish("tool_calls")], [text("ok"), finish()], [*single, finish("tool_calls")], [text("ok"), finish()]]
    )
    async with open_agent(backend, tools=TOOLS, config=AgentConfig(max_tool_concurrency=2)) as agent:
        seen: list[tuple[int, int]] = []

        async def watch() -> None:
            await trio.sleep(0.5)
            s = agent.statistics()
            seen.append((s.running_tools, s.queued_tools))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            events = await collect(agent)
        assert seen == [(2, 2)]
        assert sorted(e.queued_ms for e in of_type(events, ToolStarted)) == [0.0, 0.0, 1000.0, 1000.0]
        events = await collect(agent)
        assert [e.queued_ms for e in of_type(events, ToolStarted)] == [0.0, 1000.0, 2000.0]
        assert set(agent.statistics().per_tool) == {"one_at_a_time"}
        assert_idle(agent, backend)


async def test_a_backlog_on_one_tool_holds_no_process_wide_slot(autojump_clock: trio.testing.MockClock) -> None:
    # docs/decisions/009: three calls queue for one_at_a_time (one slot); with the process-wide
    # limit at 2, a call of another tool must still start at once, because a waiting call holds
    # only the slot of what it waits for.
    single = [c for i in range(3) for c in one_call(i, f"s{i}", "one_at_a_time", {"seconds": 1})]
    other = one_call(3, "w", "wait", {"seconds": 1})
    backend = ScriptedLLM([[*single, *other, finish("tool_calls")], [text("ok"), finish()]])
    async with open_agent(backend, tools=TOOLS, config=AgentConfig(max_tool_concurrency=2)) as agent:
        events = await collect(agent)
        assert_idle(agent, backend)
    queued = {e.call_id: e.queued_ms for e in of_type(events, ToolStarted)}
    assert queued == {"s0": 0.0, "s1": 1000.0, "s2": 2000.0, "w": 0.0}


async def test_a_timeout_is_a_tool_error_the_model_sees_and_the_run_goes_on(autojump_clock: trio.testing.MockClock) -> None:
    backend = ScriptedLLM(
        [
            [*one_call(0, "t", "slow", {"seconds": 100}), *one_call(1, "w", "wait", {"seconds": 1}), finish("tool_calls")],
            [text("sorry, it timed out"), finish()],
        ]
    )
    async with open_agent(backend, tools=TOOLS) as agent:
        t0 = trio.current_time()
        events = await collect(agent)
        assert_idle(agent, backend)
    [(t_err, err)] = [(t, e) for t, e in events if isinstance(e, ToolError)]
    assert (err.call_id, err.kind, err.duration_ms) == ("t", "timeout", 5000.0)
    assert t_err - t0 == 5.0
    assert tool_messages(backend, 1) == {"t": {"error": "tool 'slow' timed out after 5 s"}, "w": "waited 1.0"}
    assert isinstance(events[-1][1], Done) and events[-1][1].answer == "sorry, it timed out"


async def test_the_agent_deadline_applies_to_tools_without_their_own(autojump_clock: trio.testing.MockClock) -> None:
    backend = ScriptedLLM([[*one_call(0, "w", "wait", {"seconds": 10}), finish("tool_calls")], [text("k"), finish()]])
    async with open_agent(backend, tools=TOOLS, config=AgentConfig(tool_timeout=3)) as agent:
        events = await collect(agent)
    assert [(e.kind, e.duration_ms) for e in of_type(events, ToolError)] == [("timeout", 3000.0)]


async def test_an_exception_is_that_tools_error_and_its_siblings_run_on(autojump_clock: trio.testing.MockClock) -> None:
    backend = ScriptedLLM(
        [
            [*one_call(0, "x", "boom", {"message": "disk on fire"}), *one_call(1, "w", "wait", {"seconds": 2}), finish("tool_calls")],
            [text("one failed"), finish()],
        ]
    )
    async with open_agent(backend, tools=TOOLS) as agent:
        events = await collect(agent)
        assert_idle(agent, backend)
    [err] = of_type(events, ToolError)
    assert (err.call_id, err.kind, err.message) == ("x", "error", "RuntimeError: disk on fire")
    [result] = of_type(events, ToolResult)
    assert result.call_id == "w" and result.duration_ms == 2000.0
    assert tool_messages(backend, 1)["x"] == {"error": "RuntimeError: disk on fire"}


async def test_bad_calls_go_back_to_the_model(autojump_clock: trio.testing.MockClock) -> None:
    backend = ScriptedLLM(
        [
            [
                call_start(0, "j", "wait", '{"seconds": '),
                call_args(0, "oops"),
                call_start(1, "s", "wait", '{"seconds": "soon"}'),
                call_start(2, "x", "wait", '{"seconds": 1, "extra": true}'),
                call_start(3, "u", "no_such_tool", "{}"),
                call_start(4, "l", "wait", "[1, 2]"),
                finish("tool_calls"),
            ],
            [text("let me fix that"), finish()],
        ]
    )
    async with open_agent(backend, tools=TOOLS) as agent:
        events = await collect(agent)
        assert_idle(agent, backend)
    errors = {e.call_id: e for e in of_type(events, ToolError)}
    assert {k: e.kind for k, e in errors.items()} == {
        "j": "invalid_arguments",
        "s": "invalid_arguments",
        "x": "invalid_arguments",
        "u": "unknown_tool",
        "l": "invalid_arguments",
    }
    assert "seconds" in errors["s"].message and "extra" in errors["x"].message
    assert "available tools: wait" in errors["u"].message
    calls = {e.call_id: e.arguments for e in of_type(events, ToolCallEvent)}
    assert calls["j"] == '{"seconds": oops' and calls["s"] == {"seconds": "soon"}
    messages = tool_messages(backend, 1)
    assert set(messages) == set(errors) and all("error" in m for m in messages.values())
    assert of_type(events, ToolStarted) == []


async def test_max_steps_asks_once_more_without_tools_for_an_answer(autojump_clock: trio.testing.MockClock) -> None:
    def script(request: Any) -> list[Any]:
        if request.tool_choice == "none":
            return [text("Here is what I found."), finish()]
        n = len(backend.requests)
        return [*one_call(0, f"c{n}", "wait", {"seconds": 1}), finish("tool_calls")]

    backend = ScriptedLLM(script)
    async with open_agent(backend, tools=TOOLS) as agent:
        events = await collect(agent, max_steps=3)
        assert_idle(agent, backend)
    done = events[-1][1]
    assert isinstance(done, Done)
    assert (done.finish_reason, done.steps, done.tool_calls, done.answer) == ("max_steps", 4, 3, "Here is what I found.")
    assert [r.tool_choice for r in backend.requests] == [None, None, None, "none"]
    assert backend.requests[-1].tools  # the tools stay declared: the history refers to them
    assert [e.finish_reason for e in of_type(events, StepEnd)] == ["tool_calls"] * 3 + ["stop"]


async def test_the_tool_call_cap_answers_extra_calls_and_ends_the_run(autojump_clock: trio.testing.MockClock) -> None:
    calls = [c for i in range(3) for c in one_call(i, f"c{i}", "wait", {"seconds": 1})]
    backend = ScriptedLLM([[*calls, finish("tool_calls")], [text("capped"), finish()]])
    async with open_agent(backend, tools=TOOLS, config=AgentConfig(max_tool_calls=2)) as agent:
        events = await collect(agent)
        assert_idle(agent, backend)
    [err] = of_type(events, ToolError)
    assert (err.call_id, err.kind) == ("c2", "cancelled")
    assert sorted(e.call_id for e in of_type(events, ToolResult)) == ["c0", "c1"]
    done = events[-1][1]
    assert isinstance(done, Done) and done.finish_reason == "max_steps" and done.tool_calls == 3
    assert backend.requests[1].tool_choice == "none"
    assert set(tool_messages(backend, 1)) == {"c0", "c1", "c2"}


async def test_leaving_the_run_cancels_the_model_and_every_tool(autojump_clock: trio.testing.MockClock) -> None:
    cancelled: list[str] = []

    @tool
    async def forever(name: str) -> str:
        """Runs until cancelled."""
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(name)
        return "unreachable"

    backend = ScriptedLLM(
        [[*one_call(0, "a", "forever", {"name": "a"}), *one_call(1, "b", "forever", {"name": "b"}), 100.0, finish("tool_calls")]]
    )
    async with open_agent(backend, tools=[forever]) as agent:
        started = 0
        async with agent.run("go") as events:
            async for event in events:
                if isinstance(event, ToolStarted):
                    started += 1
                if started == 2:
                    s = agent.statistics()
                    assert (s.running_runs, s.running_tools, s.tools.borrowed_tokens) == (1, 2, 2)
                    break
        assert sorted(cancelled) == ["a", "b"]
        assert backend.closed_early == 1
        assert_idle(agent, backend)


async def test_an_outer_cancel_scope_tears_the_run_down(autojump_clock: trio.testing.MockClock) -> None:
    backend = ScriptedLLM([[*one_call(0, "a", "wait", {"seconds": 50}), finish("tool_calls")], [text("x"), finish()]])
    async with open_agent(backend, tools=TOOLS) as agent:
        t0 = trio.current_time()
        with trio.move_on_after(10) as scope:
            await collect(agent)
        assert scope.cancelled_caught and trio.current_time() - t0 == 10.0
        assert_idle(agent, backend)


async def test_a_model_error_cancels_the_steps_tools_and_is_raised(autojump_clock: trio.testing.MockClock) -> None:
    backend = ScriptedLLM(
        [[*one_call(0, "a", "wait", {"seconds": 50}), 1.0, UpstreamStreamError("upstream broke")]]
    )
    seen: list[AgentEvent] = []
    async with open_agent(backend, tools=TOOLS) as agent:
        with pytest.raises(UpstreamStreamError, match="upstream broke"):
            async with agent.run("go") as events:
                async for event in events:
                    seen.append(event)
        assert_idle(agent, backend)
    assert [e.type for e in seen] == ["step_start", "tool_call", "tool_started", "tool_error"]
    assert isinstance(seen[-1], ToolError) and seen[-1].kind == "cancelled"


async def test_an_error_in_the_callers_block_propagates_unwrapped(autojump_clock: trio.testing.MockClock) -> None:
    backend = ScriptedLLM([[*one_call(0, "a", "wait", {"seconds": 50}), finish("tool_calls")]])
    async with open_agent(backend, tools=TOOLS) as agent:
        with pytest.raises(KeyError):
            async with agent.run("go") as events:
                async for event in events:
                    if isinstance(event, ToolStarted):
                        raise KeyError("consumer bug")
        assert_idle(agent, backend)


async def test_tool_output_is_bounded_with_a_marker(autojump_clock: trio.testing.MockClock) -> None:
    backend = ScriptedLLM([[*one_call(0, "b", "big", {"size": 1000}), finish("tool_calls")], [text("k"), finish()]])
    async with open_agent(backend, tools=TOOLS, config=AgentConfig(max_tool_output_bytes=101)) as agent:
        events = await collect(agent)
    [result] = of_type(events, ToolResult)
    assert result.truncated
    assert result.content == "é" * 50 + "\n[output truncated: 101 of 1000 bytes]"
    assert tool_messages(backend, 1)["b"] == result.content


async def test_the_allowlist_limits_what_the_model_is_offered_and_may_call(autojump_clock: trio.testing.MockClock) -> None:
    backend = ScriptedLLM([[*one_call(0, "b", "boom", {"message": "x"}), finish("tool_calls")], [text("k"), finish()]])
    async with open_agent(backend, tools=TOOLS) as agent:
        with pytest.raises(UnknownToolError) as info:
            async with agent.run("go", tools=["wait", "nope"]):
                pass
        assert info.value.names == ("nope",)
        events = await collect(agent, tools=["wait"])
    assert [t["function"]["name"] for t in backend.requests[0].tools] == ["wait"]
    assert [e.kind for e in of_type(events, ToolError)] == ["unknown_tool"]


async def test_progress_reports_become_events(autojump_clock: trio.testing.MockClock) -> None:
    backend = ScriptedLLM([[*one_call(0, "p", "progress", {"steps": 3}), finish("tool_calls")], [text("k"), finish()]])
    async with open_agent(backend, tools=TOOLS) as agent:
        events = await collect(agent)
    assert [(e.progress, e.total, e.message) for e in of_type(events, ToolProgress)] == [
        (1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3"),
    ]


async def test_the_model_slot_is_held_only_while_the_model_streams(autojump_clock: trio.testing.MockClock) -> None:
    held = 0
    entered = 0
    held_during_tool: list[int] = []

    @asynccontextmanager
    async def slot() -> AsyncIterator[None]:
        nonlocal held, entered
        await trio.sleep(0.25)  # the wait for an upstream slot
        held += 1
        entered += 1
        try:
            yield
        finally:
            held -= 1

    @tool
    async def check() -> str:
        """Records whether a model slot is held while it runs."""
        await trio.sleep(1)
        held_during_tool.append(held)
        return "checked"

    backend = ScriptedLLM([[*one_call(0, "c", "check", {}), finish("tool_calls")], [text("k"), finish()]])
    async with open_agent(backend, tools=[check], model_slot=slot) as agent:
        events = await collect(agent)
    assert held_during_tool == [0] and entered == 2 and held == 0
    assert isinstance(events[-1][1], Done) and events[-1][1].model_ms == 500.0
    # A run may bring its own slot instead of the agent's.
    backend = ScriptedLLM([[*one_call(0, "c", "check", {}), finish("tool_calls")], [text("k"), finish()]])
    async with open_agent(backend, tools=[check]) as agent:
        await collect(agent, model_slot=slot)
    assert held_during_tool == [0, 0] and entered == 4 and held == 0


async def test_complete_returns_the_answer_and_the_trace(autojump_clock: trio.testing.MockClock) -> None:
    backend = ScriptedLLM([[*one_call(0, "c", "wait", {"seconds": 1}), finish("tool_calls")], [text("42"), finish()]])
    async with open_agent(backend, tools=TOOLS) as agent:
        result = await agent.complete("answer?")
    assert (result.answer, result.finish_reason, result.steps, result.tool_calls) == ("42", "stop", 2, 1)
    body = result.to_json()
    assert body["events"][0] == {"type": "step_start", "step": 1}
    assert body["events"][-1]["type"] == "done"
    assert [e["type"] for e in body["events"]].count("tool_result") == 1


async def test_a_plain_answer_is_one_step(autojump_clock: trio.testing.MockClock) -> None:
    backend = ScriptedLLM([[text("hi"), finish("length")]])
    async with open_agent(backend) as agent:
        events = await collect(agent)
    assert [e.type for _, e in events] == ["step_start", "token", "step_end", "done"]
    assert isinstance(events[-1][1], Done) and events[-1][1].finish_reason == "length"
    assert backend.requests[0].tools == () and backend.requests[0].tool_choice is None
    assert of_type(events, Token)[0].to_json() == {"type": "token", "step": 1, "text": "hi"}


async def test_cancelled_at_any_moment_nothing_is_left_running(autojump_clock: trio.testing.MockClock) -> None:
    # Every quarter second of a three-step run with parallel, queued, failing and timed-out
    # calls: wherever the cancellation lands, the agent and the backend end idle.
    def turns() -> list[list[Any]]:
        return [
            [
                0.25,
                text("a"),
                *one_call(0, "a", "wait", {"seconds": 1}, gap=0.25),
                *one_call(1, "b", "one_at_a_time", {"seconds": 1}, gap=0.25),
                *one_call(2, "c", "one_at_a_time", {"seconds": 1}),
                *one_call(3, "d", "boom", {"message": "x"}),
                finish("tool_calls"),
            ],
            [*one_call(0, "e", "slow", {"seconds": 9}), 0.5, finish("tool_calls")],
            [0.25, text("end"), finish()],
        ]

    full = ScriptedLLM(turns())
    async with open_agent(full, tools=TOOLS, config=AgentConfig(max_tool_concurrency=2)) as agent:
        t0 = trio.current_time()
        await collect(agent)
        total = trio.current_time() - t0
        assert total == 8.5
        for quarter in range(int(total * 4)):
            backend = ScriptedLLM(turns())
            agent.backend = backend
            with trio.move_on_after(quarter / 4) as scope:
                await collect(agent)
            assert scope.cancelled_caught
            assert_idle(agent, backend)
