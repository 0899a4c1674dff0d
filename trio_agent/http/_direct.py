"""Streamed body bytes written straight to Hypercorn's socket when it is free.

Under Hypercorn's trio worker every ASGI ``http.response.body`` message goes
``HTTPStream.app_send`` -> ``H11Protocol`` -> ``TCPServer.protocol_send``,
which takes a :class:`trio.Lock` and calls ``SocketStream.send_all`` in a
shielded cancel scope: two reschedules of the writing task and half a dozen
frames per streamed event. :class:`DirectBody` writes the body of an
HTTP/1.1 response whose head Hypercorn has already sent with one
non-blocking ``send``, no yield, when Hypercorn holds no write on that
connection (docs/decisions/001).

Invariants:

- bytes are never reordered: anything else (the socket would block, a
  partial send, a write of Hypercorn's in progress) takes Hypercorn's own
  lock and ``send_all``, exactly as Hypercorn would;
- h11's state stays true: a chunk is framed as h11's ``ChunkedWriter``
  frames it (done here only when h11 chose chunked framing and is sending the
  body, since that writer keeps no state per chunk; through
  ``h11.Connection.send`` otherwise), so Hypercorn's final ``EndOfMessage``
  is still correct;
- never writes to a closed, possibly reused, file descriptor.

:func:`direct_body` finds the parts through
:func:`~trio_agent.http._transport.h11_parts` and returns ``None`` for any
other shape (HTTP/2, TLS, a test harness, a future Hypercorn); the caller
then keeps using ASGI ``send``. The internals it relies on (the ``send``
chain, ``TCPServer.send_lock`` and ``stream``, ``h11.Connection._writer``
being a ``ChunkedWriter``) are checked in tests/test_http_contracts.py.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import trio

from ._transport import h11_parts

__all__ = ["ClientGoneError", "DirectBody", "direct_body", "write_nowait"]


class ClientGoneError(Exception):
    """A body write failed because the client left (the stream maps it to a disconnect)."""


def write_nowait(sock: trio.socket.SocketType, data: bytes) -> int:
    """One non-blocking ``send`` of ``data`` on ``sock``: the bytes it took (0 if full).

    Raises :class:`ClientGoneError` if the socket is closed (never writes to a
    closed, possibly reused, fd) or the send fails. The caller makes sure no
    other write is in progress on the connection.
    """
    fd = sock.fileno()
    if fd < 0:
        raise ClientGoneError("the socket is closed")
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise ClientGoneError(str(exc)) from None


class DirectBody:
    """Body writes for one Hypercorn HTTP/1.1 response, without the ASGI hop when possible.

    ``send_nowait`` never yields; ``send`` yields only when the socket is
    busy. Both raise :class:`ClientGoneError` once the connection is gone.
    """

    __slots__ = (
        "_chunked",
        "_conn",
        "_http_stream",
        "_lock",
        "_rest",
        "_server",
        "_stream",
        "direct",
        "waited",
    )

    def __init__(
        self,
        http_stream: Any,
        conn: h11.Connection,
        lock: trio.Lock,
        stream: trio.SocketStream,
        server: Any = None,
    ) -> None:
        self._http_stream = http_stream
        self._conn = conn
        self._lock = lock
        self._stream = stream
        self._server = server
        self._rest = b""
        # Whether h11 frames this response's body in chunks (HTTP/1.1, no content-length), so
        # we may too: known once the head went through h11, so read at the first body write.
        self._chunked: bool | None = None
        #: writes that went out whole at once / that waited for the socket
        self.direct = 0
        self.waited = 0

    @property
    def pending(self) -> bool:
        """Bytes of an accepted write are still unsent: ``await flush()`` before anything else."""
        return bool(self._rest)

    @property
    def ready(self) -> bool:
        """:meth:`send_nowait` would start now: no write of Hypercorn's, nothing pending."""
        return not self._rest and not self._lock.locked()

    def _framed(self, body: bytes) -> bytes:
        if self._http_stream.closed:
            raise ClientGoneError("the connection was closed")
        conn = self._conn
        chunked = self._chunked
        if chunked is None:
            chunked = self._chunked = type(getattr(conn, "_writer", None)).__name__ == "ChunkedWriter"
        if chunked and body and conn.our_state is h11.SEND_BODY:
            # What h11's ChunkedWriter writes for Data (it keeps no state per chunk), without
            # its event validation and state machine (docs/decisions/001).
            return b"%x\r\n%b\r\n" % (len(body), body)
        data = conn.send(h11.Data(data=body))
        assert data is not None
        return data

    def send_nowait(self, body: bytes) -> bool:
        """Frame ``body`` as one chunk and hand it to the socket without yielding; True when
        the socket took it whole.

        Raises :class:`trio.WouldBlock` (nothing consumed) while Hypercorn is
        writing on this connection or an earlier write is still pending.
        Whatever the socket did not take stays :attr:`pending`.
        """
        server = self._server
        if server is not None and server.held is not None:
            server.held += self._framed(body)
            return True
        if self._rest or self._lock.locked():
            raise trio.WouldBlock
        data = self._framed(body)
        sent = write_nowait(self._stream.socket, data)  # a closed socket: ClientGoneError
        if sent < len(data):
            self._rest = data[sent:]
            return False
        self.direct += 1
        return True

    def hold(self) -> bool:
        """Hold every write on this connection, Hypercorn's and ours, until :meth:`release`,
        which sends them in one write (the head with the first event: one system call instead
        of two; docs/decisions/014). False (nothing held) unless the connection is served by
        :class:`~trio_agent.http.LeanTCPServer`. The caller releases in a ``finally``; if
        Hypercorn closes the connection meanwhile, what is held goes out first."""
        server = self._server
        if server is None or not hasattr(server, "held") or server.held is not None:
            return False
        server.held = bytearray()
        return True

    async def release(self) -> None:
        """Stop holding; send what is held, in order after anything still pending."""
        server = self._server
        held, server.held = server.held, None
        await self.flush()
        if held:
            await server.send_held(bytes(held))

    async def flush(self) -> None:
        """Send what an earlier :meth:`send_nowait` left pending, under Hypercorn's lock."""
        if self._rest:
            rest, self._rest = self._rest, b""
            await self._send_locked(rest)

    async def send(self, body: bytes) -> None:
        """Send ``body`` as one chunk: at once when the socket is free, else under the lock."""
        await self.flush()
        try:
            self.send_nowait(body)
        except trio.WouldBlock:
            await self._send_locked(self._framed(body))
            return
        if self._rest:
            await self.flush()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    async def _send_locked(self, data: bytes) -> None:
        self.waited += 1
        async with self._lock:
            try:
                # Shielded as Hypercorn does: a half-written chunk would corrupt the stream.
                with trio.CancelScope(shield=True):
                    await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ClientGoneError(str(exc)) from None


def direct_body(send: Callable[..., Awaitable[None]]) -> DirectBody | None:
    """The direct writer under a Hypercorn HTTP/1.1 ASGI ``send`` over plain TCP, else None."""
    parts = h11_parts(send)
    if parts is None:
        return None
    http_stream, protocol, server = parts
    conn = getattr(protocol, "connection", None)
    lock = getattr(server, "send_lock", None)
    stream = getattr(server, "stream", None)
    if not (
        isinstance(conn, h11.Connection)
        and isinstance(lock, trio.Lock)
        and isinstance(stream, trio.SocketStream)
        and hasattr(http_stream, "closed")
    ):
        return None
    return DirectBody(http_stream, conn, lock, stream, server)
