"""The per-connection server: Hypercorn's trio ``TCPServer`` with per-request costs taken out.

:class:`LeanTCPServer` serves one connection as Hypercorn's ``TCPServer``
does, with three changes (docs/decisions/002):

- the keep-alive idle timer is :class:`~trio_agent.http._idle.IdleTimer`:
  one task per connection with a movable deadline instead of a task per
  request started and cancelled under a lock;
- writes: when nothing else is writing on the connection, the bytes go to
  the socket with one non-blocking ``send`` instead of Hypercorn's lock and
  shielded ``send_all``; a write the socket does not take whole finishes
  under the lock, and the lock is taken before yielding, so bytes are never
  reordered (the streamed-body path, :mod:`._direct`, follows the same rule,
  docs/decisions/001);
- the HTTP/1.1 protocol is :class:`~trio_agent.http._early.LeanH11Protocol`:
  early answers from the head, and body pieces handed to the app without a
  scheduler pass.

It relies on ``TCPServer``'s ``protocol`` attribute being assigned in
``run()`` with a ``ProtocolWrapper`` whose ``protocol`` is an
``H11Protocol`` built from ten positional arguments, and on its
``send_lock``, ``stream``, ``idle_task``, ``_read_data``, ``_idle_timeout``
and ``_initiate_server_close`` (each checked in
tests/test_http_contracts.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from socket import SHUT_WR
from typing import Any, Protocol

import trio
from hypercorn.events import Closed, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer

from ._direct import ClientGoneError, write_nowait
from ._early import EarlyAnswer, LeanH11Protocol
from ._idle import IdleTimer

__all__ = [
    "DEFAULT_REFUSAL",
    "ConnectionCounter",
    "ConnectionStatistics",
    "ConnectionVerdict",
    "LeanTCPServer",
]


# Refused connections that may be lingering at once (the answer sent, the client's request
# read and dropped until it closes or _LINGER passes, so that closing does not reset the
# connection before the client read the 503). Past it a refused connection is closed at once.
_MAX_LINGERING = 64
_LINGER = 1.0
_LINGER_BYTES = 64 * 1024

#: The answer to a connection past the limit when its owner gives none: minimal, whole,
#: closing the connection.
DEFAULT_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: 24\r\n\r\ntoo many connections now\n"
)


class ConnectionVerdict(enum.Enum):
    """What :meth:`ConnectionCounter.admit` decides for a new connection."""

    SERVE = "serve"
    REFUSE = "refuse"  # a minimal 503, then close
    CLOSE = "close"  # close at once: even the 503 cannot be afforded now


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectionStatistics:
    """``open`` connections now (``idle`` of them between requests), ``opened`` in all;
    ``limit`` (None: unbounded); ``refused`` answered 503, ``closed_at_once`` closed
    without an answer, ``idle_closed`` idle keep-alive connections closed early to make room;
    ``accept_failures`` accepts that failed for want of descriptors."""

    open: int
    idle: int
    opened: int
    limit: int | None
    refused: int
    closed_at_once: int
    idle_closed: int
    accept_failures: int


class ConnectionCounter:
    """The client connections of one server: counted, bounded by ``limit``, idle ones in order.

    Past ``limit`` open connections a new one makes room by closing the
    connection idle the longest (keep-alive, or not yet sent its request);
    with none idle it gets ``refusal`` (a whole HTTP response, written
    without reading the request) and is closed (docs/decisions/010). As
    nginx reuses keep-alive connections, idle ones are closed oldest first
    already when fewer than ``limit // 16`` remain free, so a burst finds
    room. Invariants: ``open`` counts every :class:`LeanTCPServer` between
    the start and the end of its ``run``; an idle connection is in the idle
    order exactly while its idle timer runs.
    """

    __slots__ = (
        "_idle", "_lingering", "accept_failures", "closed_at_once", "idle_closed", "limit",
        "open", "opened", "refusal", "refused",
    )  # fmt: skip

    def __init__(self, limit: int | None = None, *, refusal: bytes = DEFAULT_REFUSAL) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.refusal = refusal
        self.open = 0
        self.opened = 0
        self.refused = 0
        self.closed_at_once = 0
        self.idle_closed = 0
        self.accept_failures = 0
        self._lingering = 0
        # Insertion order is the order connections turned idle: the first is idle the longest.
        self._idle: dict[Closable, None] = {}

    def statistics(self) -> ConnectionStatistics:
        """The counts now (see :class:`ConnectionStatistics`)."""
        return ConnectionStatistics(
            open=self.open,
            idle=len(self._idle),
            opened=self.opened,
            limit=self.limit,
            refused=self.refused,
            closed_at_once=self.closed_at_once,
            idle_closed=self.idle_closed,
            accept_failures=self.accept_failures,
        )

    def __repr__(self) -> str:
        return (
            f"<ConnectionCounter open={self.open} idle={len(self._idle)} limit={self.limit}"
            f" opened={self.opened} refused={self.refused}>"
        )

    def mark(self, conn: Closable, idle: bool) -> None:
        """``conn`` turned idle (to the end of the order) or busy (out of it)."""
        self._idle.pop(conn, None)
        if idle:
            self._idle[conn] = None

    def forget(self, conn: Closable) -> None:
        """``conn`` is closed."""
        self._idle.pop(conn, None)

    def close_oldest_idle(self) -> bool:
        """Close the connection idle the longest; False when none is idle."""
        for conn in self._idle:
            del self._idle[conn]
            conn.expire()
            self.idle_closed += 1
            return True
        return False

    def accept_failed(self) -> int:
        """An accept failed for want of descriptors: count it and close the oldest idle
        connections (as nginx drains its reusable ones: an eighth of them, 1 to 32); how many."""
        self.accept_failures += 1
        closed = 0
        for _ in range(max(1, min(32, len(self._idle) // 8))):
            if not self.close_oldest_idle():
                break
            closed += 1
        return closed

    def admit(self) -> ConnectionVerdict:
        """The verdict for a connection just opened (already counted in ``open``)."""
        limit = self.limit
        if limit is None:
            return ConnectionVerdict.SERVE
        if self.open > limit - limit // 16 and self.close_oldest_idle():
            return ConnectionVerdict.SERVE
        if self.open <= limit:
            return ConnectionVerdict.SERVE
        if self._lingering >= _MAX_LINGERING:
            self.closed_at_once += 1
            return ConnectionVerdict.CLOSE
        self.refused += 1
        return ConnectionVerdict.REFUSE

    async def refuse(self, stream: trio.SocketStream, verdict: ConnectionVerdict) -> None:
        """Answer ``refusal`` on ``stream`` (REFUSE) and close it; CLOSE closes it at once."""
        if verdict is ConnectionVerdict.REFUSE:
            self._lingering += 1
            try:
                await _answer_and_close(stream, self.refusal)
            finally:
                self._lingering -= 1
        await trio.aclose_forcefully(stream)


class Closable(Protocol):
    """What :class:`ConnectionCounter` closes: a connection's idle timer."""

    def expire(self) -> None: ...


