"""The Hypercorn objects under an ASGI ``send``, and closing the connection through them.

Hypercorn's HTTP/1.1 ASGI ``send`` is a bound method chain:
``HTTPStream.app_send`` -> ``H11Protocol.stream_send`` ->
``TCPServer.protocol_send``. :func:`h11_parts` is the one place that walks
it (the chain is checked in tests/test_http_contracts.py); any other shape
(HTTP/2, a test harness, a future Hypercorn) gives None, and every caller
then falls back to plain ASGI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.protocol.h11 import H11Protocol

__all__ = ["abort_transport", "h11_parts"]


def h11_parts(send: Callable[..., Awaitable[None]]) -> tuple[Any, Any, Any] | None:
    """``(HTTPStream, H11Protocol, TCPServer)`` under a Hypercorn HTTP/1.1 ASGI ``send``, else None."""
    try:
        http_stream = send.__self__  # type: ignore[attr-defined]
        protocol = http_stream.send.__self__
        server = protocol.send.__self__
    except AttributeError:
        return None
    if not isinstance(protocol, H11Protocol):
        return None
    return http_stream, protocol, server


def abort_transport(send: Callable[..., Awaitable[None]]) -> bool:
    """Close the TCP connection under a Hypercorn HTTP/1.1 ASGI ``send``; False if not possible.

    Hypercorn writes to the socket inside a shielded cancel scope, so a
    client that stops reading can hold a write (and the task in it) forever.
    Closing the socket wakes that write with ``ClosedResourceError``, which
    Hypercorn treats as the client leaving.
    """
    parts = h11_parts(send)
    if parts is None:
        return False
    sock = getattr(getattr(parts[2], "stream", None), "socket", None)
    if not isinstance(sock, trio.socket.SocketType):
        return False
    sock.close()
    return True
