"""Accepting connections fairly under load: drain the kernel's accept queue in one pass.

trio's :class:`trio.SocketListener` yields after every ``accept()`` (a
scheduling point, as every trio operation is), so :func:`trio.serve_listeners`
takes in one connection per pass of the scheduler. Under load a pass is long
(every busy stream gets its turn in it), so new clients wait in the kernel's
backlog behind the streams already served: in an overload run they were never
even refused, just left waiting. :class:`DrainingListener` accepts everything
the kernel has queued (up to ``max_batch``, 64) when the socket turns readable
and hands the connections out without yielding in between, so a pass admits
(or refuses with a 503) every client that arrived during the previous one.

Hypercorn builds its own ``trio.SocketListener`` inside ``worker_serve``,
with no way in, so :func:`serve_hypercorn` is Hypercorn's trio
``worker_serve`` for plain TCP sockets with this listener in place of
trio's: the same lifespan, ``TCPServer`` per connection, shutdown trigger
and graceful timeout (hypercorn/trio/run.py, 0.18). The end-to-end tests
run every request through it, and a test checks that a burst of connections
is taken in one pass.

Each connection is served by :class:`LeanTCPServer`, Hypercorn's
``TCPServer`` with three per-request costs taken out (measured: a bare ASGI app
answering a 503 costs about 1 ms of CPU per request under Hypercorn's trio
worker against 0.3 ms under uvicorn, and under overload most requests are
such refusals):

- the keep-alive idle timer: Hypercorn restarts it after every response with
  ``nursery.start`` under a lock (a new task, and the connection waits a
  whole scheduler pass for it to start) and stops it, under the lock again,
  on the next request. Here one timer task per connection waits in a
  cancel scope whose deadline a restart moves to ``keep_alive_timeout``
  from now and a stop to infinity (:class:`_IdleTimer`): the same timeout,
  no task per request, no pass waited for, no lock;
- writes: Hypercorn takes its send lock and runs ``send_all`` in a shielded
  cancel scope for every piece of every response (head, body, chunk end),
  two reschedules each. Here, when nothing else is writing on the
  connection, the bytes go to the socket with one non-blocking ``send``; a
  write the socket does not take whole finishes under the lock, as before,
  and the lock is taken before yielding, so bytes are never reordered
  (the streamed-token path, :mod:`._direct`, follows the same rule);
- handing the request body to the app: Hypercorn awaits a memory channel
  ``send`` per body piece and for its end, a scheduler pass each, so the
  app waited one pass per piece; here a piece goes in without yielding while
  the channel has room (the app reads it with ``receive_nowait``).
"""

from __future__ import annotations

import errno
import math
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from random import randint
from typing import Any, Protocol

import h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.events import Closed, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.events import EndBody, StreamClosed
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr

from ._direct import ClientGoneError, write_nowait

__all__ = [
    "ConnectionCounter",
    "DrainingListener",
    "LeanTCPServer",
    "ListenerStatistics",
    "serve_hypercorn",
]

# Errors of accept(2) that concern one connection only (as trio's SocketListener).
_IGNORABLE = {errno.ECONNABORTED, errno.EPERM, errno.EPROTO}
_CLOSED = {errno.EBADF, errno.EINVAL, errno.ENOTSOCK}
# Most connections taken in one pass: enough that a burst never waits behind busy streams for
# more than a pass or two, few enough that a flood of new clients (each a task, a parse and
# most likely a 503 under overload) cannot crowd out the streams already admitted.
_MAX_BATCH = 64


@dataclass(frozen=True, kw_only=True, slots=True)
class ListenerStatistics:
    """``accepted`` connections so far, in ``passes`` wake-ups; ``largest_pass`` the most at once."""

    accepted: int
    passes: int
    largest_pass: int
    ready: int


