"""The asyncio baseline (benchmarks/baseline_asyncio) speaks trio_agent's wire format."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from trio_agent.sse import SSEDecoder

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
SMALL_MOCK = ("--mock-ttft", "0.05", "--mock-itl", "0.01", "--mock-tokens", "7")


@contextmanager
def baseline(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run the baseline on port 0; yield (process, URL); always stop it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.baseline_asyncio", "--port", "0", *args],
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
        yield proc, m.group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


async def _health(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    r = await client.get(url + "/healthz")
    assert r.status_code == 200
    health: dict[str, Any] = r.json()
    return health


async def _wait_idle(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """Poll /healthz (real time, bounded by the caller's fail_after) until nothing runs."""
    while True:
        health = await _health(client, url)
        if health["in_flight"] == 0 and health["queued"] == 0:
            return health
        await trio.sleep(0.02)


async def test_streams_in_the_gateway_wire_format_and_exits_0_on_sigterm() -> None:
    # --gc-threshold as the benchmark suite passes it to both servers.
    with baseline(*SMALL_MOCK, "--gc-threshold", "50000") as (proc, url):
        with trio.fail_after(20):
            async with httpx.AsyncClient(timeout=10) as client:
                r = await client.post(url + "/chat/stream", json={"question": "hi there"})
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                events = SSEDecoder().feed(r.content)
                assert [e.event for e in events] == ["thinking"] + ["token"] * 7 + ["done"]
                assert [e.id for e in events] == [str(i) for i in range(1, 10)]
                datas = [json.loads(e.data) for e in events]
                assert [d["type"] for d in datas] == [e.event for e in events]
                assert all(d["content"] for d in datas[1:-1])
                assert datas[-1]["usage"] == {
                    "prompt_tokens": 2, "completion_tokens": 7, "total_tokens": 9,
                }  # fmt: skip
                assert datas[-1]["finish_reason"] == "stop"

                r = await client.post(
                    url + "/v1/chat/completions",
                    json={
                        "messages": [{"role": "user", "content": "hi"}],
                        "stream": True,
                        "stream_options": {"include_usage": True},
                    },
                )
                datas = [e.data for e in SSEDecoder().feed(r.content)]
                assert datas[-1] == "[DONE]"
                chunks = [json.loads(d) for d in datas[:-1]]
                # role, 7 tokens, finish_reason, usage
                assert len(chunks) == 10
                assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
                assert all(c["object"] == "chat.completion.chunk" for c in chunks)
                assert chunks[8]["choices"][0]["finish_reason"] == "stop"
                assert chunks[9]["choices"] == [] and chunks[9]["usage"]["completion_tokens"] == 7

                health = await _wait_idle(client, url)
                assert health["admitted"] == health["completed"] == 2
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - start < 5


async def test_a_full_queue_answers_service_busy_at_once() -> None:
    args = ("--max-concurrency", "1", "--max-queued", "1", "--mock-ttft", "0.05",
            "--mock-itl", "0.02", "--mock-tokens", "20")  # fmt: skip
    with baseline(*args) as (proc, url):
        with trio.fail_after(20):
            async with httpx.AsyncClient(timeout=10) as client:
                busy: list[httpx.Response] = []
                statuses: list[int] = []

                async def ask() -> None:
                    r = await client.post(url + "/chat/stream", json={"question": "hi"})
                    statuses.append(r.status_code)
                    if r.status_code == 503:
                        busy.append(r)
                    else:
                        assert SSEDecoder().feed(r.content)[-1].event == "done"

                async def until(check: Callable[[dict[str, Any]], bool]) -> None:
                    while True:  # polling another process: no event to wait on
                        if check(await _health(client, url)):
                            return
                        await trio.sleep(0.01)

                async with trio.open_nursery() as nursery:
                    # In order, each seen by the server before the next (two requests in one
                    # loop iteration can both meet the queue before its worker takes one).
                    nursery.start_soon(ask)
                    await until(lambda h: h["in_flight"] == 1 and h["queued"] == 0)
                    nursery.start_soon(ask)
                    await until(lambda h: h["queued"] == 1)
                    nursery.start_soon(ask)
                    nursery.start_soon(ask)
                # One runs, one waits in the queue, two are refused.
                assert sorted(statuses) == [200, 200, 503, 503]
                for r in busy:
                    assert r.headers["retry-after"] == "1"
                    assert r.json()["error"]["code"] == "overloaded"
                health = await _wait_idle(client, url)
                assert (health["admitted"], health["shed"], health["completed"]) == (2, 2, 2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0


async def test_proxy_mode_and_a_client_that_leaves_cancels_the_upstream_call() -> None:
    # The upstream is another baseline in mock mode: its /v1/chat/completions is OpenAI's format.
    long_mock = ("--mock-ttft", "0.05", "--mock-itl", "0.02", "--mock-tokens", "200")
    with baseline(*long_mock) as (_, upstream_url):
        with baseline("--upstream-url", upstream_url + "/v1") as (_, url):
            with trio.fail_after(20):
                async with httpx.AsyncClient(timeout=10) as client:
                    r = await client.post(
                        url + "/chat/stream", json={"question": "hi", "max_tokens": 5}
                    )
                    events = SSEDecoder().feed(r.content)
                    assert [e.event for e in events] == ["thinking"] + ["token"] * 5 + ["done"]
                    done = json.loads(events[-1].data)
                    assert done["usage"]["completion_tokens"] == 5
                    assert done["finish_reason"] == "length"  # as the upstream said

                    # Leave after two tokens: the gateway's job and its upstream call both end.
                    tokens = 0
                    async with client.stream(
                        "POST", url + "/chat/stream", json={"question": "hi"}
                    ) as r:
                        async for line in r.aiter_lines():
                            tokens += line == "event: token"
                            if tokens == 2:
                                break
                    gateway = await _wait_idle(client, url)
                    assert gateway["abandoned"] == 1 and gateway["completed"] == 1
                    upstream = await _wait_idle(client, upstream_url)
                    assert upstream["abandoned"] == 1 and upstream["completed"] == 1