async def _answer_and_close(stream: trio.SocketStream, answer: bytes) -> None:
    sock = stream.socket
    try:
        sent = write_nowait(sock, answer)
        if sent < len(answer):
            return  # a fresh socket takes a few hundred bytes whole; if not, not worth waiting
        sock.shutdown(SHUT_WR)
    except (ClientGoneError, OSError):
        return
    # Read and drop what the client sends until it closes (it read the answer), so that our
    # close does not reset the connection with its request unread and lose the 503 with it.
    with trio.move_on_after(_LINGER):
        dropped = 0
        while dropped < _LINGER_BYTES:
            try:
                data = await stream.receive_some(16384)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            dropped += len(data)


class LeanTCPServer(TCPServer):
    """Hypercorn's trio ``TCPServer`` with a cheaper idle timer and direct writes (see the module)."""

    def __init__(
        self,
        *args: Any,
        counter: ConnectionCounter | None = None,
        early: EarlyAnswer | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._counter = counter = counter or ConnectionCounter()
        timer = IdleTimer(
            self.config.keep_alive_timeout,
            self.context.terminated,
            lambda idle: counter.mark(timer, idle),
        )
        self._timer = timer
        self.idle_task = timer  # type: ignore[assignment]
        self._early = early
        #: writes that went to the socket whole without the lock / that needed it
        self.direct_writes = 0
        self.locked_writes = 0
        #: bytes written while a response holds its writes (DirectBody.hold), else None
        self.held: bytearray | None = None

    @property
    def protocol(self) -> ProtocolWrapper:
        return self._protocol

    @protocol.setter
    def protocol(self, wrapper: ProtocolWrapper) -> None:
        # Hypercorn's run() builds the ProtocolWrapper; its HTTP/1.1 protocol becomes ours.
        inner = getattr(wrapper, "protocol", None)
        if type(inner) is H11Protocol:
            wrapper.protocol = LeanH11Protocol(
                self._early, inner.app, inner.config, inner.context, inner.task_group,
                inner.connection_state, inner.ssl, inner.client, inner.server, inner.send,
            )  # fmt: skip
        self._protocol = wrapper

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            self.idle_task.cancel()  # type: ignore[attr-defined]

    async def _idle_timeout(self) -> None:
        # Hypercorn's waits out keep_alive_timeout itself; IdleTimer has done that already.
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()

    async def run(self) -> None:
        counter = self._counter
        counter.open += 1
        counter.opened += 1
        try:
            verdict = counter.admit()
            if verdict is ConnectionVerdict.SERVE:
                await super().run()
            else:
                # serve_http serves plain TCP: the stream is a trio.SocketStream.
                await counter.refuse(self.stream, verdict)  # type: ignore[arg-type]
        finally:
            counter.open -= 1
            counter.forget(self._timer)
            self._break_cycles()

    def _break_cycles(self) -> None:
        # The connection's objects refer to each other in cycles (the protocol holds this
        # server's bound protocol_send, the idle timer its callback, the task group its tasks),
        # which only a full collection frees; under gc_threshold (docs/decisions/005) that is
        # rare, so closed connections piled up as garbage. Dropping the links here frees them
        # by reference counting when the connection ends.
        self._timer.detach()
        self.__dict__.pop("_protocol", None)
        self.__dict__.pop("_task_group", None)

    async def protocol_send(self, event: Any) -> None:
        held = self.held
        if not isinstance(event, RawData):
            if held:  # what is held goes out before the connection closes
                self.held = bytearray()
                await self.send_held(bytes(held))
            # Closed, and Updated: Hypercorn's idle bookkeeping, on our lock-free IdleTimer.
            await super().protocol_send(event)
            return
        if held is not None:  # sent with the held response's next write (DirectBody.hold)
            held += event.data
            return
        await self.send_held(event.data)

    async def send_held(self, data: bytes) -> None:
        """Write ``data`` as Hypercorn's writes go (see the module): at once when nothing else
        is writing, else under the lock."""
        lock = self.send_lock
        if lock.locked():
            await super().protocol_send(RawData(data=data))
            return
        try:
            sent = write_nowait(self.stream.socket, data) if data else 0
        except ClientGoneError:
            await self.protocol.handle(Closed())
            return
        if sent == len(data) and data:
            self.direct_writes += 1
            return
        # The rest under the lock, taken before any yield so no other write can slip in.
        self.locked_writes += 1
        lock.acquire_nowait()
        try:
            with trio.CancelScope(shield=True):
                await self.stream.send_all(data[sent:])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            lock.release()
            await self.protocol.handle(Closed())
            return
        lock.release()
