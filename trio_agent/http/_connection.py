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

from typing import Any

import trio
from hypercorn.events import Closed, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer

from ._direct import ClientGoneError, write_nowait
from ._early import EarlyAnswer, LeanH11Protocol
from ._idle import IdleTimer

__all__ = ["ConnectionCounter", "LeanTCPServer"]


class ConnectionCounter:
    """Connections served by :class:`LeanTCPServer`: ``open`` now, ``opened`` in all."""

    __slots__ = ("open", "opened")

    def __init__(self) -> None:
        self.open = 0
        self.opened = 0

    def __repr__(self) -> str:
        return f"<ConnectionCounter open={self.open} opened={self.opened}>"


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
        self.idle_task = IdleTimer(  # type: ignore[assignment]
            self.config.keep_alive_timeout, self.context.terminated
        )
        self._counter = counter or ConnectionCounter()
        self._early = early
        #: writes that went to the socket whole without the lock / that needed it
        self.direct_writes = 0
        self.locked_writes = 0

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
            await super().run()
        finally:
            counter.open -= 1

    async def protocol_send(self, event: Any) -> None:
        if not isinstance(event, RawData):
            # Closed, and Updated: Hypercorn's idle bookkeeping, on our lock-free IdleTimer.
            await super().protocol_send(event)
            return
        data = event.data
        lock = self.send_lock
        if lock.locked():
            await super().protocol_send(event)
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
