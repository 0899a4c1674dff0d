"""DirectBody: chunked body writes straight to a socket, over a real socketpair and a real h11."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import h11
import pytest
import trio

from trio_agent.http import ClientGoneError, DirectBody, direct_body


def responding_connection() -> h11.Connection:
    """An h11 server connection that has sent a chunked 200 head."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST /chat/stream HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    conn.send(h11.Response(status_code=200, headers=[("content-type", "text/event-stream")]))
    return conn


_OPEN: list[trio.socket.SocketType] = []


@pytest.fixture
async def sockets() -> AsyncIterator[None]:
    """Closes every socket :func:`make` opened (inside trio: closing notifies its I/O manager)."""
    yield
    while _OPEN:
        _OPEN.pop().close()


def make(sndbuf: int | None = None) -> tuple[DirectBody, Any, trio.socket.SocketType, h11.Connection]:
    a, b = trio.socket.socketpair()
    _OPEN.extend((a, b))
    if sndbuf is not None:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    http_stream = SimpleNamespace(closed=False)
    conn = responding_connection()
    return DirectBody(http_stream, conn, trio.Lock(), trio.SocketStream(a)), http_stream, b, conn


async def read_exactly(sock: trio.socket.SocketType, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = await sock.recv(n - len(data))
        assert more, "peer closed early"
        data += more
    return data


async def test_a_free_socket_takes_the_chunk_at_once_without_yielding(sockets: None) -> None:
    body, _, peer, _ = make()
    body.send_nowait(b"hello")  # synchronous: no checkpoint, no task switch
    assert not body.pending and body.direct == 1 and body.waited == 0
    assert await read_exactly(peer, 10) == b"5\r\nhello\r\n"


async def test_while_hypercorn_writes_the_chunk_waits_for_its_lock(sockets: None) -> None:
    body, _, peer, _ = make()
    lock: trio.Lock = body._lock
    async with trio.open_nursery() as nursery:
        await lock.acquire()
        assert not body.ready
        with pytest.raises(trio.WouldBlock):
            body.send_nowait(b"x")
        nursery.start_soon(body.send, b"later")
        await trio.testing.wait_all_tasks_blocked()
        assert body.waited == 1  # parked on the lock, nothing written yet
        lock.release()
    assert body.ready and body.direct == 0
    assert await read_exactly(peer, 10) == b"5\r\nlater\r\n"


async def test_what_a_full_socket_leaves_is_flushed_before_anything_else(sockets: None) -> None:
    body, _, peer, conn = make(sndbuf=4096)
    big = b"a" * (1 << 20)
    body.send_nowait(big)
    assert body.pending and not body.ready  # the socket took only part of the frame
    with pytest.raises(trio.WouldBlock):
        body.send_nowait(b"next")
    expected = b"100000\r\n" + big + b"\r\n" + b"4\r\nnext\r\n"
    async with trio.open_nursery() as nursery:

        async def writer() -> None:
            await body.send(b"next")  # flushes the rest first, then its own chunk

        nursery.start_soon(writer)
        got = await read_exactly(peer, len(expected))
    assert got == expected
    assert not body.pending
    assert conn.send(h11.EndOfMessage()) == b"0\r\n\r\n"  # h11 counted every chunk


async def test_a_client_that_left_is_reported(sockets: None) -> None:
    body, _, peer, _ = make()
    peer.close()
    with pytest.raises(ClientGoneError):
        body.send_nowait(b"x")  # EPIPE
    body2, http_stream2, _, _ = make()
    http_stream2.closed = True  # Hypercorn saw the disconnect first
    with pytest.raises(ClientGoneError):
        body2.send_nowait(b"x")
    body3, _, _, _ = make()
    body3._stream.socket.close()  # the fd number may be reused: never write to it
    with pytest.raises(ClientGoneError):
        body3.send_nowait(b"x")


async def test_direct_body_needs_hypercorns_h11_shape() -> None:
    async def plain_send(message: dict[str, Any]) -> None:
        pass

    assert direct_body(plain_send) is None

    class NotH11:
        async def send(self, event: object) -> None:
            pass

    class Stream:
        def __init__(self) -> None:
            self.send = NotH11().send
            self.closed = False

        async def app_send(self, message: object) -> None:
            pass

    assert direct_body(Stream().app_send) is None


async def test_chunks_are_framed_byte_for_byte_as_h11_frames_them(sockets: None) -> None:
    body, _, _, _ = make()
    reference = responding_connection()
    for data in (b"x", b"data: {}\n\n", bytes(range(256)) * 70):
        assert body._framed(data) == reference.send(h11.Data(data=data))
    assert body._framed(b"") == b""  # h11 writes nothing for an empty chunk (it would end the body)
    # An HTTP/1.0 client gets no chunked framing: the bytes go through h11 as they are.
    old = h11.Connection(h11.SERVER)
    old.receive_data(b"GET / HTTP/1.0\r\n\r\n")
    assert isinstance(old.next_event(), h11.Request)
    assert isinstance(old.next_event(), h11.EndOfMessage)
    old.send(h11.Response(status_code=200, headers=[]))
    a, b = trio.socket.socketpair()
    _OPEN.extend((a, b))
    plain = DirectBody(SimpleNamespace(closed=False), old, trio.Lock(), trio.SocketStream(a))
    assert plain._framed(b"hello") == b"hello"


async def test_held_writes_go_out_in_one_write_at_release(sockets: None) -> None:
    # The server's side of hold(): Hypercorn's writes (the head) land in ``held``, as
    # LeanTCPServer.protocol_send puts them; a direct write joins them; release writes once.
    a, peer = trio.socket.socketpair()
    _OPEN.extend((a, peer))
    writes: list[bytes] = []

    class Server:
        held: bytearray | None = None

        async def send_held(self, data: bytes) -> None:
            writes.append(data)
            await a.send(data)

    server = Server()
    conn = responding_connection()
    body = DirectBody(SimpleNamespace(closed=False), conn, trio.Lock(), trio.SocketStream(a), server)
    assert body.hold() and not body.hold()  # one hold at a time
    server.held += b"HEAD"  # type: ignore[operator]
    assert body.send_nowait(b"first")
    assert writes == [] and body.direct == 0
    await body.release()
    assert writes == [b"HEAD5\r\nfirst\r\n"] and server.held is None
    assert await read_exactly(peer, len(writes[0])) == writes[0]
    body.send_nowait(b"next")  # after release: straight to the socket again
    assert await read_exactly(peer, 9) == b"4\r\nnext\r\n" and len(writes) == 1
    # A server that cannot hold (plain Hypercorn): nothing is held.
    assert not DirectBody(SimpleNamespace(closed=False), conn, trio.Lock(), trio.SocketStream(a)).hold()
