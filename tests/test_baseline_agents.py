"""The OpenAI Agents SDK baseline (benchmarks/baseline_agents) serves trio_agent's agent events.

The upstream is a small fake OpenAI chat-completions server written here (raw HTTP/1.1 on
trio, one response per connection): while the conversation holds fewer than ``rounds``
assistant tool-call turns it streams one call to every offered tool, its arguments in
pieces, then ``finish_reason: tool_calls``; after that it streams a short text answer.
The baseline runs in its own process, as in the benchmark suite; the load driver
(benchmarks/agent_load.py) then measures it over a real socket.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from trio_agent.sse import SSEDecoder

pytest.importorskip("agents", reason="openai-agents is in the bench extra (pip install -e .[bench])")

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
TOOLS = ["search_web", "get_weather", "lookup_order", "fetch_price"]


# -- the fake upstream ----------------------------------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    doc = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def _usage(prompt: int, completion: int) -> bytes:
    doc = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fake",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


class FakeToolLLM:
    """Answers chat completions with tool calls for ``rounds`` turns, then text."""

    def __init__(self, rounds: int, itl: float = 0.005) -> None:
        self.rounds = rounds
        self.itl = itl
        self.requests: list[dict[str, Any]] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
        head, _, body = buf.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += await stream.receive_some(65536)
        request = json.loads(body)
        self.requests.append(request)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        )
        turns = sum(1 for m in request["messages"] if m["role"] == "assistant" and m.get("tool_calls"))
        offered = [t["function"]["name"] for t in request.get("tools") or []]
        n = len(request["messages"])
        if offered and turns < self.rounds:
            await stream.send_all(_chunk({"role": "assistant", "content": None}))
            for i, name in enumerate(offered):
                call = {"index": i, "id": f"call_{n}_{i}", "type": "function",
                        "function": {"name": name, "arguments": ""}}  # fmt: skip
                await stream.send_all(_chunk({"tool_calls": [call]}))
                arg = next(iter(_schema_args(request, name)))
                for piece in ('{"', f'{arg}": ', f'"x{i}"', "}"):
                    await trio.sleep(self.itl)
                    piece_delta = {"index": i, "function": {"arguments": piece}}
                    await stream.send_all(_chunk({"tool_calls": [piece_delta]}))
            await stream.send_all(_chunk({}, "tool_calls"))
            await stream.send_all(_usage(10, 4 * len(offered)))
        else:
            await stream.send_all(_chunk({"role": "assistant", "content": ""}))
            for word in ("all", " four", " tools", " answered"):
                await trio.sleep(self.itl)
                await stream.send_all(_chunk({"content": word}))
            await stream.send_all(_chunk({}, "stop"))
            await stream.send_all(_usage(10, 4))
        await stream.send_all(b"data: [DONE]\n\n")
        await stream.aclose()


def _schema_args(request: dict[str, Any], name: str) -> list[str]:
    for t in request["tools"]:
        if t["function"]["name"] == name:
            return list(t["function"]["parameters"]["properties"])
    raise AssertionError(name)


@asynccontextmanager
async def fake_llm(rounds: int) -> AsyncIterator[tuple[str, FakeToolLLM]]:
    fake = FakeToolLLM(rounds)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, fake.handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"http://127.0.0.1:{port}/v1", fake
        nursery.cancel_scope.cancel()


@contextmanager
def baseline(*args: str, on_exit: list[int] | None = None) -> Iterator[str]:
    """Run the agents baseline on port 0; yield its URL; always stop it.

    With ``on_exit``, it is stopped with SIGTERM and its exit code appended there.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.baseline_agents", "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert m, f"baseline did not start: {line!r}"
        yield m.group(1)
        if on_exit is not None:
            proc.send_signal(signal.SIGTERM)
            on_exit.append(proc.wait(timeout=20))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


