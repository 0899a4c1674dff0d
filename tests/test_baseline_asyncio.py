"""The asyncio baseline (benchmarks/baseline_asyncio) speaks trio_agent's wire format."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from trio_agent.sse import SSEDecoder

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]


def _start(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.baseline_asyncio", "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
    if not m:
        proc.kill()
        proc.wait()
        raise AssertionError(f"baseline did not start: {line!r}")
    return proc, m.group(1)


async def test_streams_in_the_gateway_wire_format_and_stops_on_sigterm() -> None:
    proc, url = _start("--mock-ttft", "0.05", "--mock-itl", "0.01", "--mock-tokens", "7")
    try:
        with trio.fail_after(20):
            async with httpx.AsyncClient(timeout=10) as client:
                r = await client.post(url + "/chat/stream", json={"question": "hi"})
                events = SSEDecoder().feed(r.content)
                kinds = [e.event for e in events]
                assert kinds == ["thinking"] + ["token"] * 7 + ["done"]
                assert '"completion_tokens":7' in events[-1].data
                r = await client.post(
                    url + "/v1/chat/completions",
                    json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
                )
                datas = [e.data for e in SSEDecoder().feed(r.content)]
                assert len(datas) == 8 and datas[-1] == "[DONE]"
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - start < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


async def test_a_full_queue_answers_service_busy() -> None:
    proc, url = _start(
        "--max-concurrency", "1", "--max-queued", "1", "--queue-workers", "1",
        "--mock-ttft", "0.05", "--mock-itl", "0.05", "--mock-tokens", "40",
    )  # fmt: skip
    try:
        with trio.fail_after(20):
            async with httpx.AsyncClient(timeout=10) as client:
                statuses: list[int] = []

                async def ask() -> None:
                    r = await client.post(url + "/chat/stream", json={"question": "hi"})
                    statuses.append(r.status_code)

                async with trio.open_nursery() as nursery:
                    for _ in range(4):
                        nursery.start_soon(ask)
                assert sorted(statuses)[-1] == 503 and 200 in statuses
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