class DrainingListener(trio.abc.Listener[trio.SocketStream]):
    """A listener that takes every queued connection at once (see the module docstring)."""

    def __init__(self, sock: socket.socket, *, max_batch: int = _MAX_BATCH) -> None:
        if sock.type != socket.SOCK_STREAM:
            raise ValueError("DrainingListener needs a SOCK_STREAM socket")
        sock.setblocking(False)
        self._sock = sock
        self._max_batch = max_batch
        self._ready: deque[trio.SocketStream] = deque()
        self._accepted = self._passes = self._largest = 0
        self._closed = False

    @property
    def socket(self) -> socket.socket:
        """The listening socket."""
        return self._sock

    def statistics(self) -> ListenerStatistics:
        """Counts so far, and connections accepted but not yet handed out (``ready``)."""
        return ListenerStatistics(
            accepted=self._accepted,
            passes=self._passes,
            largest_pass=self._largest,
            ready=len(self._ready),
        )

    def __repr__(self) -> str:
        return f"<DrainingListener fd={self._sock.fileno()} accepted={self._accepted} ready={len(self._ready)}>"

    async def accept(self) -> trio.SocketStream:
        """The next connection; only waits (and yields) when none is queued."""
        while not self._ready:
            if self._closed:
                raise trio.ClosedResourceError("the listener is closed")
            await trio.lowlevel.wait_readable(self._sock)
            self._drain()
        await trio.lowlevel.checkpoint_if_cancelled()
        return self._ready.popleft()

    def _drain(self) -> None:
        taken = 0
        while taken < self._max_batch:
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _IGNORABLE:
                    continue
                if exc.errno in _CLOSED:
                    raise trio.ClosedResourceError("the listener is closed") from None
                raise
            conn.setblocking(False)
            self._ready.append(trio.SocketStream(trio.socket.from_stdlib_socket(conn)))
            taken += 1
        if taken:
            self._passes += 1
            self._accepted += taken
            self._largest = max(self._largest, taken)

    async def aclose(self) -> None:
        """Close the listening socket and every connection accepted but not handed out."""
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
            while self._ready:
                await trio.aclose_forcefully(self._ready.popleft())
        await trio.lowlevel.checkpoint()


class _Terminated(Protocol):
    """Hypercorn's ``WorkerContext.terminated``: set when the server stops."""

    async def wait(self) -> None: ...

    def is_set(self) -> bool: ...


class _IdleTimer:
    """Hypercorn's idle-timeout ``SingleTask``, as one task per connection with a movable deadline.

    Hypercorn restarts the timer whenever a connection turns idle (a response
    ended) and stops it whenever it turns busy (a request began). Its own
    timer, and this one's first version, started a task in a fresh cancel
    scope per restart and cancelled it per stop: under overload, where each
    request is a cheap 503, that spawn and cancel was about a fifth of the
    server's CPU per request. Here one task per connection waits in a cancel
    scope for a deadline that ``restart`` sets to ``keep_alive_timeout`` from
    now and ``stop`` to infinity; neither yields nor spawns.

    When the deadline passes, or the server stops (``terminated``) while the
    connection is idle, the task runs ``action``, which closes the
    connection (``LeanTCPServer._idle_timeout``). A connection busy when the
    server stops closes as soon as it turns idle, as with Hypercorn's timer.
    ``cancel`` ends the task when the connection is done (Hypercorn's task
    group waits for its tasks, and this one would otherwise wait forever).
    """

    __slots__ = ("_cancelled", "_deadline", "_running", "_scope", "_terminated", "_timeout")

    def __init__(self, timeout: float, terminated: _Terminated) -> None:
        self._timeout = timeout
        self._terminated = terminated
        self._deadline = math.inf
        self._scope: trio.CancelScope | None = None
        self._running = False
        self._cancelled = False

    def _set_deadline(self, deadline: float) -> None:
        # Moving a cancel scope's deadline re-registers it with trio (a heap push): done only
        # when the new deadline is earlier. A later one is left to the watcher, which wakes at
        # the old deadline, finds it moved, and waits again (once per keep_alive_timeout, not
        # once per request).
        self._deadline = deadline
        scope = self._scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    async def restart(self, task_group: Any, action: Callable[[], Awaitable[None]]) -> None:
        self._set_deadline(trio.current_time() + self._timeout)
        if not self._running and not self._cancelled:
            self._running = True
            task_group._nursery.start_soon(self._watch, action)

    async def stop(self) -> None:
        self._set_deadline(math.inf)

    def cancel(self) -> None:
        """The connection is done: end the timer task without running its action."""
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    async def _watch(self, action: Callable[[], Awaitable[None]]) -> None:
        terminated = self._terminated
        while not self._cancelled:
            with trio.CancelScope(deadline=self._deadline) as scope:
                self._scope = scope
                if not terminated.is_set():
                    await terminated.wait()
                    continue  # the server is stopping: see below, in a fresh scope
                self._timeout = 0.0  # from now on, turning idle closes the connection at once
                if self._deadline < math.inf:
                    break  # idle now
                await trio.sleep_forever()  # busy: until restart() sets a deadline
            if trio.current_time() >= self._deadline:
                break
        self._scope = None
        if not self._cancelled:
            await action()


