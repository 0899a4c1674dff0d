"""Client faults against a real Hypercorn on port 0: clients that leave, stop reading, trickle
their headers or body, or send too much.

Figures print with ``pytest -s -m e2e tests/test_reliability_client.py``.
"""

from __future__ import annotations

import gc
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
import trio

from tests._reliability import (
    HOST,
    RawResponse,
    _Reader,
    build_request,
    percentile,
    raw_request,
    running_gateway,
)
from trio_agent.config import MockLLMConfig, ServerConfig
from trio_agent.llm import ChatChunk, ChatCompletion, ChatRequest, MockLLM, MockLLMStatistics

Q = {"question": "hello"}


class ExitTimes:
    """A MockLLM wrapper that records when each stream's block was left, by question."""

    def __init__(self, inner: MockLLM) -> None:
        self.inner = inner
        self.exits: dict[str, float] = {}

    @property
    def model(self) -> str:
        return self.inner.model

    def statistics(self) -> MockLLMStatistics:
        return self.inner.statistics()

    @asynccontextmanager
    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        try:
            async with self.inner.stream_chat(request) as chunks:
                yield chunks
        finally:
            self.exits[request.messages[-1].content] = trio.current_time()

    async def complete_chat(self, request: ChatRequest) -> ChatCompletion:
        return await self.inner.complete_chat(request)

    async def list_models(self) -> list[str]:
        return await self.inner.list_models()


async def _read_events(stream: trio.SocketStream, reader: _Reader, n: int) -> None:
    while len(reader.out.events) < n:
        data = await stream.receive_some(65536)
        assert data, "closed before the events arrived"
        reader.feed(data)


@pytest.mark.e2e
async def test_disconnect_mid_stream_cancels_the_upstream_every_time() -> None:
    # The whole test suite's objects live in this process: a full collection of them can
    # pause it for 100+ ms in the middle of the trials. Freeze them out of the collector so
    # the latency measured is the gateway's, not the test runner's heap.
    gc.collect()
    gc.freeze()
    try:
        await _disconnect_trials()
    finally:
        gc.unfreeze()


async def _disconnect_trials() -> None:
    trials, workers = 240, 8
    llm = ExitTimes(MockLLM(MockLLMConfig(ttft=0.005, itl=0.005, tokens=100_000)))
    config = ServerConfig(port=0, access_log=False, max_concurrency=workers, max_queued=0)
    left_at: dict[str, float] = {}
    with trio.fail_after(30):
        async with running_gateway(config, backend=llm) as srv:  # type: ignore[arg-type]
            gw = srv.gw
            counter = iter(range(trials))

            async def worker() -> None:
                for i in counter:
                    question = f"trial {i}"
                    stream = await trio.open_tcp_stream(HOST, srv.port)
                    reader = _Reader(RawResponse())
                    try:
                        await stream.send_all(
                            build_request("POST", "/chat/stream", orjson.dumps({"question": question}))
                        )
                        await _read_events(stream, reader, 3)  # thinking + 2 tokens
                        assert reader.out.status == 200
                    finally:
                        left_at[question] = trio.current_time()
                        await stream.aclose()  # the client leaves mid-stream

            t0 = trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(workers):
                    nursery.start_soon(worker)
            with trio.fail_after(2):
                # The drain registry last: a handler counts its disconnect as it leaves it.
                while gw.limits.statistics().in_flight or len(llm.exits) < trials or gw.drain.active:  # noqa: ASYNC110
                    await trio.sleep(0.001)
            took = trio.current_time() - t0
            latency = [llm.exits[q] - left_at[q] for q in left_at]
            stats = llm.statistics()
            p50, p99 = percentile(latency, 50), percentile(latency, 99)
            print(
                f"\ndisconnects: {trials} trials ({workers} at a time) in {took:.2f}s; "
                f"client close -> upstream cancelled p50 {p50 * 1000:.2f} ms, "
                f"p99 {p99 * 1000:.2f} ms, max {max(latency) * 1000:.2f} ms"
            )
            assert len(latency) == trials
            assert stats.cancelled == trials and stats.finished == 0 and stats.active == 0
            assert gw.metrics.disconnects == trials
            assert gw.limits.statistics().admitted == trials
            assert min(latency) >= 0
            # A hang or a tenfold regression fails; the precise figure comes from benchmarks.
            assert p99 < 1.0
            s = gw.limits.statistics()
            assert (s.in_flight, s.queued) == (0, 0) and gw.drain.active == 0


