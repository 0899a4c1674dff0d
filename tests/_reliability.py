"""Shared pieces of the reliability tests: a real gateway on port 0, a one-shot raw HTTP/1.1
client that notices resets, and a scripted fault-injecting OpenAI-compatible upstream.

Everything listens on 127.0.0.1 only and every wait is bounded by the caller's deadlines.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
import trio

from trio_agent.config import ServerConfig
from trio_agent.llm import ChatBackend
from trio_agent.server import Gateway, serve
from trio_agent.sse import ServerSentEvent, SSEDecoder

HOST = "127.0.0.1"


@dataclass
class Running:
    host: str
    port: int
    gw: Gateway

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@asynccontextmanager
async def running_gateway(
    config: ServerConfig, *, backend: ChatBackend | None = None
) -> AsyncIterator[Running]:
    """serve(config) on 127.0.0.1 port 0 (config.port is ignored), stopped on exit.

    Lag shedding is off: the test's own client runs in this process, so its work would
    count as the server's scheduler lag (shedding on lag is tested on the autojump clock).
    """
    config = dataclasses.replace(config, max_loop_lag=0)
    apps: list[Gateway] = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(
            partial(
                serve,
                config,
                handle_signals=False,
                shutdown_trigger=stop.wait,
                backend=backend,
                on_app=apps.append,
            )
        )
        try:
            yield Running(host, port, apps[0])
        finally:
            stop.set()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


# -- a one-shot raw HTTP/1.1 client ---------------------------------------------------------


@dataclass
class RawResponse:
    """What came back on one connection (``Connection: close``), read to EOF."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    events: list[ServerSentEvent] = field(default_factory=list)
    complete: bool = False  # the body's framing ended properly (last chunk / Content-Length)
    reset: bool = False  # the connection was reset (ECONNRESET) instead of closed
    sent_at: float = 0.0
    first_token_at: float | None = None
    ended_at: float = 0.0

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def kinds(self) -> list[str]:
        return [e.event for e in self.events]


def build_request(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    content_type: str | None = "application/json",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Connection: close"]
    hdrs = dict(headers or {})
    if body is not None:
        if content_type is not None:
            hdrs.setdefault("Content-Type", content_type)
        hdrs.setdefault("Content-Length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class _Reader:
    """Incremental parse of one response: head, then chunked or Content-Length body, SSE."""

    def __init__(self, out: RawResponse) -> None:
        self.out = out
        self.buf = bytearray()
        self.head_done = False
        self.chunked = False
        self.length: int | None = None
        self.decoder = SSEDecoder()
        self.sse = False

    def feed(self, data: bytes) -> None:
        self.buf += data
        if not self.head_done:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[: end + 4]
            self.out.status = int(head[0].split()[1])
            for line in head[1:]:
                name, _, value = line.partition(":")
                self.out.headers[name.strip().lower()] = value.strip()
            self.head_done = True
            self.chunked = self.out.headers.get("transfer-encoding", "").lower() == "chunked"
            if "content-length" in self.out.headers:
                self.length = int(self.out.headers["content-length"])
            self.sse = self.out.headers.get("content-type", "").startswith("text/event-stream")
        if self.chunked:
            while not self.out.complete:
                nl = self.buf.find(b"\r\n")
                if nl < 0:
                    return
                size = int(bytes(self.buf[:nl]).split(b";")[0], 16)
                if len(self.buf) < nl + 2 + size + 2:
                    return
                piece = bytes(self.buf[nl + 2 : nl + 2 + size])
                del self.buf[: nl + 2 + size + 2]
                if size == 0:
                    self.out.complete = True
                    return
                self._body(piece)
        else:
            piece = bytes(self.buf)
            self.buf.clear()
            self._body(piece)
            if self.length is not None and len(self.out.body) >= self.length:
                self.out.complete = True

    def _body(self, piece: bytes) -> None:
        self.out.body += piece
        if self.sse:
            for ev in self.decoder.feed(piece):
                if ev.event == "token" and self.out.first_token_at is None:
                    self.out.first_token_at = trio.current_time()
                self.out.events.append(ev)


async def raw_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    json: Any = None,
    content_type: str | None = "application/json",
    raw_body: bytes = b"",
) -> RawResponse:
    """One request on a fresh connection, read to EOF. Resets are recorded, not raised.

    ``raw_body`` is sent as is after the head (for a chunked body, say)."""
    if json is not None:
        body = orjson.dumps(json)
    out = RawResponse(sent_at=trio.current_time())
    reader = _Reader(out)
    stream = await trio.open_tcp_stream(HOST, port)
    try:
        request = build_request(method, path, body, headers, content_type=content_type)
        await stream.send_all(request + raw_body)
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                out.reset = True
                break
            if not data:
                break
            reader.feed(data)
    finally:
        out.ended_at = trio.current_time()
        await stream.aclose()
    return out


# -- a fault-injecting OpenAI-compatible upstream --------------------------------------------

Fault = Callable[["UpstreamConn"], Awaitable[None]]


def frame(delta: str | None = None, finish: str | None = None) -> bytes:
    choice: dict[str, Any] = {"index": 0, "delta": {"content": delta} if delta else {}}
    choice["finish_reason"] = finish
    obj = {"object": "chat.completion.chunk", "choices": [choice]}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}}\n\n'
