"""serve() end to end: a real Hypercorn on 127.0.0.1 port 0, httpx as the client, real time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import orjson
import pytest
import trio

from tests._fakes import FakeLLM, assert_released
from trio_agent.config import MockLLMConfig, ServerConfig
from trio_agent.server import Gateway, serve, worker_config
from trio_agent.sse import ServerSentEvent, SSEDecoder

Q = {"question": "hello"}
V1_STREAM = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": True}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@asynccontextmanager
async def running(
    mock: MockLLMConfig, **server: Any
) -> AsyncIterator[tuple[str, Gateway, FakeLLM]]:
    llm = FakeLLM(mock)
    apps: list[Gateway] = []
    stop = trio.Event()
    config = ServerConfig(port=0, access_log=False, **server, max_loop_lag=0)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(
            partial(
                serve,
                config,
                handle_signals=False,
                shutdown_trigger=stop.wait,
                backend=llm,
                on_app=apps.append,
            )
        )
        try:
            yield f"http://{host}:{port}", apps[0], llm
        finally:
            stop.set()


class RawSSE:
    """A minimal HTTP/1.1 client over a trio TCP stream, for reading part of a stream and
    leaving mid-way (httpx's nested async generators warn when abandoned half-read)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.status = 0
        self.headers: dict[str, str] = {}
        self._buf = b""
        self._body = b""
        self._decoder = SSEDecoder()
        self._pending: list[ServerSentEvent] = []
        self._eof = False

    @classmethod
    async def post(cls, url: str, path: str, body: Any) -> RawSSE:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        data = orjson.dumps(body)
        self = cls(await trio.open_tcp_stream(host, int(port)))
        await self.stream.send_all(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode() + data
        )
        while b"\r\n\r\n" not in self._buf:
            await self._fill()
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        return self

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            self._eof = True
            raise EOFError
        self._buf += chunk

    async def _next_chunk(self) -> bytes | None:
        """One chunk of the chunked body, None at its end."""
        try:
            while b"\r\n" not in self._buf:
                await self._fill()
            size_line, rest = self._buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                await self._fill()
                rest = self._buf.split(b"\r\n", 1)[1]
        except EOFError:
            return None
        self._buf = rest[size + 2 :]
        return None if size == 0 else rest[:size]

    async def take(self, n: int) -> list[ServerSentEvent]:
        while len(self._pending) < n:
            chunk = await self._next_chunk()
            if chunk is None:
                break
            self._pending.extend(self._decoder.feed(chunk))
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    async def rest(self) -> list[ServerSentEvent]:
        return await self.take(1 << 30)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def read_events(response: httpx.Response) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    async for chunk in response.aiter_raw():
        events.extend(decoder.feed(chunk))
    return events


@pytest.mark.e2e
async def test_streams_through_hypercorn() -> None:
    with trio.fail_after(10):
        async with running(MockLLMConfig(ttft=0.02, itl=0.005, tokens=5)) as (url, gw, llm):
            async with httpx.AsyncClient(base_url=url) as client:
                async with client.stream("POST", "/chat/stream", json=Q) as r:
                    assert r.status_code == 200
                    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
                    events = await read_events(r)
                health = await client.get("/healthz")
            assert [e.event for e in events] == ["thinking"] + ["token"] * 5 + ["done"]
            assert health.status_code == 200
            assert_released(gw, llm)
            # Under the pinned Hypercorn the tokens take the direct path (a Hypercorn
            # whose objects no longer fit would silently fall back: this fails then).
            assert gw.metrics.direct_token_events >= 1


@pytest.mark.e2e
async def test_gc_threshold_holds_while_serving_and_is_restored() -> None:
    import gc

    before = gc.get_threshold()
    assert before[0] != 12_345
    with trio.fail_after(10):
        async with running(MockLLMConfig(tokens=1), gc_threshold=12_345) as (url, _gw, _llm):
            assert gc.get_threshold() == (12_345, *before[1:])
            async with httpx.AsyncClient(base_url=url) as client:
                metrics = (await client.get("/metrics")).text.splitlines()
    assert gc.get_threshold() == before
    assert any(line.startswith('trio_agent_gc_collections_total{generation="0"} ') for line in metrics)
    async with running(MockLLMConfig(tokens=1), gc_threshold=0):
        assert gc.get_threshold() == before  # 0: the collector is left as it is


@pytest.mark.e2e
@pytest.mark.parametrize("direct", [True, False])
async def test_direct_writes_and_asgi_writes_send_the_same_stream(direct: bool) -> None:
    with trio.fail_after(10):
        mock = MockLLMConfig(ttft=0.01, itl=0.002, tokens=40, seed=3)
        async with running(mock, direct_writes=direct) as (url, gw, llm):
            async with httpx.AsyncClient(base_url=url) as client:
                for path, body in (("/chat/stream", Q), ("/v1/chat/completions", V1_STREAM)):
                    async with client.stream("POST", path, json=body) as r:
                        assert r.status_code == 200
                        events = await read_events(r)
                    text = "".join(
                        orjson.loads(e.data)["content"] if e.event == "token"
                        else (orjson.loads(e.data)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                        if e.event == "message" and e.data != "[DONE]" else ""
                        for e in events
                    )
                    assert len(text.split()) == 40
                    assert events[-1].data == "[DONE]" or events[-1].event == "done"
            assert_released(gw, llm)
            assert (gw.metrics.direct_token_events > 0) is direct
            assert gw.metrics.tokens_streamed == 80


@pytest.mark.e2e
async def test_disconnect_cancels_upstream_and_frees_the_slot_within_100ms() -> None:
    with trio.fail_after(10):
        async with running(MockLLMConfig(ttft=0.01, itl=0.05, tokens=1000)) as (url, gw, llm):
            sse = await RawSSE.post(url, "/chat/stream", Q)
            assert len(await sse.take(3)) == 3
            assert gw.limits.statistics().in_flight == 1
            left_at = trio.current_time()
            await sse.aclose()  # the client leaves mid-stream
            # polling at 1 ms is the measurement itself (no event marks "slot free")
            while gw.limits.statistics().in_flight or llm.cancelled == 0:  # noqa: ASYNC110
                await trio.sleep(0.001)
            latency = trio.current_time() - left_at
            print(f"disconnect -> slot free: {latency * 1000:.1f} ms")
            assert latency < 1.0  # a hang or a tenfold regression; benchmarks give the figure
            assert llm.cancelled == 1
            assert gw.metrics.disconnects == 1
            assert_released(gw, llm)


@pytest.mark.e2e
async def test_overload_is_503_while_admitted_streams_complete() -> None:
    with trio.fail_after(10):
        mock = MockLLMConfig(ttft=0.2, itl=0.01, tokens=5)
        async with running(mock, max_concurrency=1, max_queued=0) as (url, gw, llm):
            first = await RawSSE.post(url, "/chat/stream", Q)
            head = await first.take(1)
            async with httpx.AsyncClient(base_url=url) as client:
                refused = await client.post("/chat/stream", json=Q)
            rest = await first.rest()
            await first.aclose()
            assert head[0].event == "thinking"
            assert refused.status_code == 503
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["code"] == "overloaded"
            assert rest[-1].event == "done"
            assert_released(gw, llm)


@pytest.mark.e2e
async def test_deadline_ends_in_an_error_event() -> None:
    with trio.fail_after(10):
        mock = MockLLMConfig(ttft=0.01, itl=0.01, tokens=10, stall_after_tokens=2)
        async with running(mock, request_timeout=0.3) as (url, gw, llm):
            async with httpx.AsyncClient(base_url=url) as client:
                async with client.stream("POST", "/chat/stream", json=Q) as r:
                    events = await read_events(r)
            assert [e.event for e in events] == ["thinking", "token", "token", "error"]
            assert orjson.loads(events[-1].data)["code"] == "timeout"
            assert_released(gw, llm)


@pytest.mark.e2e
async def test_shutdown_trigger_drains_in_flight_streams() -> None:
    with trio.fail_after(10):
        llm = FakeLLM(MockLLMConfig(ttft=0.01, itl=0.05, tokens=1000))
        stop = trio.Event()
        apps: list[Gateway] = []
        config = ServerConfig(port=0, access_log=False, drain_timeout=0.3, max_loop_lag=0)
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(
                partial(serve, config, handle_signals=False, shutdown_trigger=stop.wait,
                        backend=llm, on_app=apps.append)
            )
            sse = await RawSSE.post(f"http://{host}:{port}", "/chat/stream", Q)
            await sse.take(2)
            stopped_at = trio.current_time()
            stop.set()
            events = await sse.rest()
            await sse.aclose()
        took = trio.current_time() - stopped_at
        assert events[-1].event == "error"
        assert orjson.loads(events[-1].data)["code"] == "shutting_down"
        assert 0.3 <= took < 2.5
        assert_released(apps[0], llm)


def test_the_upstream_pool_is_sized_to_the_admission_cap(caplog: pytest.LogCaptureFixture) -> None:
    from trio_agent.config import UpstreamConfig
    from trio_agent.server._serve import upstream_for

    def config(**upstream: Any) -> ServerConfig:
        return ServerConfig(
            max_concurrency=1000,
            upstream=UpstreamConfig(base_url="http://u.test/v1", **upstream),
        )

    sized = upstream_for(config())
    assert (sized.connections, sized.keepalive_connections) == (1000, 1000)
    assert not caplog.records
    kept = upstream_for(config(max_connections=2000, max_keepalive_connections=10))
    assert (kept.connections, kept.keepalive_connections) == (2000, 10)
    assert not caplog.records
    with caplog.at_level("WARNING"):
        small = upstream_for(config(max_connections=200))
    assert small.connections == 200
    assert "max_connections (200) < max_concurrency (1000)" in caplog.text


def test_worker_config_splits_the_admission_limits() -> None:
    share = worker_config(ServerConfig(workers=4, max_concurrency=50, max_queued=10))
    assert (share.workers, share.max_concurrency, share.max_queued) == (1, 12, 2)
    assert worker_config(ServerConfig(workers=8, max_concurrency=3)).max_concurrency == 1


class _HugeTokens(FakeLLM):
    """64 KiB deltas every millisecond: fills any socket buffer within a second."""

    async def _chunks(self, request: Any) -> AsyncIterator[Any]:
        from trio_agent.llm import ChatChunk

        for _ in range(100_000):
            await trio.sleep(0.001)
            yield ChatChunk(delta="x" * 65536)


@pytest.mark.e2e
async def test_a_reader_that_stops_reading_is_cut_off_after_write_timeout() -> None:
    with trio.fail_after(15):
        llm = _HugeTokens(MockLLMConfig())
        stop = trio.Event()
        apps: list[Gateway] = []
        config = ServerConfig(port=0, access_log=False, write_timeout=0.5, drain_timeout=0.5, max_loop_lag=0)
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(
                partial(serve, config, handle_signals=False, shutdown_trigger=stop.wait,
                        backend=llm, on_app=apps.append)
            )
            gw = apps[0]
            sse = await RawSSE.post(f"http://{host}:{port}", "/chat/stream", Q)
            assert sse.status == 200
            started = trio.current_time()
            # the client reads nothing more; the gateway must not buffer without bound
            while gw.limits.statistics().in_flight:  # noqa: ASYNC110
                await trio.sleep(0.01)
            assert trio.current_time() - started < 5.0
            assert gw.metrics.write_stalls == 1 and llm.cancelled == 1
            await sse.aclose()
            stopped_at = trio.current_time()
            stop.set()
        assert trio.current_time() - stopped_at < 2.0
        assert_released(gw, llm)


@pytest.mark.e2e
async def test_the_openai_client_streams_through_v1() -> None:
    import openai

    with trio.fail_after(15):
        mock = MockLLMConfig(ttft=0.01, itl=0.001, tokens=4)
        async with running(mock, api_keys=frozenset({"sk-gw"})) as (url, gw, llm):

            def use_openai() -> tuple[str, Any, list[str], str]:
                client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-gw", max_retries=0)
                parts: list[str] = []
                usage = None
                stream = client.chat.completions.create(
                    model="mock-llm",
                    messages=[{"role": "user", "content": "hi"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        parts.append(chunk.choices[0].delta.content)
                    if chunk.usage is not None:
                        usage = chunk.usage
                whole = client.chat.completions.create(
                    model="mock-llm", messages=[{"role": "user", "content": "hi"}]
                )
                models = [m.id for m in client.models.list()]
                try:
                    openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
                except openai.AuthenticationError as exc:
                    refused = str(exc.code)
                else:  # pragma: no cover
                    refused = "accepted"
                assert usage is not None
                return "".join(parts), (whole.choices[0].message.content, usage.total_tokens), models, refused

            streamed, (whole, total), models, refused = await trio.to_thread.run_sync(use_openai)
            assert streamed == whole == "t0 t1 t2 t3 "
            assert total == 7
            assert models == ["mock-llm"]
            assert refused == "unauthorized"
            assert_released(gw, llm)


@pytest.mark.e2e
async def test_idle_keepalive_connections_do_not_hold_up_shutdown() -> None:
    """After a Quart-served answer the keep-alive connection must still close on shutdown
    (quart-trio cancels the last send half-way unless the gateway shields it)."""
    with trio.fail_after(10):
        llm = FakeLLM(MockLLMConfig(ttft=0.01, tokens=2))
        stop = trio.Event()
        config = ServerConfig(port=0, access_log=False, drain_timeout=5.0, max_loop_lag=0)
        async with httpx.AsyncClient() as client:
            async with trio.open_nursery() as nursery:
                host, port = await nursery.start(
                    partial(serve, config, handle_signals=False, shutdown_trigger=stop.wait, backend=llm)
                )
                for path in ("/healthz", "/nope"):
                    await client.get(f"http://{host}:{port}{path}")
                await client.post(f"http://{host}:{port}/chat", json=Q)
                stopped_at = trio.current_time()
                stop.set()
            assert trio.current_time() - stopped_at < 3.0


# -- the CLI process and SIGTERM ------------------------------------------------------------


async def _start_cli(*args: str, env: dict[str, str] | None = None) -> tuple[trio.Process, str]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests._serve_fake", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        chunk = await proc.stdout.receive_some(1)
        assert chunk, "server exited before printing its URL"
        line += chunk
    text = line.decode()
    assert "listening on http://" in text
    url = text.split("listening on ", 1)[1].split()[0]
    return proc, url


@pytest.mark.e2e
async def test_sigterm_drains_and_exits_zero() -> None:
    with trio.fail_after(20):
        proc, url = await _start_cli("1")
        try:
            sse = await RawSSE.post(url, "/chat/stream", Q)
            await sse.take(3)
            proc.send_signal(signal.SIGTERM)
            signalled_at = trio.current_time()
            events = await sse.rest()
            await sse.aclose()
            assert events[-1].event in ("done", "error")
            if events[-1].event == "error":
                assert orjson.loads(events[-1].data)["code"] == "shutting_down"
            assert sum(e.event in ("done", "error") for e in events) == 1
            with trio.fail_after(1 + 2):
                code = await proc.wait()
            assert code == 0
            assert trio.current_time() - signalled_at < 1 + 2
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.mark.e2e
async def test_sigint_with_idle_server_exits_zero_at_once() -> None:
    with trio.fail_after(20):
        proc, url = await _start_cli("5")
        try:
            async with httpx.AsyncClient(base_url=url) as client:
                assert (await client.get("/readyz")).status_code == 200
            proc.send_signal(signal.SIGINT)
            with trio.fail_after(3):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.mark.e2e
async def test_the_gateway_exposes_its_listener_and_connection_counts() -> None:
    from tests._reliability import running_gateway

    config = ServerConfig(access_log=False, mock=MockLLMConfig(ttft=0.0, itl=0.0, tokens=1))
    with trio.fail_after(10):
        async with running_gateway(config) as srv:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.port}") as client:
                assert (await client.get("/healthz")).status_code == 200
            (listener,) = srv.gw.listeners
            assert listener.statistics().accepted >= 1
            assert srv.gw.connections.opened >= 1
