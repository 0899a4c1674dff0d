"""The seed's demo (benchmarks/baseline_seed) speaks trio_agent's wire format, as the load
generator reads it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import trio

from trio_agent.bench._client import _TrioAgentAPI
from trio_agent.bench._records import Outcome, RequestTrace
from trio_agent.sse import SSEDecoder

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def seed_demo(*args: str) -> Iterator[str]:
    """Run the demo on port 0; yield its URL; always stop it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.baseline_seed", "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert m, f"the seed demo did not start: {line!r}"
        yield m.group(1)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


async def test_streams_thinking_tokens_and_done_that_the_generator_counts() -> None:
    with seed_demo("--mock-tokens", "5") as url:
        with trio.fail_after(20):
            async with httpx.AsyncClient(timeout=10) as client:
                r = await client.post(url + "/chat/stream", json={"question": "hi there"})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = SSEDecoder().feed(r.content)
        assert [e.event for e in events] == ["thinking"] + ["token"] * 5 + ["done"]
        assert [e.id for e in events] == [str(i) for i in range(1, 8)]
        datas = [json.loads(e.data) for e in events]
        assert [d["type"] for d in datas] == [e.event for e in events]
        assert all(d["content"] for d in datas[1:-1])
        assert datas[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
        # What `trio-agent bench --api trio-agent` makes of it: five tokens, ended ok.
        trace = RequestTrace(index=0, scheduled_at=0.0, sent_at=0.0)
        ends = [_TrioAgentAPI.on_event(e, trace, float(i)) for i, e in enumerate(events)]
        assert ends == [False] * 6 + [True]
        assert trace.outcome is Outcome.OK
        assert len(trace.token_times) == 5 and trace.output_tokens == 5


def test_the_suite_reports_cpu_per_request_against_the_seed_demo() -> None:
    from benchmarks import suite

    def run(server: str, cpu_s: float, completed: int) -> dict[str, object]:
        return {
            "scenario": "seed100",
            "server_name": server,
            "config": {"concurrency": 100, "rate": None},
            "metrics": {"request_throughput": 10.0, "completed": completed,
                        "delivered_tokens": 64.0 * completed},
            "server": {"cpu": {"user": cpu_s, "system": 0.0},
                       "cpu_ms_per_request_total": cpu_s * 1000 / completed},
        }  # fmt: skip

    rows = suite.cpu_markdown([run("trio_agent", 1.5, 1000), run("seed_demo", 2.0, 1000)])
    assert "| seed100 | trio_agent | c=100 | 10.0 | 1500 | 22.7 | 0.75 |" in rows
    assert "| seed100 | seed_demo | c=100 | 10.0 | 2000 | 30.3 | 1.00 |" in rows
    # The demo has no admission and no proxy: only the closed loops start it.
    s = suite.Suite(["trio_agent", "seed_demo"], suite.QUICK, ROOT, None)
    assert s.chat_servers() == ["trio_agent"]
    assert s.chat_servers(mock_only=True) == ["trio_agent", "seed_demo"]
    assert suite.seed_command(suite.ServerArgs(mock=suite.SEED_MOCK))[-6:] == [
        "--mock-ttft", "0.0", "--mock-itl", "0.01", "--mock-tokens", "64",
    ]  # fmt: skip
