"""MCP tools through the mcp SDK, against a real stdio server written with the SDK
(tests/mcp_servers/recording_server.py): listing, naming, calls, progress, errors,
cancellation delivered as notifications/cancelled, server death and reconnection."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests._agent_fakes import ScriptedLLM, finish, one_call, text
from trio_agent.agent import (
    AgentConfig,
    MCPServerSpec,
    ToolError,
    ToolProgress,
    ToolResult,
    ToolStarted,
    open_agent,
    tool,
)
from trio_agent.errors import ConfigError

pytestmark = pytest.mark.e2e

SERVER = Path(__file__).parent / "mcp_servers" / "recording_server.py"
FAST = AgentConfig(mcp_reconnect_delay=0.1, mcp_max_reconnect_delay=0.4, mcp_ping_interval=0.3, mcp_connect_timeout=20)


def spec(record: Path) -> MCPServerSpec:
    return MCPServerSpec(target=f"{sys.executable} {SERVER}", env={"RECORD_FILE": str(record)})


def answer_after(*calls: list[object]) -> ScriptedLLM:
    return ScriptedLLM([[*[c for call in calls for c in call], finish("tool_calls")], [text("ok"), finish()]])


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def wait_for_line(path: Path, line: str) -> list[str]:
    lines: list[str] = []
    for _ in range(200):  # bounded: 10 s
        lines = _lines(path)
        if line in lines:
            return lines
        await trio.sleep(0.05)
    raise AssertionError(f"{line!r} never recorded; have {lines!r}")


async def test_mcp_tools_are_listed_called_and_report_progress_and_errors(tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    backend = answer_after(
        one_call(0, "e", "echo", {"text": "hello"}),
        one_call(1, "s", "slow", {"seconds": 0.2, "tag": "p"}),
        one_call(2, "f", "fail", {"message": "no such file"}),
    )
    with trio.fail_after(30):
        async with open_agent(backend, mcp={"rec": spec(record)}, config=FAST) as agent:
            assert {"echo", "pid", "fail", "slow"} <= set(agent.tools.names())
            status = agent.mcp_status()["rec"]
            assert status.up and status.connects == 1 and set(status.tools) == {"echo", "pid", "fail", "slow", "traceparent"}
            schema = next(t for t in agent.tools if t.name == "slow").openai_schema()
            assert set(schema["function"]["parameters"]["properties"]) == {"seconds", "tag"}
            result = await agent.complete("go")
            s = agent.statistics()
            assert (s.running_tools, s.queued_tools, s.per_mcp_server["rec"].borrowed_tokens) == (0, 0, 0)
    # Every call's outcome in one comparison, so a failure shows what each call ended with.
    outcomes = {e.call_id: ("ok", e.content) for e in result.events if isinstance(e, ToolResult)}
    outcomes |= {e.call_id: (e.kind, e.message) for e in result.events if isinstance(e, ToolError)}
    assert outcomes == {
        "e": ("ok", "hello"),
        "s": ("ok", "slept 0.2"),
        "f": ("error", "Error executing tool fail: no such file"),
    }
    progress = [e for e in result.events if isinstance(e, ToolProgress)]
    assert [(p.call_id, p.progress, p.total, p.message) for p in progress] == [("s", 0, 0.2, "started")]


async def test_clashing_names_are_prefixed_with_the_server(tmp_path: Path) -> None:
    @tool
    def echo(text: str) -> str:
        """A Python tool with an MCP tool's name."""
        return text

    record = tmp_path / "record.txt"
    with trio.fail_after(30):
        async with open_agent(
            ScriptedLLM([]), tools=[echo], mcp={"a": spec(record), "b": spec(record)}, config=FAST
        ) as agent:
            names = set(agent.tools.names())
    assert {"echo", "a__echo", "b__echo", "a__pid", "b__pid", "a__slow", "b__slow"} <= names
    assert not any("." in n for n in names)


