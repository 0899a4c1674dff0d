"""A tiny HTTP/1.1 SSE server on trio streams, for the load client's tests.

It speaks just the trio_agent ``/chat/stream`` wire format (thinking, token
events, done with usage) with chunked transfer-encoding and keep-alive, and
can misbehave on request: refuse with 503, fail with 500, send an error
event, or stop before the terminal event.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

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
        try:
            while await _read_request(stream, buf):
                await _respond(stream, behaviour)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client went away (as it does after a bad response)


async def _respond(stream: trio.abc.Stream, b: Behaviour) -> None:
    if b.mode == "shed":
        body = b'{"error": {"code": "overloaded", "message": "busy"}}'
        await stream.send_all(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        return
    if b.mode == "http_500":
        await stream.send_all(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"
        )
        return
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
        return
    if b.mode == "error_event":
        await stream.send_all(
            _chunk(
                b'event: error\ndata: {"type":"error","code":"upstream_timeout","message":"slow"}\n\n'
            )
        )
    else:
        await stream.send_all(
            _chunk(
                b'event: done\ndata: {"type":"done","usage":{"prompt_tokens":5,'
                b'"completion_tokens":%d}}\n\n' % b.tokens
            )
        )
    await stream.send_all(b"0\r\n\r\n")


async def serve_forever(behaviour: Behaviour) -> None:
    """Serve on 127.0.0.1, an OS-chosen port printed as ``listening on http://...``."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(
                trio.serve_tcp, partial(handle_connection, behaviour=behaviour), 0, host="127.0.0.1"
            )
        )
        port = listeners[0].socket.getsockname()[1]
        print(f"listening on http://127.0.0.1:{port}", flush=True)


if __name__ == "__main__":
    import sys

    trio.run(serve_forever, Behaviour(tokens=int(sys.argv[1]) if len(sys.argv) > 1 else 8))
