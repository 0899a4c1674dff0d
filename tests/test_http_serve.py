"""serve_http: an ASGI app on Hypercorn through the draining listener; binding errors are typed."""

from __future__ import annotations

import socket
from functools import partial
from typing import Any

import pytest
import trio

from tests._http import lifespan, ok_app, running_http
from trio_agent.errors import BindError, ConfigError
from trio_agent.http import HTTPConfig, bind_sockets, receive_nowait_of, serve_http


async def _get(port: int) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    buf = b""
    while chunk := await stream.receive_some(65536):
        buf += chunk
    await stream.aclose()
    return buf


@pytest.mark.e2e
async def test_serves_and_reports_the_bound_address() -> None:
    with trio.fail_after(10):
        async with running_http(HTTPConfig()) as srv:
            assert srv.host == "127.0.0.1" and srv.port > 0
            reply = await _get(srv.port)
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b'{"ok":true}')


async def test_a_body_that_came_in_one_read_is_all_there_when_the_app_starts() -> None:
    # Hypercorn awaits a memory-channel send per body piece, so an app starting in the next
    # pass would find the end of the body there only if the connection task had run first;
    # the lean protocol puts every piece without yielding. Ten requests: without it, about
    # one chance in a thousand that all ten find their whole body.
    seen: list[bool] = []

    async def app(scope: dict[str, object], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
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

    with trio.fail_after(10):
        async with running_http(HTTPConfig(), app) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            request = b'POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\n{"a": true}'
            for _ in range(10):
                await stream.send_all(request)
                buf = b""
                while b"\r\n\r\n" not in buf:
                    buf += await stream.receive_some(65536)
                assert buf.startswith(b"HTTP/1.1 204")
            await stream.aclose()
    assert seen == [True] * 10


@pytest.mark.e2e
async def test_an_early_answer_is_sent_without_calling_the_app() -> None:
    called: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            called.append(scope["raw_path"])
        await ok_app(scope, receive, send)

    def early(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> Any:
        if target != b"/busy":
            return None
        return 503, [(b"content-length", b"4")], b"busy"

    with trio.fail_after(10):
        async with running_http(HTTPConfig(), app, early=early) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            replies = []
            # Two refusals and a normal request on one keep-alive connection.
            for target in (b"/busy", b"/busy", b"/ok"):
                await stream.send_all(b"GET %b HTTP/1.1\r\nhost: x\r\n\r\n" % target)
                buf = b""
                while not buf.endswith((b"busy", b"}")):
                    buf += await stream.receive_some(65536)
                replies.append(buf.split(b"\r\n", 1)[0])
            await stream.aclose()
    assert replies == [b"HTTP/1.1 503 ", b"HTTP/1.1 503 ", b"HTTP/1.1 200 "]
    assert called == [b"/ok"]


async def test_a_port_in_use_is_one_bind_error_before_anything_starts() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(BindError) as info:
            bind_sockets(HTTPConfig(port=port))
        assert str(info.value) == f"cannot listen on 127.0.0.1:{port}: address already in use"
        assert (info.value.host, info.value.port) == ("127.0.0.1", port)
        assert isinstance(info.value, ConfigError)
        # serve_http raises it bare, before its first task: no exception group.
        with trio.fail_after(5), pytest.raises(BindError):
            await serve_http(ok_app, HTTPConfig(port=port))
    finally:
        taken.close()


@pytest.mark.parametrize(
    ("host", "reason"),
    [("no-such-host.invalid", "name or service not known"), ("192.0.2.1", "cannot assign requested address")],
)
def test_an_address_that_is_not_usable_is_a_bind_error(host: str, reason: str) -> None:
    with pytest.raises(BindError) as info:
        bind_sockets(HTTPConfig(host=host, port=0))
    assert str(info.value).startswith(f"cannot listen on {host}:0: ")
    # The resolver's wording varies by libc; the address one is the kernel's.
    if host[0].isdigit():
        assert str(info.value).endswith(reason)


def test_a_port_out_of_range_is_refused_by_the_config() -> None:
    with pytest.raises(ConfigError):
        HTTPConfig(port=70000)


@pytest.mark.e2e
async def test_serves_sockets_bound_by_the_caller() -> None:
    sockets = bind_sockets(HTTPConfig())
    port = sockets[0].getsockname()[1]
    stop = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, bound = await nursery.start(
                partial(serve_http, ok_app, HTTPConfig(), sockets=sockets, shutdown_trigger=stop.wait)
            )
            assert (host, bound) == ("127.0.0.1", port)
            assert (await _get(port)).startswith(b"HTTP/1.1 200")
            stop.set()