#: ``(method, target, headers) -> (status, headers, body)`` of a whole answer given without
#: calling the app, or None to call it (see :class:`LeanTCPServer`).
EarlyAnswer = Callable[
    [bytes, bytes, list[tuple[bytes, bytes]]], "tuple[int, list[tuple[bytes, bytes]], bytes] | None"
]


def _put_nowait(put: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """Hypercorn's ``app_put`` (a memory channel's ``send``), not yielding while there is room.

    Hypercorn hands the app each body piece with ``await send(...)``, a whole
    scheduler pass per piece for the connection task; so the app, started in
    the next pass, found the body incomplete and waited a pass for each
    piece. Put without yielding, a body that came in one read is all there
    when the app starts. A full channel (a slow app) still waits, as before.
    """
    send_nowait = getattr(getattr(put, "__self__", None), "send_nowait", None)
    if send_nowait is None:
        return put

    async def put_nowait(message: Any) -> None:
        try:
            send_nowait(message)
        except trio.WouldBlock:
            await put(message)

    return put_nowait


def receive_nowait_of(receive: Callable[[], Awaitable[Any]]) -> Callable[[], Any] | None:
    """The ``receive_nowait`` behind an ASGI ``receive`` (Hypercorn's is a memory channel's
    ``receive``), or None. With :func:`_put_nowait`, a body that came in one read is taken
    whole without a scheduler pass; ``trio.WouldBlock`` means await ``receive()``.
    """
    ready = getattr(getattr(receive, "__self__", None), "receive_nowait", None)
    return ready if callable(ready) else None


def quick_receive(receive: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    """``receive``, returning a message the server already holds without a scheduler pass."""
    ready = receive_nowait_of(receive)
    if ready is None:
        return receive

    async def take() -> Any:
        try:
            return ready()
        except trio.WouldBlock:
            return await receive()

    return take


class _CannedResponse:
    """Stands in for Hypercorn's ``HTTPStream`` when the answer is known from the request head.

    The protocol sends the answer at once, in one write; the request body is
    read and dropped, and the connection is recycled for the next request
    when it ends (keep-alive), as after any response. Meanwhile the idle
    timer runs, so a body that never ends closes the connection after
    ``keep_alive_timeout``.
    """

    __slots__ = ("_send", "closed")

    def __init__(self, send: Callable[[Any], Awaitable[None]]) -> None:
        self._send = send
        self.closed = False

    async def handle(self, event: Any) -> None:
        if self.closed:
            return
        if isinstance(event, EndBody):
            await self._send(StreamClosed(stream_id=STREAM_ID))
        elif isinstance(event, StreamClosed):
            self.closed = True


class _LeanH11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol, answering some requests from their head alone.

    ``early(method, target, headers)`` decides; None calls the app as usual.
    Used for the gateway's refusals under overload: no app task, no ASGI
    messages, no request parsing, which is most of what a refusal costs.
    """

    def __init__(self, early: EarlyAnswer | None, *args: Any) -> None:
        super().__init__(*args)
        self._early = early

    async def _create_stream(self, request: h11.Request) -> None:
        early = self._early
        answer = None if early is None else early(request.method, request.target, list(request.headers))
        if answer is None:
            await super()._create_stream(request)
            if isinstance(self.stream, HTTPStream) and self.stream.app_put is not None:
                self.stream.app_put = _put_nowait(self.stream.app_put)
            return
        self.stream = _CannedResponse(self.stream_send)  # type: ignore[assignment]
        self.keep_alive_requests += 1
        await self._send_whole(*answer)
        # Until the body has been read the connection is not idle for Hypercorn; let its idle
        # timer bound a body that never ends.
        await self.send(Updated(idle=True))
        await self.context.mark_request()

    async def _send_whole(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """A whole response in one write: what ``stream_send`` does for its three events."""
        headers = [*headers, *self.config.response_headers("h11")]
        if self.keep_alive_requests >= self.config.keep_alive_max_requests:
            headers.append((b"connection", b"close"))
        conn = self.connection
        try:
            data = b"".join((
                conn.send(h11.Response(status_code=status, headers=headers)) or b"",
                conn.send(h11.Data(data=body)) or b"",
                conn.send(h11.EndOfMessage()) or b"",
            ))  # fmt: skip
        except h11.LocalProtocolError:
            if conn.their_state != h11.ERROR:
                raise
            return
        await self.send(RawData(data=data))


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
        self.idle_task = _IdleTimer(  # type: ignore[assignment]
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
            wrapper.protocol = _LeanH11Protocol(
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
        # Hypercorn's waits out keep_alive_timeout itself; _IdleTimer has done that already.
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
            # Closed, and Updated: Hypercorn's idle bookkeeping, on our lock-free _IdleTimer.
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


async def serve_hypercorn(
    app: Any,
    config: HypercornConfig,
    *,
    sockets: Sockets | None = None,
    shutdown_trigger: Callable[..., Awaitable[None]] | None = None,
    on_listeners: Callable[[list[DrainingListener]], None] | None = None,
    counter: ConnectionCounter | None = None,
    early: EarlyAnswer | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hypercorn's trio ``worker_serve`` for plain TCP, accepting through :class:`DrainingListener`.

    Connections are served by :class:`LeanTCPServer`, counted in ``counter``;
    ``early`` may answer a request from its head, without calling the app.
    """
    config.set_statsd_logger_class(StatsdLogger)
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(app, config, lifespan_state)
    max_requests = None
    if config.max_requests is not None:
        max_requests = config.max_requests + randint(0, config.max_requests_jitter)
    context = WorkerContext(max_requests)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()

        async with trio.open_nursery() as server_nursery:
            if sockets is None:
                sockets = config.create_sockets()
                for sock in sockets.insecure_sockets:
                    sock.listen(config.backlog)
            if sockets.secure_sockets or sockets.quic_sockets:
                raise ValueError("serve_hypercorn serves plain TCP sockets only")
            listeners = [DrainingListener(sock) for sock in sockets.insecure_sockets]
            if on_listeners is not None:
                on_listeners(listeners)
            binds = []
            for listener in listeners:
                bind = repr_socket_addr(listener.socket.family, listener.socket.getsockname())
                binds.append(f"http://{bind}")
                await config.log.info(f"Running on http://{bind} (CTRL + C to quit)")

            task_status.started(binds)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    if shutdown_trigger is not None:
                        nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(
                        partial(
                            trio.serve_listeners,
                            partial(
                                LeanTCPServer,
                                app,
                                config,
                                context,
                                ConnectionState(lifespan_state.copy()),
                                counter=counter,
                                early=early,
                            ),
                            listeners,
                            handler_nursery=server_nursery,
                        ),
                    )
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors from error
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout

        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