class HugeTokens:
    """64 KiB deltas every millisecond, counting the bytes it produced."""

    model = "huge"

    def __init__(self) -> None:
        self.produced = 0
        self.active = 0
        self.cancelled = 0

    async def _chunks(self) -> AsyncIterator[ChatChunk]:
        for _ in range(100_000):
            await trio.sleep(0.001)
            self.produced += 65536
            yield ChatChunk(delta="x" * 65536)

    @asynccontextmanager
    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        self.active += 1
        gen = self._chunks()
        try:
            yield gen
        except trio.Cancelled:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
            await gen.aclose()

    async def complete_chat(self, request: ChatRequest) -> ChatCompletion:  # pragma: no cover
        raise NotImplementedError

    async def list_models(self) -> list[str]:  # pragma: no cover
        return [self.model]


@pytest.mark.e2e
async def test_a_client_that_stops_reading_is_cut_off_with_bounded_buffering() -> None:
    write_timeout = 0.5
    llm = HugeTokens()
    config = ServerConfig(port=0, access_log=False, write_timeout=write_timeout)
    with trio.fail_after(15):
        async with running_gateway(config, backend=llm) as srv:  # type: ignore[arg-type]
            gw = srv.gw
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await sock.connect((HOST, srv.port))
            stream = trio.SocketStream(sock)
            await stream.send_all(build_request("POST", "/chat/stream", orjson.dumps(Q)))
            first = await stream.receive_some(4096)
            assert first.startswith(b"HTTP/1.1 200")
            t0 = trio.current_time()
            # The client reads nothing more.
            while gw.limits.statistics().in_flight:  # noqa: ASYNC110
                await trio.sleep(0.005)
            cut_after = trio.current_time() - t0
            produced_at_cut = llm.produced
            # The server closed the connection: reading what is left ends in EOF or a reset.
            with trio.fail_after(5):
                try:
                    while await stream.receive_some(1 << 20):
                        pass
                except trio.BrokenResourceError:
                    pass
            await stream.aclose()
            print(
                f"\nstopped reader: cut off {cut_after * 1000:.0f} ms after it stopped "
                f"(write_timeout {write_timeout * 1000:.0f} ms); upstream produced "
                f"{produced_at_cut / 2**20:.1f} MiB (unthrottled, {write_timeout}s at 64 MiB/s "
                f"would be {64 * write_timeout:.0f} MiB); connection closed by the server"
            )
            assert write_timeout <= cut_after < write_timeout + 1.5
            assert gw.metrics.write_stalls == 1 and llm.cancelled == 1 and llm.active == 0
            # Bounded: the channel (16 deltas = 1 MiB), one coalesced event and the kernel's
            # socket buffers; far below what the upstream would produce unthrottled.
            assert produced_at_cut < 4 * 2**20
            assert llm.produced == produced_at_cut  # nothing more after the cut
            assert gw.drain.active == 0


async def _trickle(stream: trio.SocketStream, data: bytes, gap: float) -> float:
    """Send one byte every ``gap`` s until the peer closes; the time it closed."""
    t0 = trio.current_time()
    closed = trio.Event()

    async def watch(cancel: trio.CancelScope) -> None:
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        closed.set()
        cancel.cancel()

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, scope)
            try:
                for b in data:
                    await stream.send_all(bytes([b]))
                    await trio.sleep(gap)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            await closed.wait()
    return trio.current_time() - t0


@pytest.mark.e2e
async def test_slowloris_headers_are_closed_after_keep_alive_timeout() -> None:
    config = ServerConfig(port=0, access_log=False, keep_alive_timeout=0.5)
    with trio.fail_after(10):
        async with running_gateway(config, backend=MockLLM()) as srv:
            stream = await trio.open_tcp_stream(HOST, srv.port)
            head = b"POST /chat/stream HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
            took = await _trickle(stream, head, 0.02)
            await stream.aclose()
            print(f"\nslowloris headers: connection closed after {took * 1000:.0f} ms (keep_alive_timeout 500 ms)")
            assert 0.5 <= took < 5.0  # lower bound: the timeout; upper: catches a hang
            assert srv.gw.metrics.responses == {}  # the app never saw a request


