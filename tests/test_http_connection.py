"""LeanTCPServer: Hypercorn's TCPServer writing straight to the socket, counting connections."""

from __future__ import annotations

import socket

import pytest
import trio
from hypercorn.events import Closed, RawData

from tests._http import running_http
from trio_agent.http import HTTPConfig, LeanTCPServer


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


@pytest.mark.e2e
async def test_serve_http_counts_connections_reuses_them_and_closes_idle_ones() -> None:
    with trio.fail_after(15):
        async with running_http(HTTPConfig(keep_alive_timeout=0.5)) as srv:
            connections = srv.counter
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