async def _events(client: httpx.AsyncClient, url: str) -> list[tuple[str, dict[str, Any]]]:
    r = await client.post(url + "/agent/stream", json={"question": "plan my day"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = SSEDecoder().feed(r.content)
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    out = [(e.event, json.loads(e.data)) for e in events]
    assert all(d["type"] == name for name, d in out)
    return out


def _check_run(events: list[tuple[str, dict[str, Any]]], rounds: int) -> None:
    names = [n for n, _ in events]
    assert names[0] == "thinking" and names[-1] == "done"
    assert names.count("step_start") == rounds + 1
    assert names.count("tool_call") == names.count("tool_started") == 4 * rounds
    assert names.count("tool_result") == 4 * rounds and "tool_error" not in names
    # Each tool_started comes after its own tool_call; each result after its start.
    seen: dict[str, list[str]] = {}
    for name, d in events:
        if name.startswith("tool_"):
            seen.setdefault(d["call_id"], []).append(name)
    assert all(v == ["tool_call", "tool_started", "tool_result"] for v in seen.values())
    calls = [d for n, d in events if n == "tool_call"]
    assert sorted(c["name"] for c in calls) == sorted(TOOLS * rounds)
    assert all(isinstance(c["arguments"], dict) and len(c["arguments"]) == 1 for c in calls)
    results = [d for n, d in events if n == "tool_result"]
    assert all(95 <= r["duration_ms"] < 1000 for r in results)
    ends = [d for n, d in events if n == "step_end"]
    assert [e["finish_reason"] for e in ends] == ["tool_calls"] * rounds + ["stop"]
    done = events[-1][1]
    assert done["steps"] == rounds + 1 and done["tool_calls"] == 4 * rounds
    assert done["finish_reason"] == "stop"
    assert done["usage"]["total_tokens"] == rounds * (10 + 16) + 14


@pytest.mark.parametrize("mcp", [False, True], ids=["python-tools", "mcp-tools"])
async def test_serves_an_agent_run_with_tool_events(mcp: bool) -> None:
    with trio.fail_after(60):
        async with fake_llm(rounds=2) as (upstream, fake):
            flags = ["--upstream-url", upstream, *(["--mcp"] if mcp else [])]
            exit_codes: list[int] = []
            with baseline(*flags, on_exit=exit_codes) as url:
                async with httpx.AsyncClient(timeout=30) as client:
                    events = await _events(client, url)
                    _check_run(events, rounds=2)
                    health = (await client.get(url + "/healthz")).json()
                    assert health["runs_in_flight"] == 0 and health["runs_completed"] == 1
                    if not mcp:
                        assert health["tools_started"] == health["tools_completed"] == 8
                        assert health["tools_running"] == 0
            assert exit_codes == [0]  # SIGTERM: a clean exit (the MCP server closed too)
            # The model saw every tool result: the last request holds 8 tool messages.
            assert len(fake.requests) == 3
            assert sum(m["role"] == "tool" for m in fake.requests[-1]["messages"]) == 8


async def test_the_load_driver_measures_it() -> None:
    from benchmarks import agent_load

    with trio.fail_after(90):
        async with fake_llm(rounds=3) as (upstream, _fake):
            with baseline("--upstream-url", upstream) as url:
                ns = _namespace(
                    url=url, concurrency=3, warmup=0.0, ramp=None, duration=1.5, max_runs=6, max_duration=30.0,
                    server_pid=0, question="q", max_steps=0, request_timeout=20.0, label="t",
                )  # fmt: skip
                result = await agent_load.closed_loop(ns)
                m = result["metrics"]
                assert m["outcomes"] == {"ok": 6}
                assert m["steps_per_run"] == 4 and m["tool_calls_per_run"] == 12
                # Four 100 ms tools, started together after the model: close to 4 (the
                # spans jitter by a millisecond or two on a busy machine), all at once.
                assert 3.0 < m["parallel_speedup"]["mean"] < 4.4
                assert 3.0 < m["tool_overlap"]["mean"] <= 4.0
                assert m["critical_path"]["p50"] > 0.3  # three steps of one 100 ms tool each
                assert m["latency"]["p50"] >= m["critical_path"]["p50"]


def _namespace(**kw: Any) -> Any:
    import argparse

    return argparse.Namespace(**kw)


async def test_disconnect_trials_see_every_tool_cancelled() -> None:
    from benchmarks import agent_load

    with trio.fail_after(60):
        async with fake_llm(rounds=3) as (upstream, _fake):
            with baseline("--upstream-url", upstream) as url:
                ns = _namespace(
                    url=url, question="q", max_steps=0, request_timeout=20.0, label="d",
                    trials=5, stats_url=url + "/healthz", running_key="tools_running",
                    completed_key="tools_completed", after_started=4, poll_interval=0.002,
                    cancel_timeout=2.0, settle_timeout=5.0,
                )  # fmt: skip
                # A stats URL without the key: the trial cannot be judged, so it is skipped.
                wrong = _namespace(**{**vars(ns), "running_key": "agent.tools.running"})
                with pytest.raises(agent_load.SkipError, match=re.escape("agent.tools.running")):
                    await agent_load.disconnect_trials(wrong)
                result = await agent_load.disconnect_trials(ns)
                s = result["summary"]
                assert (s["trials"], s["disconnected"], s["failed"]) == (5, 5, 0)
                # Disconnected within the tools' 100 ms, so none ran to its end.
                assert s["trials_with_tools_left_running"] == 0
                assert s["trials_with_tools_finished"] == 0
                assert s["cancel_time"]["n"] == 5 and s["cancel_time"]["max"] < 1.0
                async with httpx.AsyncClient(timeout=10) as client:
                    health = (await client.get(url + "/healthz")).json()
                assert health["tools_cancelled"] == 20 and health["tools_completed"] == 0
                assert health["runs_abandoned"] == 5


async def test_the_suite_measures_the_baseline_and_skips_a_server_without_the_route(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import suite

    with trio.fail_after(120):
        async with fake_llm(rounds=3) as (upstream, _fake):
            # The suite's "mock LLM server" is the fake above, announced by a stand-in process.
            announce = f"print('fake LLM on {upstream.removesuffix('/v1')}', flush=True)"
            monkeypatch.setattr(
                suite, "agent_mock_llm_command",
                lambda: [sys.executable, "-c", f"{announce}; import time; time.sleep(300)"],
            )  # fmt: skip
            # A server without /agent/stream: the chat baseline.
            monkeypatch.setitem(
                suite.AGENT_SERVERS, "chat_only",
                lambda a: [sys.executable, "-m", "benchmarks.baseline_asyncio", "--port", "0"],
            )  # fmt: skip
            timing = suite.Timing(warmup=0.5, duration=2.0, sweep=())
            s = suite.Suite(["agents_baseline", "chat_only"], timing, tmp_path, None)
            await trio.to_thread.run_sync(s.run_agent, 3)
    by = {r["server_name"]: r for r in s.agent_results}
    assert "POST /agent/stream" in by["chat_only"]["skipped"]
    m = by["agents_baseline"]["metrics"]
    assert set(m["outcomes"]) == {"ok"} and m["steps_per_run"] == 4
    assert m["server_cpu_ms_per_step_total"] > 0
    text = "\n".join(suite.agent_markdown(s.agent_results))
    assert "| agent3 | agents_baseline | c=3 |" in text
    assert "| agent3 | chat_only | skipped:" in text

