"""Serving an ASGI app on Hypercorn's trio machinery, through this package's listener and
connection server.

Hypercorn builds its own ``trio.SocketListener`` inside ``worker_serve``,
with no way in, so :func:`serve_http` is Hypercorn's trio ``worker_serve``
(hypercorn/trio/run.py) for plain TCP sockets, with
:class:`~trio_agent.http.DrainingListener` in place of trio's listener
(docs/decisions/008) and :class:`~trio_agent.http.LeanTCPServer` per
connection (docs/decisions/002): the same lifespan, shutdown trigger and
graceful timeout. It relies on ``Lifespan``, ``WorkerContext``,
``ConnectionState``, ``raise_shutdown``/``ShutdownError`` and ``wrap_app``
(checked in tests/test_http_contracts.py).

Invariants: the sockets are bound before any task starts (a bad address is
one :class:`~trio_agent.errors.BindError`); once ``shutdown_trigger``
returns, nothing new is accepted, and open connections get
``config.graceful_timeout`` seconds before they are cancelled; the lifespan
shutdown runs after the last connection ended.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from random import randint
from typing import Any

import trio
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from ._bind import bind_sockets
from ._config import HTTPConfig, hypercorn_config
from ._connection import ConnectionCounter, LeanTCPServer
from ._early import EarlyAnswer
from ._listener import DrainingListener

__all__ = ["serve_http"]


async def serve_http(
    app: Any,
    config: HTTPConfig,
    *,
    sockets: Sequence[socket.socket] | None = None,
    shutdown_trigger: Callable[..., Awaitable[Any]] | None = None,
    on_listeners: Callable[[list[DrainingListener]], None] | None = None,
    counter: ConnectionCounter | None = None,
    early: EarlyAnswer | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI 3 ``app`` until ``shutdown_trigger`` returns, then drain and return.

    ``sockets``: listening sockets bound already (see :func:`bind_sockets`);
    by default ``config``'s address is bound here, before anything starts.
    ``task_status.started((host, port))`` reports the first bound address
    (port 0 picks a free one). ``on_listeners`` sees the listeners (for their
    statistics); connections are counted in ``counter``; ``early`` may answer
    a request from its head, without calling the app. ``config.max_connections``
    (when set) becomes ``counter``'s limit; a listener out of descriptors
    closes the oldest idle connection.
    """
    if counter is None:
        counter = ConnectionCounter()
    if config.max_connections is not None:
        counter.limit = config.max_connections
    owned = sockets is None
    if sockets is None:
        sockets = bind_sockets(config)
    else:
        for sock in sockets:
            sock.listen(config.backlog)
    hc = hypercorn_config(config)
    hc.set_statsd_logger_class(StatsdLogger)
    asgi = wrap_app(app, hc.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(asgi, hc, lifespan_state)
    max_requests = None
    if hc.max_requests is not None:
        max_requests = hc.max_requests + randint(0, hc.max_requests_jitter)
    context = WorkerContext(max_requests)

    async with trio.open_nursery() as lifespan_nursery:
        try:
            await lifespan_nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
        except BaseException:
            if owned:  # not yet handed to a listener, which would close it
                for sock in sockets:
                    sock.close()
            raise

        async with trio.open_nursery() as server_nursery:
            listeners = [
                DrainingListener(sock, on_exhausted=counter.accept_failed) for sock in sockets
            ]
            if on_listeners is not None:
                on_listeners(listeners)
            for listener in listeners:
                bind = repr_socket_addr(listener.socket.family, listener.socket.getsockname())
                await hc.log.info(f"Running on http://{bind} (CTRL + C to quit)")
            first = listeners[0].socket.getsockname()
            task_status.started((first[0], first[1]))
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
                                asgi,
                                hc,
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
                server_nursery.cancel_scope.deadline = trio.current_time() + hc.graceful_timeout

        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
