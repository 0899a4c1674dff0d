"""Reading a streamed httpx response's body straight from its HTTP/1.1 connection.

The one module that reads upstream bodies below httpx (docs/decisions/003).
httpx hands a streamed body over through six nested async iterators
(``Response.aiter_raw`` -> ``BoundAsyncStream`` -> ``AsyncResponseStream`` ->
httpcore's ``PoolByteStream`` -> ``HTTP11ConnectionByteStream`` ->
``_receive_response_body``), a context manager per h11 event and a
``trio.fail_after`` per socket read, and yields one HTTP chunk at a time even
when a read brought many. :class:`H11Body` drives the same
``h11.Connection`` on the same socket: one ``receive_some``, then every body
chunk h11 can parse from it at once.

Invariant: the connection's state is h11's own, so when the body ends
(``EndOfMessage``) httpcore sees a finished response on close and keeps the
connection for the next request, as after ``aiter_raw``. The deadlines are
the caller's (the upstream stream's idle and total deadlines): httpx's
per-read timeout is not applied here.

Why a walk over private attributes and not a public extension point: a
custom ``httpx.AsyncBaseTransport`` sees the response only as the stream it
returns, so reaching the h11 state would mean owning HTTP/1.1 framing and
the connection pool ourselves, a rewrite of httpcore. httpcore's public
``network_stream`` response extension gives the socket but not the h11
state: reading from it would skip body bytes h11 already buffered, and leave
h11 short of ``EndOfMessage``, so httpcore would close every connection
instead of reusing it (docs/decisions/004); its ``read()`` also sets a
``fail_after`` per read, the cost this module exists to avoid. So
:func:`h11_body` walks httpx 0.28's and httpcore 1.0's objects (both pinned
in pyproject.toml; each hop has a contract test in
tests/test_http_contracts.py); any other shape (HTTP/2, a mocked transport,
another version) gives None and the caller reads with ``aiter_raw``.
"""

from __future__ import annotations

from typing import Any

import h11
import httpx
import trio

from ..errors import UpstreamConnectError, UpstreamError

__all__ = ["H11Body", "h11_body"]

_READ_BYTES = 64 * 1024  # what httpcore reads at a time


class H11Body:
    """The body of one HTTP/1.1 response, read below httpx (see the module)."""

    __slots__ = ("_conn", "_stream", "done")

    def __init__(self, conn: h11.Connection, stream: trio.abc.ReceiveStream) -> None:
        self._conn = conn
        self._stream = stream
        self.done = False

    async def read(self) -> bytes:
        """Every body byte h11 can give now, reading the socket once if it has none; b"" at the end.

        Raises :class:`~trio_agent.UpstreamConnectError` when the connection
        breaks or the upstream breaks HTTP/1.1, as the httpx path does.
        """
        conn = self._conn
        parts: list[bytes] = []
        while not self.done:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                raise _broken("RemoteProtocolError") from None
            if event is h11.NEED_DATA:
                if parts:
                    break
                try:
                    data = await self._stream.receive_some(_READ_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise _broken("ReadError") from None
                try:
                    conn.receive_data(bytes(data))
                except h11.RemoteProtocolError:
                    raise _broken("RemoteProtocolError") from None
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                self.done = True
            else:  # ConnectionClosed mid-body
                raise _broken("RemoteProtocolError")
        return b"".join(parts)


def _broken(kind: str) -> UpstreamError:
    return UpstreamConnectError(f"upstream connection failed mid-stream ({kind})")


def h11_body(response: httpx.Response) -> H11Body | None:
    """The :class:`H11Body` under a streamed httpx response, or None if it has another shape."""
    try:
        # httpx BoundAsyncStream -> AsyncResponseStream -> httpcore PoolByteStream ->
        # HTTP11ConnectionByteStream -> AsyncHTTP11Connection (its h11 state, its trio stream).
        bound: Any = response.stream
        connection: Any = bound._stream._httpcore_stream._stream._connection
        conn = connection._h11_state
        stream = connection._network_stream._stream
    except AttributeError:
        return None
    if not isinstance(conn, h11.Connection) or not isinstance(stream, trio.abc.ReceiveStream):
        return None
    if conn.their_state is not h11.SEND_BODY:
        return None
    return H11Body(conn, stream)
