"""DrainingListener takes a burst of connections in one pass; LeanTCPServer writes and times out as Hypercorn."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.events import Closed, RawData

from tests._reliability import running_gateway
from trio_agent.config import MockLLMConfig, ServerConfig
from trio_agent.server._listen import DrainingListener, LeanTCPServer, _IdleTimer


@contextmanager
def listening() -> Iterator[socket.socket]:
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        yield sock
    finally:
        sock.close()


@contextmanager
def burst(port: int, n: int) -> Iterator[list[socket.socket]]:
    """``n`` connections made at once, with no trio checkpoint in between (all in the backlog)."""
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    try:
        yield clients
    finally:
        for c in clients:
            c.close()


async def passes_to_accept(listener: trio.abc.Listener[trio.SocketStream], n: int) -> int:
    """How many scheduler passes accepting ``n`` queued connections takes."""
    passes = 0
    streams = []

    async def ticker() -> None:
        nonlocal passes
        while True:
            passes += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.lowlevel.checkpoint()  # the ticker is running
        start = passes
        for _ in range(n):
            streams.append(await listener.accept())
        taken = passes - start
        nursery.cancel_scope.cancel()
    for s in streams:
        await s.aclose()
    return taken


async def test_a_burst_is_accepted_in_one_pass_where_trios_listener_takes_one_per_pass() -> None:
    with listening() as sock:
        listener = DrainingListener(sock.dup())
        try:
            with burst(sock.getsockname()[1], 20):
                assert await passes_to_accept(listener, 20) <= 2
            stats = listener.statistics()
            assert (stats.accepted, stats.passes, stats.largest_pass, stats.ready) == (20, 1, 20, 0)
        finally:
            await listener.aclose()
        # The behaviour it replaces: trio's SocketListener yields after every accept.
        trio_listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock.dup()))
        try:
            with burst(sock.getsockname()[1], 20):
                assert await passes_to_accept(trio_listener, 20) >= 19
        finally:
            await trio_listener.aclose()


async def test_a_pass_takes_at_most_max_batch() -> None:
    with listening() as sock:
        listener = DrainingListener(sock.dup(), max_batch=8)
        try:
            with burst(sock.getsockname()[1], 20):
                await passes_to_accept(listener, 20)
            stats = listener.statistics()
            assert (stats.accepted, stats.passes, stats.largest_pass) == (20, 3, 8)  # 8 + 8 + 4
        finally:
            await listener.aclose()


async def test_closing_closes_what_was_accepted_but_not_handed_out() -> None:
    with listening() as sock:
        listener = DrainingListener(sock.dup())
        with burst(sock.getsockname()[1], 5) as clients:
            first = await listener.accept()
            assert listener.statistics().ready == 4
            await listener.aclose()
            await first.aclose()
            for c in clients:  # the server side is gone: each client reads EOF
                c.settimeout(5)
                assert c.recv(1) == b""
        with pytest.raises(trio.ClosedResourceError):
            await listener.accept()


@pytest.mark.e2e
async def test_serve_accepts_a_burst_of_clients_in_one_pass() -> None:
    config = ServerConfig(access_log=False, mock=MockLLMConfig(ttft=0.0, itl=0.0, tokens=1))
    with trio.fail_after(10):
        async with running_gateway(config) as srv:
            (listener,) = srv.gw.listeners
            before = listener.statistics().accepted
            with burst(srv.port, 30):
                while True:  # the server runs in this trio run: let it take them
                    if listener.statistics().accepted >= before + 30:
                        break
                    await trio.sleep(0.01)
            assert listener.statistics().largest_pass >= 30  # at most 64 per pass


# -- LeanTCPServer: Hypercorn's TCPServer with a cheaper idle timer and direct writes ----------


class _Protocol:
    def __init__(self) -> None:
        self.events: list[object] = []

    async def handle(self, event: object) -> None:
        self.events.append(event)
        await trio.lowlevel.checkpoint()


def _lean_server(stream: trio.SocketStream) -> tuple[LeanTCPServer, _Protocol]:
    from hypercorn.config import Config
    from hypercorn.trio.worker_context import WorkerContext

    server = LeanTCPServer(object(), Config(), WorkerContext(None), {}, stream)  # type: ignore[arg-type]
    proto = _Protocol()
    server.protocol = proto  # type: ignore[assignment]
    return server, proto


async def test_lean_writes_go_out_whole_in_order_even_when_the_socket_fills() -> None:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    server, proto = _lean_server(trio.SocketStream(trio.socket.from_stdlib_socket(a)))
    reader = trio.SocketStream(trio.socket.from_stdlib_socket(b))
    big = bytes(range(256)) * 2048  # 512 KiB: far more than the socket takes at once
    small = [b"<%d>" % i for i in range(50)]
    received = bytearray()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def read_all() -> None:
                while len(received) < len(big) + sum(map(len, small)) + 3:
                    received.extend(await reader.receive_some(65536))

            nursery.start_soon(read_all)
            await server.protocol_send(RawData(data=b"abc"))  # fits: direct, no lock
            assert server.direct_writes == 1

            async def others() -> None:
                for s in small:  # these must wait for the big write's lock, never interleave
                    await server.protocol_send(RawData(data=s))

            async with trio.open_nursery() as writers:
                writers.start_soon(server.protocol_send, RawData(data=big))
                await trio.lowlevel.checkpoint()
                writers.start_soon(others)
    assert bytes(received) == b"abc" + big + b"".join(small)
    assert server.locked_writes >= 1
    assert not server.send_lock.locked()
    assert proto.events == []
    await reader.aclose()
    await server.stream.aclose()


async def test_lean_write_to_a_gone_client_reports_closed() -> None:
    a, b = socket.socketpair()
    server, proto = _lean_server(trio.SocketStream(trio.socket.from_stdlib_socket(a)))
    b.close()
    await server.protocol_send(RawData(data=b"x" * 10))
    await server.protocol_send(RawData(data=b"y" * 10))
    assert any(isinstance(e, Closed) for e in proto.events)
    assert not server.send_lock.locked()
    await server.stream.aclose()


class _TaskGroup:
    """Hypercorn's trio TaskGroup, as far as _IdleTimer uses it."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery


def _recording_close() -> tuple[list[float], Callable[[], Awaitable[None]]]:
    """An idle-timer action that records when it ran."""
    fired: list[float] = []

    async def close() -> None:
        fired.append(trio.current_time())

    return fired, close


async def test_lean_idle_timer_restarts_and_stops_without_a_task_per_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired, close = _recording_close()
    timer = _IdleTimer(5.0, trio.Event())
    async with trio.open_nursery() as nursery:
        tg = _TaskGroup(nursery)
        start = trio.current_time()
        await timer.restart(tg, close)
        await trio.sleep(3)
        for _ in range(100):  # a hundred requests on the connection: still one timer task
            await timer.stop()
            await timer.restart(tg, close)  # a response ended: the timeout starts over
        assert len(nursery.child_tasks) == 1
        await trio.sleep(3)
        assert fired == []
        await timer.stop()  # a request started: no timeout while it runs
        await trio.sleep(10)
        assert fired == []
        await timer.restart(tg, close)
        await trio.sleep(6)
        assert fired == [pytest.approx(start + 3 + 3 + 10 + 5)]
    assert len(fired) == 1


@pytest.mark.parametrize("busy", [False, True])
async def test_lean_idle_timer_closes_the_connection_once_idle_when_the_server_stops(
    autojump_clock: trio.testing.MockClock, busy: bool
) -> None:
    fired, close = _recording_close()
    terminated = trio.Event()
    timer = _IdleTimer(5.0, terminated)
    async with trio.open_nursery() as nursery:
        tg = _TaskGroup(nursery)
        t0 = trio.current_time()
        await timer.restart(tg, close)
        if busy:
            await timer.stop()  # a request is running
        await trio.sleep(1)
        terminated.set()  # idle, with 4 s of its keep-alive left: closed at once
        await trio.sleep(20)
        if busy:
            assert fired == []  # the request ran on; the connection stayed open
            await timer.restart(tg, close)  # its response ended: closed at once
            await trio.sleep(0.1)
        assert fired == [pytest.approx(t0 + (21 if busy else 1))]


@pytest.mark.e2e
async def test_serve_counts_connections_and_reuses_them() -> None:
    config = ServerConfig(access_log=False, keep_alive_timeout=0.5)
    with trio.fail_after(15):
        async with running_gateway(config) as srv:
            connections = srv.gw.connections
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            buf = b""
            for _ in range(20):  # twenty requests on one keep-alive connection
                await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                while b"\r\n\r\n" not in buf or not buf.split(b"\r\n\r\n", 1)[1].endswith(b"}"):
                    buf += await stream.receive_some(65536)
                assert buf.startswith(b"HTTP/1.1 200")
                buf = b""
            assert (connections.opened, connections.open) == (1, 1)
            # Idle past keep_alive_timeout: the server closes it.
            with trio.fail_after(5):
                assert await stream.receive_some(10) == b""
            await stream.aclose()
            for _ in range(500):  # the server's side of the connection ends soon after
                if not connections.open:
                    break
                await trio.sleep(0.01)
            assert connections.open == 0


async def test_a_body_that_came_in_one_read_is_all_there_when_the_app_starts() -> None:
    # Hypercorn awaits a memory-channel send per body piece, so an app starting in the next
    # pass found the end of the body there only if the connection task had run first; the
    # lean protocol puts every piece without yielding. Ten requests: without it, about one
    # chance in a thousand that all ten find their whole body.
    from functools import partial

    from hypercorn.config import Config
    from hypercorn.utils import wrap_app

    from trio_agent.server._listen import receive_nowait_of, serve_hypercorn

    seen: list[bool] = []

    async def app(scope: dict[str, object], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        ready = receive_nowait_of(receive)
        assert ready is not None
        whole = False
        try:
            while not whole:
                whole = not ready().get("more_body", False)
        except trio.WouldBlock:
            pass
        seen.append(whole)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = Config()
    config.bind = ["127.0.0.1:0"]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
            binds = await nursery.start(partial(serve_hypercorn, asgi, config))
            port = int(binds[0].rsplit(":", 1)[1])
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            request = b'POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\n{"a": true}'
            for _ in range(10):
                await stream.send_all(request)
                buf = b""
                while b"\r\n\r\n" not in buf:
                    buf += await stream.receive_some(65536)
                assert buf.startswith(b"HTTP/1.1 204")
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert seen == [True] * 10


async def test_lean_idle_timer_cancel_ends_its_task_without_closing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Hypercorn's connection task group waits for the timer task: a connection that is done
    # must end it, busy or idle, started or not, or the connection's task never ends.
    fired, close = _recording_close()
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            for busy, settle in ((False, True), (True, True), (False, False)):
                timer = _IdleTimer(5.0, trio.Event())
                await timer.restart(_TaskGroup(nursery), close)
                if busy:
                    await timer.stop()
                if settle:
                    await trio.testing.wait_all_tasks_blocked()
                timer.cancel()
    assert fired == []
