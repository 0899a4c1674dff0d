"""The OpenAI-compatible mock LLM server, end to end on a real Hypercorn on 127.0.0.1:0.

Every e2e test runs the server in-process (``serve_mock_llm`` in a nursery) and talks to it
over loopback with httpx or the official ``openai`` package, inside ``trio.fail_after``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from typing import Any

import httpx
import orjson
import pytest
import trio

from tests._mock_server import serving_mock_llm
from trio_agent.cli import main
from trio_agent.config import MockLLMConfig, MockServerConfig
from trio_agent.errors import ConfigError, RequestValidationError
from trio_agent.mock_server import (
    Fault,
    MockServerApp,
    draw_fault,
    parse_fault_header,
)
from trio_agent.sse import SSEDecoder

FAST = MockLLMConfig(ttft=0.0, itl=0.001, tokens=12, seed=1)
BODY: dict[str, Any] = {"model": "mock-llm", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**BODY, "stream": True}


@asynccontextmanager
async def running(
    config: MockServerConfig | None = None,
) -> AsyncIterator[tuple[httpx.AsyncClient, MockServerApp]]:
    config = config or MockServerConfig(port=0, llm=FAST, drain_timeout=0.2)
    app = MockServerApp(config)
    async with serving_mock_llm(config, app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            yield client, app


def frames(raw: bytes) -> list[str]:
    decoder = SSEDecoder()
    return [e.data for e in decoder.feed(raw)]


async def wait_for_idle(app: MockServerApp) -> None:
    """The server notices a client leaving over a real socket; wait (bounded) until it has."""
    await app.wait_until(lambda s: s.active == 0 and s.queued == 0)


# -- X-Mock-Fault grammar and the random draw (no I/O) --------------------------------


@pytest.mark.parametrize(
    ("header", "fault"),
    [
        ("503", Fault(status=503)),
        ("500", Fault(status=500)),
        ("429;retry-after=2", Fault(status=429, retry_after=2.0)),
        ("stall-after=5", Fault(stall_after=5)),
        ("drop-after=5", Fault(drop_after=5)),
        ("error-after=0", Fault(error_after=0)),
        ("ttft=3.0", Fault(ttft=3.0)),
        ("slow-bytes", Fault(slow_bytes=True)),
        (" ttft=1.5 , drop-after=3 ", Fault(ttft=1.5, drop_after=3)),
        ("", Fault()),
    ],
)
def test_fault_header_grammar(header: str, fault: Fault) -> None:
    assert parse_fault_header(header) == fault


@pytest.mark.parametrize(
    "header",
    ["200", "429;wait=2", "stall-after", "drop-after=-1", "ttft=x", "ttft=inf", "slow-bytes=1",
     "explode", "stall-after=2;retry-after=1"],
)
def test_bad_fault_header_is_a_400(header: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        parse_fault_header(header)
    assert info.value.status_code == 400 and info.value.field == "X-Mock-Fault"


def test_random_faults_follow_the_rates_and_the_seed() -> None:
    config = MockServerConfig(fault_503_rate=0.2, fault_drop_rate=0.3, fault_after_tokens=7)
    draws = [draw_fault(config, random.Random(4)) for _ in range(3)]
    assert draws[0] == draws[1] == draws[2]  # same seed, same fault
    rng = random.Random(0)
    faults = [draw_fault(config, rng) for _ in range(10_000)]
    n503 = sum(f.status == 503 for f in faults)
    ndrop = sum(f.drop_after == 7 for f in faults)
    assert 1800 < n503 < 2200 and 2800 < ndrop < 3200
    assert sum(not f.injected for f in faults) == 10_000 - n503 - ndrop
    assert draw_fault(MockServerConfig(), rng) == Fault()


def test_config_refuses_rates_above_one() -> None:
    with pytest.raises(ConfigError):
        MockServerConfig(fault_500_rate=0.6, fault_stall_rate=0.6)
    with pytest.raises(ConfigError):
        MockServerConfig(fault_429_rate=-0.1)


# -- the wire format -------------------------------------------------------------------


@pytest.mark.e2e
async def test_stream_shape_with_usage_and_done() -> None:
    with trio.fail_after(5):
        async with running() as (client, app):
            body = {**STREAM, "stream_options": {"include_usage": True}}
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            data = frames(r.content)
            assert data[-1] == "[DONE]"
            chunks = [orjson.loads(d) for d in data[:-1]]
            ids = {c["id"] for c in chunks}
            assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-")
            for c in chunks:
                assert c["object"] == "chat.completion.chunk" and c["model"] == "mock-llm"
                assert isinstance(c["created"], int)
            assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            contents = chunks[1:13]
            assert all(c["choices"][0]["finish_reason"] is None for c in contents)
            text = "".join(c["choices"][0]["delta"]["content"] for c in contents)
            assert len(text.split()) == 12
            assert chunks[13]["choices"] == [
                {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
            ]
            assert chunks[14]["choices"] == []
            assert chunks[14]["usage"] == {"prompt_tokens": 1, "completion_tokens": 12, "total_tokens": 13}
            assert all(c["usage"] is None for c in chunks[:14])
            assert len(chunks) == 15
            await wait_for_idle(app)
            stats = app.statistics()
            assert (stats.requests, stats.completed, stats.tokens, stats.active) == (1, 1, 12, 0)


@pytest.mark.e2e
async def test_stream_without_usage_and_max_tokens_is_length() -> None:
    with trio.fail_after(5):
        async with running() as (client, _):
            r = await client.post("/v1/chat/completions", json={**STREAM, "max_tokens": 3})
            chunks = [orjson.loads(d) for d in frames(r.content)[:-1]]
            assert all("usage" not in c for c in chunks)
            assert len(chunks) == 5  # role+first token are two frames, then 2 tokens, then finish
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.e2e
async def test_non_stream_completion_shape() -> None:
    with trio.fail_after(5):
        async with running() as (client, app):
            r = await client.post("/v1/chat/completions", json={**BODY, "model": "gpt-x"})
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            doc = r.json()
            assert doc["object"] == "chat.completion" and doc["model"] == "gpt-x"
            (choice,) = doc["choices"]
            assert choice["message"]["role"] == "assistant"
            assert len(choice["message"]["content"].split()) == 12
            assert choice["finish_reason"] == "stop"
            assert doc["usage"] == {"prompt_tokens": 1, "completion_tokens": 12, "total_tokens": 13}
            await wait_for_idle(app)
            assert app.statistics().completed == 1


@pytest.mark.e2e
async def test_models_and_openai_error_shape() -> None:
    with trio.fail_after(5):
        async with running() as (client, app):
            r = await client.get("/v1/models")
            assert r.json() == {
                "object": "list",
                "data": [{"id": "mock-llm", "object": "model", "created": 0, "owned_by": "trio-agent"}],
            }
            cases = [
                (b"{not json", {}, 400),
                (orjson.dumps({"messages": []}), {}, 400),
                (orjson.dumps({**BODY, "stream": "yes"}), {}, 400),
                (orjson.dumps({**BODY, "max_tokens": 0}), {}, 400),
                (orjson.dumps(BODY), {"x-mock-fault": "explode"}, 400),
            ]
            for content, headers, status in cases:
                r = await client.post("/v1/chat/completions", content=content, headers=headers)
                assert r.status_code == status
                error = r.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert error["type"] == "invalid_request_error" and error["message"]
            assert (await client.get("/nope")).status_code == 404
            assert (await client.get("/v1/chat/completions")).status_code == 405
            assert app.statistics().completed == 0


# -- faults ----------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("header", "status", "retry_after", "type_"),
    [
        ("503", 503, None, "server_error"),
        ("500", 500, None, "server_error"),
        ("429;retry-after=2", 429, "2", "requests"),
        ("429", 429, "1", "requests"),
    ],
)
async def test_status_faults(header: str, status: int, retry_after: str | None, type_: str) -> None:
    with trio.fail_after(5):
        async with running() as (client, app):
            r = await client.post("/v1/chat/completions", json=STREAM, headers={"x-mock-fault": header})
            assert r.status_code == status
            assert r.headers.get("retry-after") == retry_after
            assert r.json()["error"]["type"] == type_
            stats = app.statistics()
            assert (stats.faults, stats.completed, stats.tokens) == (1, 0, 0)


async def _content_frames(raws: AsyncIterator[bytes], count: int) -> list[dict[str, Any]]:
    """Read until ``count`` content deltas arrived; return every chunk read."""
    decoder = SSEDecoder()
    chunks: list[dict[str, Any]] = []
    async for raw in raws:
        chunks += [orjson.loads(e.data) for e in decoder.feed(raw)]
        if sum(bool(c["choices"] and c["choices"][0]["delta"].get("content")) for c in chunks) >= count:
            return chunks
    raise AssertionError(f"stream ended after {chunks!r}")


@pytest.mark.e2e
async def test_stall_after_sends_k_tokens_then_nothing_and_leaving_counts_cancelled() -> None:
    with trio.fail_after(5):
        async with running() as (client, app):
            headers = {"x-mock-fault": "stall-after=5"}
            async with client.stream("POST", "/v1/chat/completions", json=STREAM, headers=headers) as r:
                raws = r.aiter_raw()
                chunks = await _content_frames(raws, 5)
                assert len(chunks) == 6  # role + 5 tokens
                with trio.move_on_after(0.2) as quiet:  # 200 ticks of itl: nothing comes
                    async for raw in raws:
                        raise AssertionError(f"a stalled stream sent {raw!r}")
                assert quiet.cancelled_caught
            await wait_for_idle(app)
            stats = app.statistics()
            assert (stats.faults, stats.cancelled, stats.completed, stats.tokens) == (1, 1, 0, 5)


@pytest.mark.e2e
async def test_drop_after_cuts_the_connection_without_a_clean_end() -> None:
    with trio.fail_after(5):
        async with running() as (client, app):
            headers = {"x-mock-fault": "drop-after=5"}
            seen = b""
            with pytest.raises(httpx.RemoteProtocolError):
                async with client.stream("POST", "/v1/chat/completions", json=STREAM, headers=headers) as r:
                    async for raw in r.aiter_raw():
                        seen += raw
            data = frames(seen)
            assert len(data) == 6 and "[DONE]" not in data
            await wait_for_idle(app)
            stats = app.statistics()
            assert (stats.faults, stats.cancelled, stats.completed, stats.tokens) == (1, 0, 0, 5)
            # The server is fine afterwards.
            assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 200


@pytest.mark.e2e
async def test_drop_after_without_streaming_leaves_an_incomplete_body() -> None:
    with trio.fail_after(5):
        async with running() as (client, _):
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post("/v1/chat/completions", json=BODY, headers={"x-mock-fault": "drop-after=2"})


@pytest.mark.e2e
async def test_error_after_sends_an_error_frame_and_no_done() -> None:
    with trio.fail_after(5):
        async with running() as (client, app):
            r = await client.post("/v1/chat/completions", json=STREAM, headers={"x-mock-fault": "error-after=5"})
            assert r.status_code == 200
            data = frames(r.content)
            await wait_for_idle(app)
            assert len(data) == 7 and "[DONE]" not in data
            error = orjson.loads(data[-1])["error"]
            assert error["type"] == "server_error" and error["message"]
            assert (app.statistics().faults, app.statistics().completed) == (1, 0)
            r = await client.post("/v1/chat/completions", json=BODY, headers={"x-mock-fault": "error-after=5"})
            assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"


@pytest.mark.e2e
async def test_ttft_fault_delays_the_first_token() -> None:
    config = MockServerConfig(port=0, llm=replace(FAST, itl=0.01, tokens=1000), drain_timeout=0.2)
    with trio.fail_after(5):
        async with running(config) as (client, app):
            start = trio.current_time()
            headers = {"x-mock-fault": "ttft=0.3"}
            async with client.stream("POST", "/v1/chat/completions", json=STREAM, headers=headers) as r:
                assert r.status_code == 200  # headers come at once
                raws = r.aiter_raw()
                await _content_frames(raws, 1)
                assert trio.current_time() - start >= 0.3
            await wait_for_idle(app)
            assert app.statistics().completed == 0  # closed after the first token: cancelled
            assert app.statistics().cancelled == 1


@pytest.mark.e2e
async def test_slow_bytes_dribbles_the_same_stream() -> None:
    llm = replace(FAST, tokens=2)
    config = MockServerConfig(port=0, llm=llm, slow_bytes_delay=0.0005, drain_timeout=0.2)
    with trio.fail_after(10):
        async with running(config) as (client, app):
            fast = frames((await client.post("/v1/chat/completions", json=STREAM)).content)
            reads = 0
            raw = b""
            start = trio.current_time()
            headers = {"x-mock-fault": "slow-bytes"}
            async with client.stream("POST", "/v1/chat/completions", json=STREAM, headers=headers) as r:
                async for piece in r.aiter_raw():
                    reads += 1
                    raw += piece
            slow = frames(raw)
            assert trio.current_time() - start >= len(raw) * 0.0005
            assert reads > len(raw) // 4  # mostly single bytes (a slow reader may get a few at once)
            await wait_for_idle(app)
            assert len(slow) == len(fast) == 5  # role, 2 tokens, finish, [DONE]
            for data in (fast, slow):
                chunks = [orjson.loads(d)["choices"][0] for d in data[:-1]]
                assert len("".join(c["delta"].get("content", "") for c in chunks).split()) == 2
                assert chunks[-1]["finish_reason"] == "stop"
            assert slow[-1] == "[DONE]" and app.statistics().completed == 2


@pytest.mark.e2e
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
async def test_leaving_a_slow_bytes_reply_during_its_last_write_cancels_it(stream: bool) -> None:
    # Tokens due together go out in one write, so the last write of a slow-bytes reply holds
    # most of it (here ~2.5 KB, > 2.5 s at 1 ms a byte). A client leaving during it must stop it
    # at once and count as cancelled, as anywhere else in the reply.
    config = MockServerConfig(port=0, llm=FAST, slow_bytes_delay=0.001, drain_timeout=0.2)
    with trio.fail_after(5):
        async with running(config) as (client, app):
            headers = {"x-mock-fault": "slow-bytes"}
            body = STREAM if stream else BODY
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                seen = 0
                async for piece in r.aiter_raw():
                    seen += len(piece)
                    # Streaming: past the first write (role and first token), into the last one.
                    if seen > (600 if stream else 100):
                        break
            with trio.fail_after(1):
                # Idle *and* accounted: ``active`` drops before the request's outcome is
                # counted, so waiting for idle alone races the counters under load.
                await app.wait_until(
                    lambda s: s.active == 0 and s.queued == 0 and s.cancelled + s.completed >= 1
                )
            stats = app.statistics()
            assert (stats.cancelled, stats.completed) == (1, 0)


@pytest.mark.e2e
async def test_faults_configured_on_the_mock_llm_become_openai_errors() -> None:
    config = MockServerConfig(port=0, llm=replace(FAST, fail_after_tokens=2), drain_timeout=0.2)
    with trio.fail_after(5):
        async with running(config) as (client, app):
            data = frames((await client.post("/v1/chat/completions", json=STREAM)).content)
            assert len(data) == 4 and orjson.loads(data[-1])["error"]["type"] == "server_error"
            r = await client.post("/v1/chat/completions", json=BODY)
            assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    config = MockServerConfig(port=0, llm=replace(FAST, fail_before_first=True), drain_timeout=0.2)
    with trio.fail_after(5):
        async with running(config) as (client, app):
            r = await client.post("/v1/chat/completions", json=BODY)
            assert r.status_code == 503
            await wait_for_idle(app)
            assert app.statistics().completed == 0


@pytest.mark.e2e
async def test_random_fault_rate_one_always_fails() -> None:
    config = MockServerConfig(port=0, llm=FAST, fault_503_rate=1.0, drain_timeout=0.2)
    with trio.fail_after(5):
        async with running(config) as (client, app):
            for _ in range(3):
                assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 503
            assert app.statistics().faults == 3


# -- capacity and statistics ----------------------------------------------------------


@pytest.mark.e2e
async def test_past_capacity_is_429_with_retry_after_and_a_queued_request_waits() -> None:
    llm = replace(FAST, itl=0.01, tokens=1000)
    config = MockServerConfig(
        port=0, llm=llm, max_concurrency=1, max_queued=1, max_queue_wait=0.2, retry_after=3,
        drain_timeout=0.2,
    )
    with trio.fail_after(5):
        async with running(config) as (client, app):
            async with client.stream("POST", "/v1/chat/completions", json=STREAM) as r:
                raws = r.aiter_raw()  # keep it: a collected iterator closes the response
                await _content_frames(raws, 1)
                async with trio.open_nursery() as nursery:
                    queued: list[httpx.Response] = []

                    async def wait_in_queue() -> None:
                        queued.append(await client.post("/v1/chat/completions", json={**BODY, "max_tokens": 1}))

                    nursery.start_soon(wait_in_queue)
                    await app.wait_until(lambda s: s.queued == 1)
                    refused = await client.post("/v1/chat/completions", json=BODY)
                    assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
                    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
                # The queued one waited max_queue_wait and was refused too.
                assert queued[0].status_code == 429
            await wait_for_idle(app)
            # The stream's slot is released a moment before it is counted as cancelled.
            await app.wait_until(lambda s: s.cancelled == 1)
            stats = app.statistics()
            assert (stats.rejected, stats.cancelled, stats.active, stats.queued) == (2, 1, 0, 0)
            # A slot is free again.
            r = await client.post("/v1/chat/completions", json={**BODY, "max_tokens": 2})
            assert r.status_code == 200


@pytest.mark.e2e
async def test_a_client_leaving_the_queue_frees_its_place_at_once() -> None:
    llm = replace(FAST, itl=0.01, tokens=1000)
    config = MockServerConfig(
        port=0, llm=llm, max_concurrency=1, max_queued=1, max_queue_wait=30, drain_timeout=0.2
    )
    with trio.fail_after(5):
        async with running(config) as (client, app):
            async with client.stream("POST", "/v1/chat/completions", json=STREAM) as r:
                raws = r.aiter_raw()
                await _content_frames(raws, 1)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(partial(client.post, "/v1/chat/completions", json=BODY))
                    await app.wait_until(lambda s: s.queued == 1)
                    nursery.cancel_scope.cancel()  # the queued client hangs up
                stats = await app.wait_until(lambda s: s.cancelled == 1)
                assert (stats.queued, stats.active, stats.rejected) == (0, 1, 0)


@pytest.mark.e2e
async def test_stats_count_cancelled_and_peak_active_and_reset_zeroes_them() -> None:
    llm = replace(FAST, itl=0.01, tokens=1000)
    config = MockServerConfig(port=0, llm=llm, drain_timeout=0.2)
    with trio.fail_after(5):
        async with running(config) as (client, app):

            async def leave_after_two_tokens() -> None:
                async with client.stream("POST", "/v1/chat/completions", json=STREAM) as r:
                    raws = r.aiter_raw()
                    await _content_frames(raws, 2)
                    await app.wait_until(lambda s: s.peak_active == 3)  # all three at once

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(leave_after_two_tokens)
            await wait_for_idle(app)
            stats = (await client.get("/mock/stats")).json()
            assert stats["active"] == 0 and stats["peak_active"] == 3
            assert stats["requests"] == 3 and stats["cancelled"] == 3 and stats["completed"] == 0
            assert stats["tokens"] >= 6
            after = (await client.post("/mock/reset")).json()
            assert after == {
                "active": 0, "queued": 0, "peak_active": 0, "requests": 0, "completed": 0,
                "cancelled": 0, "rejected": 0, "faults": 0, "tokens": 0,
            }
            assert "active=0" in repr(app)


# -- the official openai client ---------------------------------------------------------


@pytest.mark.e2e
async def test_official_openai_client_streams_and_completes() -> None:
    openai = pytest.importorskip("openai")
    with trio.fail_after(10):
        async with running() as (client, _):

            def use_openai() -> tuple[str, str, Any, str]:
                oa = openai.OpenAI(base_url=str(client.base_url).rstrip("/") + "/v1", api_key="x", max_retries=0)
                try:
                    stream = oa.chat.completions.create(
                        model="mock-llm", messages=[{"role": "user", "content": "hi"}], stream=True,
                        stream_options={"include_usage": True},
                    )
                    parts, usage = [], None
                    for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            parts.append(chunk.choices[0].delta.content)
                        if chunk.usage is not None:
                            usage = chunk.usage
                    done = oa.chat.completions.create(
                        model="mock-llm", messages=[{"role": "user", "content": "hi"}]
                    )
                    return "".join(parts), done.choices[0].message.content or "", usage, done.choices[0].finish_reason
                finally:
                    oa.close()

            streamed, whole, usage, finish = await trio.to_thread.run_sync(use_openai)
            assert len(streamed.split()) == 12 and len(whole.split()) == 12
            assert usage.completion_tokens == 12 and finish == "stop"


# -- the CLI ----------------------------------------------------------------------------


def test_cli_refuses_bad_fault_rates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mock-llm", "--fault-rate", "boom=0.1"]) == 2
    assert main(["mock-llm", "--fault-rate", "503=lots"]) == 2
    assert main(["mock-llm", "--fault-rate", "503=0.7", "--fault-rate", "drop=0.7"]) == 2
    assert capsys.readouterr().err.count("trio-agent mock-llm:") == 3


@pytest.mark.e2e
async def test_cli_announces_its_address_and_exits_0_on_sigint() -> None:
    with trio.fail_after(15):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_agent", "mock-llm", "--port", "0", "--tokens", "3",
             "--ttft", "0", "--itl", "0", "--fault-rate", "500=0.0"],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert proc.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                line += await proc.stdout.receive_some(1)
            prefix = b"mock LLM listening on http://127.0.0.1:"
            assert line.startswith(prefix)
            url = line.decode().strip().removeprefix("mock LLM listening on ")
            async with httpx.AsyncClient(base_url=url) as client:
                r = await client.post("/v1/chat/completions", json=BODY)
                assert len(r.json()["choices"][0]["message"]["content"].split()) == 3
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
