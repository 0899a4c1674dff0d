"""ConnectionCounter's limit: idle connections closed oldest first, then a minimal 503."""

from __future__ import annotations

import socket

import pytest
import trio

from trio_agent.http import DEFAULT_REFUSAL, ConnectionCounter, ConnectionVerdict


class _Conn:
    def __init__(self, name: str, closed: list[str]) -> None:
        self.name = name
        self._closed = closed

    def expire(self) -> None:
        self._closed.append(self.name)


def _open(counter: ConnectionCounter) -> ConnectionVerdict:
    counter.open += 1
    counter.opened += 1
    return counter.admit()


def test_no_limit_serves_every_connection() -> None:
    counter = ConnectionCounter()
    assert all(_open(counter) is ConnectionVerdict.SERVE for _ in range(1000))
    assert counter.statistics().refused == 0


def test_past_the_limit_with_none_idle_the_connection_is_refused() -> None:
    counter = ConnectionCounter(3)
    assert [_open(counter) for _ in range(3)] == [ConnectionVerdict.SERVE] * 3
    assert _open(counter) is ConnectionVerdict.REFUSE
    stats = counter.statistics()
    assert (stats.open, stats.refused, stats.idle_closed, stats.limit) == (4, 1, 0, 3)


def test_past_the_limit_the_oldest_idle_connection_makes_room() -> None:
    closed: list[str] = []
    counter = ConnectionCounter(3)
    a, b, c = (_Conn(n, closed) for n in "abc")
    for conn in (a, b, c):
        assert _open(counter) is ConnectionVerdict.SERVE
        counter.mark(conn, True)
    counter.mark(a, False)  # a serves a request, then is idle again: now the newest idle
    counter.mark(a, True)
    assert counter.statistics().idle == 3
    assert _open(counter) is ConnectionVerdict.SERVE
    assert closed == ["b"]
    assert _open(counter) is ConnectionVerdict.SERVE
    assert closed == ["b", "c"]
    stats = counter.statistics()
    assert (stats.idle_closed, stats.idle, stats.refused) == (2, 1, 0)


def test_a_busy_connection_is_never_closed_to_make_room() -> None:
    closed: list[str] = []
    counter = ConnectionCounter(1)
    a = _Conn("a", closed)
    _open(counter)
    counter.mark(a, True)
    counter.mark(a, False)
    assert _open(counter) is ConnectionVerdict.REFUSE
    assert closed == []


def test_near_the_limit_idle_connections_are_closed_first() -> None:
    # As nginx: with fewer than limit // 16 free, a new connection takes an idle one's place.
    closed: list[str] = []
    counter = ConnectionCounter(32)
    idle = [_Conn(str(i), closed) for i in range(29)]
    for conn in idle:
        _open(counter)
        counter.mark(conn, True)
    assert _open(counter) is ConnectionVerdict.SERVE  # 30 of 32: two free, not fewer
    assert closed == []
    assert _open(counter) is ConnectionVerdict.SERVE  # 31 of 32: one free, fewer than 2
    assert closed == ["0"]


def test_a_closed_connection_leaves_the_idle_order() -> None:
    closed: list[str] = []
    counter = ConnectionCounter(1)
    a = _Conn("a", closed)
    _open(counter)
    counter.mark(a, True)
    counter.forget(a)
    assert not counter.close_oldest_idle()
    assert counter.statistics().idle == 0


def test_a_failed_accept_is_counted_and_frees_an_eighth_of_the_idle_oldest_first() -> None:
    closed: list[str] = []
    counter = ConnectionCounter()
    for i in range(17):
        counter.mark(_Conn(str(i), closed), True)
    assert counter.accept_failed() == 2
    assert closed == ["0", "1"]
    assert counter.accept_failed() == 1  # 15 idle: at least one
    for _ in range(14):
        counter.accept_failed()
    assert counter.accept_failed() == 0  # none left
    assert counter.statistics().accept_failures == 17


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="limit"):
        ConnectionCounter(0)


async def test_a_refused_connection_gets_the_whole_503_then_eof() -> None:
    a, b = socket.socketpair()
    counter = ConnectionCounter(1)
    with trio.fail_after(5):
        client = trio.SocketStream(trio.socket.from_stdlib_socket(b))
        await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # unread by the server
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                counter.refuse,
                trio.SocketStream(trio.socket.from_stdlib_socket(a)),
                ConnectionVerdict.REFUSE,
            )
            data = b""
            while chunk := await client.receive_some(4096):
                data += chunk
            await client.aclose()  # the server stops lingering at our close
    assert data == DEFAULT_REFUSAL
    assert data.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1\r\n" in data and b"connection: close\r\n" in data


async def test_close_at_once_sends_nothing() -> None:
    a, b = socket.socketpair()
    counter = ConnectionCounter(1)
    with trio.fail_after(5):
        client = trio.SocketStream(trio.socket.from_stdlib_socket(b))
        await counter.refuse(
            trio.SocketStream(trio.socket.from_stdlib_socket(a)), ConnectionVerdict.CLOSE
        )
        assert await client.receive_some(4096) == b""
        await client.aclose()


async def test_a_closed_connection_is_freed_without_the_cycle_collector() -> None:
    """Closed connections must not wait for a full collection (rare under gc_threshold)."""
    import gc

    from tests._http import running_http
    from trio_agent.http import HTTPConfig

    with trio.fail_after(10):
        async with running_http(HTTPConfig()) as srv:
            gc.collect()
            gc.disable()
            try:
                for _ in range(10):
                    stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
                    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 200")
                    await stream.aclose()
                for _ in range(200):  # the server's side of the last close, bounded
                    if not srv.counter.open:
                        break
                    await trio.sleep(0.01)
                await trio.sleep(0.05)
                assert gc.collect() == 0
            finally:
                gc.enable()