@pytest.mark.e2e
@pytest.mark.parametrize("path", ["/chat/stream", "/chat"])
async def test_a_trickled_body_gets_408_within_request_timeout(path: str) -> None:
    config = ServerConfig(port=0, access_log=False, request_timeout=0.6)
    with trio.fail_after(10):
        async with running_gateway(config, backend=MockLLM()) as srv:
            stream = await trio.open_tcp_stream(HOST, srv.port)
            body = orjson.dumps({"question": "x" * 100})
            head = build_request("POST", path, None, {
                "Content-Type": "application/json", "Content-Length": str(len(body))})
            await stream.send_all(head)
            reader = _Reader(RawResponse())
            t0 = trio.current_time()

            async def trickle() -> None:
                try:
                    for b in body:
                        await stream.send_all(bytes([b]))
                        await trio.sleep(0.02)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                try:
                    while not reader.out.complete and (data := await stream.receive_some(65536)):
                        reader.feed(data)
                except trio.BrokenResourceError:
                    pass
                took = trio.current_time() - t0
                nursery.cancel_scope.cancel()
            await stream.aclose()
            print(f"\ntrickled body {path}: {reader.out.status} after {took * 1000:.0f} ms")
            assert reader.out.status == 408
            assert reader.out.json()["error"]["code"] == "body_timeout"
            assert 0.6 <= took < 6.0  # lower bound: the deadline; upper: catches a hang
            assert srv.gw.limits.statistics().admitted == 0


@pytest.mark.e2e
@pytest.mark.parametrize("path", ["/chat/stream", "/chat", "/v1/chat/completions"])
async def test_an_oversized_body_is_413(path: str) -> None:
    config = ServerConfig(port=0, access_log=False, max_body_bytes=1024)
    with trio.fail_after(10):
        async with running_gateway(config, backend=MockLLM()) as srv:
            big = orjson.dumps({"question": "x" * 4096})
            # Declared too large: refused from Content-Length, before the body is read.
            stream = await trio.open_tcp_stream(HOST, srv.port)
            await stream.send_all(build_request("POST", path, None, {
                "Content-Type": "application/json", "Content-Length": str(len(big))}))
            reader = _Reader(RawResponse())
            with trio.fail_after(2):
                try:
                    while not reader.out.complete and (data := await stream.receive_some(65536)):
                        reader.feed(data)
                except trio.BrokenResourceError:
                    pass
            await stream.aclose()
            assert reader.out.status == 413
            assert reader.out.json()["error"]["code"] in ("payload_too_large",)
            # Chunked, no length: refused while reading.
            r = await raw_request(srv.port, "POST", path, None, {
                "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                raw_body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big))
            assert r.status == 413 and r.json()["error"]["code"] == "payload_too_large"
            assert srv.gw.limits.statistics().admitted == 0


@pytest.mark.e2e
async def test_oversized_headers_get_431() -> None:
    """Over ``max_header_bytes`` (16 KiB) the answer is 431 either way: from Hypercorn (h11,
    empty body, connection closed) when the head is still incomplete past the limit, from the
    gateway (our JSON error with a request id) when a larger head arrived whole in one read."""
    config = ServerConfig(port=0, access_log=False)
    with trio.fail_after(10):
        async with running_gateway(config, backend=MockLLM()) as srv:
            fits = await raw_request(srv.port, "GET", "/healthz", None, {"X-Big": "a" * 8_000})
            assert fits.status == 200
            whole = await raw_request(srv.port, "GET", "/healthz", None, {"X-Big": "a" * 20_000})
            assert whole.status == 431 and whole.complete and not whole.reset
            err = whole.json()["error"]
            assert err["code"] == "headers_too_large" and err["request_id"] == whole.headers["x-request-id"]
            many = await raw_request(
                srv.port, "POST", "/v1/chat/completions", None,
                {f"X-H{i}": "a" * 100 for i in range(200)},
            )
            assert many.status == 431 and many.json()["error"]["code"] == "headers_too_large"
            # Past Hypercorn's 64 KiB read, h11 sees an incomplete head over the limit.
            huge = await raw_request(srv.port, "GET", "/healthz", None, {"X-Big": "a" * 100_000})
            assert huge.status == 431 and huge.body == b"" and not huge.reset
            assert huge.headers.get("connection") == "close"
            assert srv.gw.metrics.responses == {
                ("/healthz", 200): 1,
                ("/healthz", 431): 1,
                ("/v1/chat/completions", 431): 1,
            }
