"""A tiny HTTP/1.1 SSE server on trio streams, for the load client's tests.

It speaks just the trio_agent ``/chat/stream`` wire format (thinking, token
events, done with usage) with chunked transfer-encoding and keep-alive, and
can misbehave on request: refuse with 503, fail with 500, send an error
event, or stop before the terminal event.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio


@dataclass(frozen=True, kw_only=True)
class Behaviour:
    tokens: int = 3
    ttft: float = 0.0
    itl: float = 0.0
    mode: str = "ok"  # ok | shed | http_500 | error_event | truncated | not_sse
    tokens_per_chunk: int = 1


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


async def _read_request(stream: trio.abc.Stream, buf: bytearray) -> bool:
    """Read one request (head and Content-Length body) out of ``buf``; False at EOF."""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            return False
        buf += data
    end = buf.index(b"\r\n\r\n")
    head = bytes(buf[:end]).decode("latin-1")
    del buf[: end + 4]
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(buf) < length:
        data = await stream.receive_some(65536)
        if not data:
            return False
        buf += data
    del buf[:length]
    return True


async def handle_connection(stream: trio.abc.Stream, behaviour: Behaviour) -> None:
    """Serve requests on ``stream`` until the client closes it."""
    buf = bytearray()
    async with stream:
        while await _read_request(stream, buf):
            if not await _respond(stream, behaviour):
                return


async def _respond(stream: trio.abc.Stream, b: Behaviour) -> bool:
    if b.mode == "shed":
        body = b'{"error": {"code": "overloaded", "message": "busy"}}'
        await stream.send_all(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        return True
    if b.mode == "http_500":
        await stream.send_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops")
        return True
    ctype = b"application/json" if b.mode == "not_sse" else b"text/event-stream"
    await stream.send_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % ctype
    )
    await stream.send_all(_chunk(b'event: thinking\ndata: {"type":"thinking"}\n\n'))
    await trio.sleep(b.ttft)
    sent = 0
    while sent < b.tokens:
        n = min(b.tokens_per_chunk, b.tokens - sent)
        if sent:
            await trio.sleep(b.itl)
        content = "x" * n
        await stream.send_all(
            _chunk(b'event: token\ndata: {"type":"token","content":"%s"}\n\n' % content.encode())
        )
        sent += n
    if b.mode == "truncated":
        await stream.send_all(b"0\r\n\r\n")
        return True
    if b.mode == "error_event":
        await stream.send_all(
            _chunk(b'event: error\ndata: {"type":"error","code":"upstream_timeout","message":"slow"}\n\n')
        )
    else:
        await stream.send_all(
            _chunk(
                b'event: done\ndata: {"type":"done","usage":{"prompt_tokens":5,'
                b'"completion_tokens":%d}}\n\n' % b.tokens
            )
        )
    await stream.send_all(b"0\r\n\r\n")
    return True
