"""Contract tests: one per private internal of Hypercorn, h11, httpcore and httpx we rely on.

trio_agent reaches below the public interfaces of these libraries in two places only,
trio_agent/http/ (Hypercorn and h11: docs/decisions/001, 002, 008) and
trio_agent/llm/_h11_body.py (httpx, httpcore and h11: docs/decisions/003). The versions are
pinned to the minor releases below in pyproject.toml. When an upgrade moves an internal, the
test for it fails with a message naming the internal, the version installed and the version
it was checked against; fix the code that uses it (named in the message), then the pin.
"""

from __future__ import annotations

import inspect
import socket
from importlib.metadata import version
from typing import Any

import h11
import httpx
import pytest
import trio

from tests._http import lifespan, running_http
from trio_agent.http import HTTPConfig
from trio_agent.http._transport import h11_parts
from trio_agent.llm._h11_body import h11_body

#: The minor versions every contract below was checked against (and pyproject.toml pins).
CHECKED = {"hypercorn": "0.18", "h11": "0.16", "httpcore": "1.0", "httpx": "0.28"}


def moved(lib: str, internal: str, user: str, detail: str = "") -> str:
    """The failure message: what moved, in which version, and which of our modules relies on it."""
    text = (
        f"{lib} {version(lib)}: {internal} is no longer as trio_agent expects "
        f"(checked against {lib} {CHECKED[lib]}.x); {user} relies on it"
    )
    return f"{text}: {detail}" if detail else text


def params(func: Any) -> list[str]:
    return [p for p in inspect.signature(func).parameters if p != "self"]


@pytest.mark.parametrize("lib", sorted(CHECKED))
def test_installed_versions_are_the_checked_ones(lib: str) -> None:
    installed = ".".join(version(lib).split(".")[:2])
    assert installed == CHECKED[lib], (
        f"{lib} {version(lib)} is installed but the contracts were checked against {CHECKED[lib]}.x: "
        "run this module, fix what moved, then update CHECKED here and the pin in pyproject.toml"
    )


# -- Hypercorn (trio_agent/http) -------------------------------------------------------------


def test_hypercorn_task_group_spawn_starts_a_task_without_yielding() -> None:
    from hypercorn.trio.task_group import TaskGroup

    assert not inspect.iscoroutinefunction(TaskGroup.spawn) and params(TaskGroup.spawn) == [
        "func",
        "args",
    ], moved("hypercorn", "hypercorn.trio.task_group.TaskGroup.spawn(func, *args)", "http/_idle.py")


def test_hypercorn_h11_protocol_is_built_from_ten_positional_internals() -> None:
    from hypercorn.config import Config
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.trio.worker_context import WorkerContext

    expected = ["app", "config", "context", "task_group", "connection_state", "ssl", "client", "server", "send"]
    internal = f"H11Protocol.__init__({', '.join(expected)}) and the attributes of the same names"
    assert params(H11Protocol.__init__) == expected, moved(
        "hypercorn", internal, "http/_connection.py (LeanTCPServer.protocol)"
    )

    async def send(event: object) -> None:
        pass

    proto = H11Protocol(object(), Config(), WorkerContext(None), object(), {}, False, None, None, send)  # type: ignore[arg-type]
    for name in expected:
        assert hasattr(proto, name), moved("hypercorn", f"H11Protocol.{name}", "http/_connection.py")
    for name, kind in (("connection", h11.Connection), ("keep_alive_requests", int)):
        assert isinstance(getattr(proto, name, None), kind), moved(
            "hypercorn", f"H11Protocol.{name} ({kind.__name__})", "http/_early.py"
        )
    assert proto.stream is None, moved("hypercorn", "H11Protocol.stream", "http/_early.py")
    for name in ("stream_send", "_create_stream"):
        assert inspect.iscoroutinefunction(getattr(H11Protocol, name, None)), moved(
            "hypercorn", f"async H11Protocol.{name}", "http/_early.py"
        )
    assert params(H11Protocol._create_stream) == ["request"], moved(
        "hypercorn", "H11Protocol._create_stream(request: h11.Request)", "http/_early.py (LeanH11Protocol)"
    )
    assert "self._create_stream(event)" in inspect.getsource(H11Protocol._handle_events), moved(
        "hypercorn", "H11Protocol._handle_events calling _create_stream per request head", "http/_early.py"
    )


