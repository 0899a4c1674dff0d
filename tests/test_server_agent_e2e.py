"""The agent routes end to end: a real server on 127.0.0.1 port 0, real time, real MCP processes.

``serve`` with ``--mcp`` (the recording MCP stdio server in tests/mcp_servers/)
and ``--tools``: calls reach the MCP server, a client that leaves cancels them
there (the server records the ``notifications/cancelled`` it got), ``/readyz``
reports MCP servers up and down.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from tests._agent_fakes import ScriptedLLM, finish, one_call, text
from tests._reliability import running_gateway
from trio_agent.config import ServerConfig

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
SERVER = Path(__file__).parent / "mcp_servers" / "recording_server.py"


class _Backend(ScriptedLLM):
    def statistics(self) -> None:
        return None


def _mcp(record: Path) -> str:
    command = shlex.join(["env", f"RECORD_FILE={record}", sys.executable, str(SERVER)])
    return f"rec={command}"


def _cancellations(record: Path) -> list[str]:
    lines = record.read_text().splitlines() if record.exists() else []
    return sorted(ln for ln in lines if ln.startswith("cancelled"))


async def _poll(predicate: Callable[[], bool], limit: float) -> None:
    """Wait (bounded, polling: the state is in another process or thread) until ``predicate()``."""
    with trio.fail_after(limit):
        for _ in range(int(limit / 0.01) + 1):
            if predicate():
                return
            await trio.sleep(0.01)
    raise AssertionError("condition not met")


async def test_mcp_tools_run_through_serve_and_a_disconnect_cancels_them_on_the_server(tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    llm = _Backend(
        [
            [
                *one_call(0, "c1", "slow", {"seconds": 60, "tag": "t1"}),
                *one_call(1, "c2", "slow", {"seconds": 60, "tag": "t2"}),
                finish("tool_calls"),
            ],
        ]
    )
    config = ServerConfig(port=0, access_log=False, example_tools=False,
                          mcp=(_mcp(record), "dead=/bin/false"))  # fmt: skip
    with trio.fail_after(60):
        async with running_gateway(config, backend=llm) as srv:
            async with httpx.AsyncClient(base_url=srv.url) as client:
                ready = (await client.get("/readyz")).json()
                assert ready["status"] == "ready"
                assert ready["mcp"]["rec"]["up"] is True and ready["mcp"]["dead"]["up"] is False
                assert ready["mcp_down"] == ["dead"]

            stream = await trio.open_tcp_stream(srv.host, srv.port)
            body = orjson.dumps({"question": "go", "tools": ["slow"]})
            await stream.send_all(
                b"POST /agent/stream HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            received = b""
            # The body is chunked: count the events in the raw bytes, enough here.
            while received.count(b"event: tool_started") < 2:
                data = await stream.receive_some(65536)
                assert data, "the stream ended before both tools started"
                received += data
            agent = srv.gw.agents.agent
            assert agent.statistics().running_tools == 2
            await stream.aclose()  # the client leaves while both MCP calls run
            await _poll(lambda: len(_cancellations(record)) >= 2, 20)
            assert _cancellations(record) == ["cancelled slow t1", "cancelled slow t2"]
            await _poll(lambda: agent.statistics().running_runs == 0, 5)
            s = agent.statistics()
            assert (s.running_tools, s.queued_tools) == (0, 0)
            async with httpx.AsyncClient(base_url=srv.url) as client:
                metrics = (await client.get("/metrics")).text
            assert "trio_agent_agent_running_tools 0" in metrics
            assert 'trio_agent_agent_runs_total{outcome="disconnect"} 1' in metrics
            assert 'trio_agent_agent_mcp_server_up{server="dead"} 0' in metrics


async def test_mcp_tool_results_reach_the_model(tmp_path: Path) -> None:
    llm = _Backend(
        [
            [*one_call(0, "c1", "echo", {"text": "hi there"}), finish("tool_calls")],
            [text("it said hi"), finish()],
        ]
    )
    config = ServerConfig(port=0, access_log=False, example_tools=False, mcp=(_mcp(tmp_path / "r.txt"),))
    with trio.fail_after(60):
        async with running_gateway(config, backend=llm) as srv:
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
                r = await client.post("/agent", json={"question": "echo it"})
    assert r.status_code == 200
    body = r.json()
    result = next(e for e in body["events"] if e["type"] == "tool_result")
    assert (result["name"], result["content"]) == ("echo", "hi there")
    assert body["answer"] == "it said hi"
    assert llm.requests[1].messages[-1].content == "hi there"


def test_serve_tools_loads_a_module_and_offers_its_tools() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "trio_agent", "serve", "--port", "0", "--no-access-log",
         "--tools", "tests._server_agent_tools", "--no-example-tools",
         "--mock-ttft", "0.01", "--mock-itl", "0.001", "--mock-tokens", "4"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "listening on http://" in line, line
            url = line.split("listening on ", 1)[1].split()[0]
            r = httpx.post(f"{url}/agent", json={"question": "shout"}, timeout=30)
            assert r.status_code == 200, r.text
            events: list[dict[str, Any]] = r.json()["events"]
            result = next(e for e in events if e["type"] == "tool_result")
            assert result["name"] == "shout" and result["content"].endswith("!")
            bad = httpx.post(f"{url}/agent", json={"question": "x", "tools": ["get_weather"]}, timeout=30)
            assert bad.status_code == 400 and "get_weather" in bad.json()["error"]["message"]
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