DONE = b"data: [DONE]\n\n"


class UpstreamConn:
    """One connection to the fake upstream; helpers write HTTP/1.1 by hand."""

    def __init__(self, upstream: FaultUpstream, stream: trio.SocketStream, headers: dict[str, str]) -> None:
        self.upstream = upstream
        self.stream = stream
        self.headers = headers

    async def status(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = orjson.dumps(body)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        await self.stream.send_all(
            f"HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
            f"\r\nConnection: close\r\n{extra}\r\n".encode()
            + data
        )

    async def start_stream(self) -> None:
        await self.stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )

    async def chunk(self, data: bytes) -> None:
        await self.stream.send_all(b"%x\r\n%s\r\n" % (len(data), data))

    async def end_stream(self) -> None:
        await self.stream.send_all(b"0\r\n\r\n")

    async def wait_closed(self) -> None:
        """Until the peer closes: counts it in ``closed_by_peer``."""
        try:
            while await self.stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        self.upstream.closed_by_peer += 1


def ok_stream(tokens: int = 3, *, itl: float = 0.005, head: bool = True) -> Fault:
    """A normal streamed answer; ``head=False`` when the response head was already sent."""

    async def fault(conn: UpstreamConn) -> None:
        if head:
            await conn.start_stream()
        for i in range(tokens):
            if i:
                await trio.sleep(itl)
            await conn.chunk(frame(f"w{i} "))
        await conn.chunk(frame(finish="stop") + USAGE + DONE)
        await conn.end_stream()

    return fault


def status_fault(code: int, *, message: str = "injected", headers: dict[str, str] | None = None) -> Fault:
    async def fault(conn: UpstreamConn) -> None:
        await conn.status(code, {"error": {"message": message, "type": "server_error"}}, headers)

    return fault


def mid_stream(then: str, *, tokens: int = 3, message: str = "injected mid-stream") -> Fault:
    """``tokens`` content frames, then ``stall`` (until the client leaves), ``drop`` (close the
    socket inside the chunked body) or ``error`` (an OpenAI error frame, then the end)."""

    async def fault(conn: UpstreamConn) -> None:
        await conn.start_stream()
        for i in range(tokens):
            await conn.chunk(frame(f"w{i} "))
            await trio.sleep(0.005)
        if then == "stall":
            await conn.wait_closed()
        elif then == "drop":
            await conn.stream.aclose()
        elif then == "error":
            err = {"error": {"message": message, "type": "server_error", "code": "boom"}}
            await conn.chunk(b"data: " + orjson.dumps(err) + b"\n\n")
            await conn.end_stream()
        else:  # pragma: no cover
            raise ValueError(then)

    return fault


def slow_first_token(delay: float) -> Fault:
    """Headers at once, then nothing for ``delay`` seconds (or until the client leaves)."""

    async def fault(conn: UpstreamConn) -> None:
        await conn.start_stream()
        with trio.move_on_after(delay):
            await conn.wait_closed()
            return
        await ok_stream(1, head=False)(conn)

    return fault


class FaultUpstream:
    """A tiny HTTP/1.1 server answering ``POST /v1/chat/completions`` per a script.

    ``script(n)`` gives the fault for the n-th request (1-based). ``requests``
    counts requests, ``auth`` records each ``Authorization`` header.
    """

    def __init__(self, script: Callable[[int], Fault]) -> None:
        self.script = script
        self.requests = 0
        self.closed_by_peer = 0
        self.auth: list[str] = []
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
            head, rest = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(rest) < length:
                data = await stream.receive_some(65536)
                if not data:
                    return
                rest += data
            self.requests += 1
            self.auth.append(headers.get("authorization", ""))
            conn = UpstreamConn(self, stream, headers)
            await self.script(self.requests)(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()


@asynccontextmanager
async def open_fault_upstream(script: Callable[[int], Fault]) -> AsyncIterator[FaultUpstream]:
    upstream = FaultUpstream(script)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, upstream._handle, 0, host=HOST))
        upstream.port = listeners[0].socket.getsockname()[1]
        try:
            yield upstream
        finally:
            nursery.cancel_scope.cancel()