def test_hypercorn_tcp_server_internals() -> None:
    from hypercorn.config import Config
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext

    user = "http/_connection.py (LeanTCPServer)"
    assert params(TCPServer.__init__) == ["app", "config", "context", "state", "stream"], moved(
        "hypercorn", "TCPServer.__init__(app, config, context, state, stream)", user
    )
    for name in ("run", "protocol_send", "_read_data", "_idle_timeout", "_initiate_server_close"):
        assert inspect.iscoroutinefunction(getattr(TCPServer, name, None)), moved(
            "hypercorn", f"async TCPServer.{name}", user
        )
    run = inspect.getsource(TCPServer.run)
    assert "self.protocol = ProtocolWrapper(" in run, moved(
        "hypercorn", "TCPServer.run assigning self.protocol = ProtocolWrapper(...)", user
    )
    assert "self.idle_task.restart(self._task_group, self._idle_timeout)" in run, moved(
        "hypercorn", "TCPServer.run restarting idle_task(task_group, _idle_timeout)", "http/_idle.py"
    )
    a, b = socket.socketpair()
    try:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(a))
        server = TCPServer(object(), Config(), WorkerContext(None), {}, stream)  # type: ignore[arg-type]
        assert isinstance(server.send_lock, trio.Lock), moved("hypercorn", "TCPServer.send_lock", user)
        assert server.stream is stream, moved("hypercorn", "TCPServer.stream", user)
        for name in ("restart", "stop"):
            assert hasattr(server.idle_task, name), moved("hypercorn", f"TCPServer.idle_task.{name}", user)
    finally:
        a.close()
        b.close()


def test_hypercorn_events_and_config_used_by_early_answers() -> None:
    from hypercorn.config import Config
    from hypercorn.events import Closed, RawData, Updated
    from hypercorn.protocol.events import EndBody, StreamClosed
    from hypercorn.protocol.h11 import STREAM_ID
    from hypercorn.trio.worker_context import WorkerContext

    user = "http/_early.py and http/_connection.py"
    try:
        RawData(data=b"x")
        Closed()
        Updated(idle=True)
        EndBody(stream_id=STREAM_ID)
        StreamClosed(stream_id=STREAM_ID)
    except TypeError as exc:
        pytest.fail(moved("hypercorn", "the fields of RawData, Closed, Updated, EndBody, StreamClosed", user, str(exc)))
    headers = Config().response_headers("h11")
    assert isinstance(headers, list) and all(isinstance(v, bytes) for h in headers for v in h), moved(
        "hypercorn", "Config.response_headers('h11') -> [(bytes, bytes)]", user
    )
    assert isinstance(Config().keep_alive_max_requests, int), moved(
        "hypercorn", "Config.keep_alive_max_requests", user
    )
    assert inspect.iscoroutinefunction(WorkerContext.mark_request), moved(
        "hypercorn", "async WorkerContext.mark_request", user
    )


def test_hypercorn_worker_machinery_that_serve_http_rebuilds() -> None:
    from hypercorn.config import Config
    from hypercorn.trio.lifespan import Lifespan
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

    user = "http/_serve.py (serve_http, Hypercorn's trio worker_serve)"
    checks = [
        (params(Lifespan.__init__) == ["app", "config", "state"], "Lifespan(app, config, state)"),
        (all(hasattr(Lifespan, n) for n in ("handle_lifespan", "wait_for_startup", "wait_for_shutdown")),
         "Lifespan.handle_lifespan/wait_for_startup/wait_for_shutdown"),
        (params(WorkerContext.__init__) == ["max_requests"], "WorkerContext(max_requests)"),
        (params(wrap_app) == ["app", "wsgi_max_body_size", "mode"], "hypercorn.utils.wrap_app(app, wsgi_max_body_size, mode)"),
        (params(repr_socket_addr) == ["family", "address"], "hypercorn.utils.repr_socket_addr(family, address)"),
        (params(raise_shutdown) == ["shutdown_event"] and issubclass(ShutdownError, Exception),
         "hypercorn.utils.raise_shutdown(shutdown_event) raising ShutdownError"),
        (hasattr(Config, "set_statsd_logger_class"), "Config.set_statsd_logger_class"),
    ]  # fmt: skip
    for ok, internal in checks:
        assert ok, moved("hypercorn", internal, user)
    context = WorkerContext(None)
    for name in ("terminate", "terminated"):
        event = getattr(context, name, None)
        assert all(hasattr(event, m) for m in ("set", "wait", "is_set")), moved(
            "hypercorn", f"WorkerContext.{name} (an event with set/wait/is_set)", user + ", http/_idle.py"
        )