async def test_cancelling_a_run_cancels_the_mcp_call_on_the_server(tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    backend = ScriptedLLM(
        [
            [*one_call(0, "s", "slow", {"seconds": 60, "tag": "run1"}), finish("tool_calls")],
            [*one_call(0, "e", "echo", {"text": "still here"}), finish("tool_calls")],
            [text("ok"), finish()],
        ]
    )
    with trio.fail_after(30):
        async with open_agent(backend, mcp={"rec": spec(record)}, config=FAST) as agent:
            async with agent.run("go") as events:
                async for event in events:
                    # The server reports progress once its handler runs: the call is in flight there.
                    if isinstance(event, ToolProgress):
                        break
            s = agent.statistics()
            assert (s.running_runs, s.running_tools, s.per_mcp_server["rec"].borrowed_tokens) == (0, 0, 0)
            lines = await wait_for_line(record, "cancelled slow run1")
            assert lines == ["started slow run1", "cancelled slow run1"]
            # The session survived the cancellation: the next run uses it.
            result = await agent.complete("again")
            assert [e.content for e in result.events if isinstance(e, ToolResult)] == ["still here"]
            assert agent.mcp_status()["rec"].connects == 1


async def test_a_dead_server_gives_tool_errors_and_is_reconnected(tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    backend = ScriptedLLM(
        [
            [*one_call(0, "p", "pid", {}), finish("tool_calls")],
            [text("ok"), finish()],
            [*one_call(0, "e", "echo", {"text": "after death"}), finish("tool_calls")],
            [text("ok"), finish()],
            [*one_call(0, "e2", "echo", {"text": "back"}), finish("tool_calls")],
            [text("ok"), finish()],
        ]
    )
    with trio.fail_after(60):
        async with open_agent(backend, mcp={"rec": spec(record)}, config=FAST) as agent:
            first = await agent.complete("pid?")
            [pid] = [int(e.content) for e in first.events if isinstance(e, ToolResult)]
            os.kill(pid, signal.SIGKILL)
            # Until the supervisor notices, a call finds the connection closed; after, the server down.
            dead = await agent.complete("echo")
            [error] = [e for e in dead.events if isinstance(e, ToolError)]
            assert error.kind == "error" and "rec" in error.message
            assert [e for e in dead.events if isinstance(e, ToolStarted)]
            for _ in range(200):  # bounded: 10 s
                if agent.mcp_status()["rec"].connects == 2 and agent.mcp_status()["rec"].up:
                    break
                await trio.sleep(0.05)
            assert agent.mcp_status()["rec"].up and agent.mcp_status()["rec"].connects == 2
            back = await agent.complete("echo again")
            assert [e.content for e in back.events if isinstance(e, ToolResult)] == ["back"]


async def test_a_server_that_cannot_start_is_down_and_its_absence_is_reported(tmp_path: Path) -> None:
    missing = MCPServerSpec(target=f"{sys.executable} {tmp_path / 'no_such_server.py'}")
    with trio.fail_after(30):
        async with open_agent(ScriptedLLM([]), mcp={"gone": missing}, config=FAST) as agent:
            status = agent.mcp_status()["gone"]
            assert not status.up and status.connects == 0 and status.error
            assert agent.tools.names() == []


def test_bad_server_names_and_commands_are_config_errors() -> None:
    from trio_agent.agent._mcp import MCPServers
    from trio_agent.agent._tools import ToolRegistry

    with pytest.raises(ConfigError, match="name"):
        MCPServers({"has.dot": "cmd"}, registry=ToolRegistry(), config=AgentConfig())
    with pytest.raises(ConfigError, match="empty"):
        MCPServers({"x": "   "}, registry=ToolRegistry(), config=AgentConfig())
    assert MCPServerSpec(target="http://127.0.0.1:1/mcp").client_target() == "http://127.0.0.1:1/mcp"


async def test_a_deadline_cancels_the_mcp_call_on_the_server_and_limits_hold(tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    backend = answer_after(
        one_call(0, "t", "slow", {"seconds": 60, "tag": "deadline"}),
        one_call(1, "q", "slow", {"seconds": 0.1, "tag": "queued"}),
        one_call(2, "bad", "slow", {"seconds": "soon"}),
    )
    config = AgentConfig(tool_timeout=1.0, mcp_max_concurrency=1, mcp_connect_timeout=20)
    with trio.fail_after(30):
        async with open_agent(backend, mcp={"rec": spec(record)}, config=config) as agent:
            result = await agent.complete("go")
            assert agent.statistics().per_mcp_server["rec"].borrowed_tokens == 0
            lines = await wait_for_line(record, "cancelled slow deadline")
    errors = {e.call_id: e for e in result.events if isinstance(e, ToolError)}
    assert errors["t"].kind == "timeout"
    # Checked against the listed schema before any round trip: "tag" missing, "seconds" not a number.
    assert errors["bad"].kind == "invalid_arguments" and "tag" in errors["bad"].message
    # One slot on this server: the second call waited for the first one's deadline.
    queued = {e.call_id: e.queued_ms for e in result.events if isinstance(e, ToolStarted)}
    assert queued["t"] < 500 and queued["q"] >= 900
    assert [e.content for e in result.events if isinstance(e, ToolResult)] == ["slept 0.1"]
    assert lines[:2] == ["started slow deadline", "cancelled slow deadline"]


# The SDK's own HTTP stack (httpx2, httpcore2) leaves a response's byte stream to the garbage collector
# when a session closes; trio reports the unfinished async generator. Not ours to close.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object (\\w+ByteStream\\.__aiter__|Response\\.aiter_\\w+):pytest.PytestUnraisableExceptionWarning",
    "ignore:Async generator '(httpx2|httpcore2)\\..*' was garbage collected:ResourceWarning",
)
async def test_an_mcp_server_over_streamable_http(tmp_path: Path) -> None:
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            [sys.executable, str(SERVER), "http"],
            stdout=subprocess.PIPE,
            env={**os.environ, "RECORD_FILE": str(tmp_path / "record.txt")},
        )
        try:
            assert process.stdout is not None
            first = b""
            while not first.endswith(b"\n"):  # bounded by fail_after; the port is one short line
                data = await process.stdout.receive_some(64)
                assert data, "the HTTP MCP server exited before saying its port"
                first += data
            url = f"http://127.0.0.1:{int(first)}/mcp"
            backend = answer_after(
                one_call(0, "e", "echo", {"text": "over http"}),
                one_call(1, "s", "slow", {"seconds": 0.1, "tag": "h"}),
            )
            async with open_agent(backend, mcp={"web": url}, config=FAST) as agent:
                assert agent.mcp_status()["web"].up
                result = await agent.complete("go")
        finally:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    assert [e for e in result.events if isinstance(e, ToolError)] == []
    assert sorted(e.content for e in result.events if isinstance(e, ToolResult)) == ["over http", "slept 0.1"]
    assert [e.call_id for e in result.events if isinstance(e, ToolProgress)] == ["s"]


async def test_a_server_that_never_answers_is_down_after_the_connect_deadline() -> None:
    mute = MCPServerSpec(target=f"{sys.executable} -c 'import time; time.sleep(60)'")
    config = AgentConfig(mcp_connect_timeout=1.0, mcp_reconnect_delay=5)
    with trio.fail_after(30):
        t0 = trio.current_time()
        async with open_agent(ScriptedLLM([]), mcp={"mute": mute}, config=config) as agent:
            waited = trio.current_time() - t0
            status = agent.mcp_status()["mute"]
    assert 1.0 <= waited < 10
    assert not status.up and status.error == "no answer within 1 s"


async def test_a_healthy_session_outlives_many_liveness_rounds(tmp_path: Path) -> None:
    # A modern (2026-07-28) server has no ``ping``: a probe that used it ended the
    # session at every round, and a call running then failed with "closed the connection".
    record = tmp_path / "record.txt"
    backend = answer_after(one_call(0, "s", "slow", {"seconds": 1.5, "tag": "long"}))
    with trio.fail_after(30):
        async with open_agent(backend, mcp={"rec": spec(record)}, config=FAST) as agent:
            result = await agent.complete("go")  # 1.5 s of call: five probe rounds at 0.3 s
            await trio.sleep(0.5)
            status = agent.mcp_status()["rec"]
    outcomes = {e.call_id: e.content for e in result.events if isinstance(e, ToolResult)}
    assert outcomes == {"s": "slept 1.5"}
    assert (status.up, status.connects, status.error) == (True, 1, None)