@pytest.mark.e2e
async def test_hypercorn_send_chain_and_receive_channel_under_an_asgi_app() -> None:
    """``send.__self__`` chain (HTTPStream -> H11Protocol -> TCPServer), HTTPStream.closed and
    app_put, and the app's receive being a memory channel's, seen from inside a live request."""
    from hypercorn.protocol.http_stream import HTTPStream

    from trio_agent.http import LeanTCPServer, direct_body, receive_nowait_of
    from trio_agent.http._early import LeanH11Protocol

    seen: dict[str, object] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        seen["parts"] = h11_parts(send)
        seen["receive_nowait"] = receive_nowait_of(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen["direct"] = direct_body(send)
        await send({"type": "http.response.body", "body": b"ok"})

    with trio.fail_after(10):
        async with running_http(HTTPConfig(), app) as srv:
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"http://127.0.0.1:{srv.port}/")).text == "ok"
    user = "http/_transport.py, http/_direct.py"
    parts = seen["parts"]
    assert parts is not None, moved(
        "hypercorn", "send.__self__ (HTTPStream.app_send) .send.__self__ (H11Protocol) .send.__self__ (TCPServer)", user
    )
    assert isinstance(parts, tuple)
    http_stream, protocol, server = parts
    assert isinstance(http_stream, HTTPStream) and hasattr(http_stream, "closed"), moved(
        "hypercorn", "HTTPStream.closed", user
    )
    assert hasattr(http_stream, "app_put"), moved("hypercorn", "HTTPStream.app_put", "http/_early.py")
    assert isinstance(protocol, LeanH11Protocol), moved(
        "hypercorn", "ProtocolWrapper.protocol (the H11Protocol that LeanTCPServer replaces)", "http/_connection.py"
    )
    assert isinstance(server, LeanTCPServer), moved("hypercorn", "H11Protocol.send bound to TCPServer.protocol_send", user)
    assert seen["direct"] is not None, moved("hypercorn", "H11Protocol.connection, TCPServer.send_lock/stream", user)
    assert seen["receive_nowait"] is not None, moved(
        "hypercorn", "the ASGI receive being a trio memory channel's receive (spawn_app)", "http/_receive.py"
    )


# -- h11 (trio_agent/http/_direct.py) ---------------------------------------------------------


def test_h11_chunked_writer_is_stateless_per_chunk_and_named_so() -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    conn.send(h11.Response(status_code=200, headers=[]))
    user = "http/_direct.py (DirectBody frames chunks itself)"
    assert type(getattr(conn, "_writer", None)).__name__ == "ChunkedWriter", moved(
        "h11", "Connection._writer being a ChunkedWriter for a chunked body", user
    )
    for body in (b"x", b"data: {}\n\n", bytes(range(256)) * 70):
        assert conn.send(h11.Data(data=body)) == b"%x\r\n%b\r\n" % (len(body), body), moved(
            "h11", "ChunkedWriter framing (hex size CRLF data CRLF)", user
        )
    assert conn.send(h11.EndOfMessage()) == b"0\r\n\r\n", moved("h11", "ChunkedWriter end", user)


# -- httpx and httpcore (trio_agent/llm/_h11_body.py) -----------------------------------------


@pytest.mark.e2e
async def test_httpx_httpcore_path_to_the_h11_state_of_a_streamed_response() -> None:
    clients: list[object] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        clients.append(scope["client"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (b"data: a\n\n", b"data: b\n\n"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    user = "llm/_h11_body.py (h11_body)"
    hops = [
        ("httpx", "Response.stream", "stream"),
        ("httpx", "BoundAsyncStream._stream", "_stream"),
        ("httpx", "AsyncResponseStream._httpcore_stream", "_httpcore_stream"),
        ("httpcore", "PoolByteStream._stream", "_stream"),
        ("httpcore", "HTTP11ConnectionByteStream._connection", "_connection"),
    ]
    with trio.fail_after(10):
        async with running_http(HTTPConfig(), app) as srv:
            async with httpx.AsyncClient() as client:
                for _ in range(2):
                    async with client.stream("GET", f"http://127.0.0.1:{srv.port}/") as response:
                        obj: Any = response
                        for lib, internal, attr in hops:
                            assert hasattr(obj, attr), moved(lib, internal, user)
                            obj = getattr(obj, attr)
                        state = getattr(obj, "_h11_state", None)
                        assert isinstance(state, h11.Connection), moved(
                            "httpcore", "AsyncHTTP11Connection._h11_state (an h11.Connection)", user
                        )
                        assert state.their_state is h11.SEND_BODY, moved(
                            "httpcore", "_h11_state in SEND_BODY once the head is read", user
                        )
                        network = getattr(getattr(obj, "_network_stream", None), "_stream", None)
                        assert isinstance(network, trio.abc.ReceiveStream), moved(
                            "httpcore", "AsyncHTTP11Connection._network_stream._stream (trio's stream)", user
                        )
                        body = h11_body(response)
                        assert body is not None, moved("httpcore", "the whole path above", user)
                        data = b""
                        while chunk := await body.read():
                            data += chunk
                        assert data == b"data: a\n\ndata: b\n\n"
    # Read below httpx to its end, the connection went back to httpcore's pool and was reused.
    assert len(clients) == 2 and clients[0] == clients[1], moved(
        "httpcore", "reusing a connection whose _h11_state reached DONE outside its iterators", user
    )
