"""Running the mock LLM server: :func:`serve_mock_llm` on :func:`trio_agent.http.serve_http`.

It is served the way the gateway is (the accept queue drained in one pass, a
listen backlog of :data:`~trio_agent.http.LISTEN_BACKLOG`), so a gateway
opening a thousand upstream connections at once is not held up by the mock
in front of it (docs/decisions/008).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..config import MockServerConfig
from ..http import HTTPConfig, gc_threshold, serve_http, set_after, watch_signals
from ._app import MockServerApp

__all__ = ["serve_mock_llm"]


async def serve_mock_llm(
    config: MockServerConfig,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    app: MockServerApp | None = None,
) -> None:
    """Serve the mock LLM until ``shutdown_trigger`` returns (or, without one, SIGTERM/SIGINT).

    ``task_status.started((host, port))`` reports the bound address (port 0
    picks a free one); an address that cannot be used raises
    :class:`~trio_agent.errors.BindError`. On shutdown the server stops
    accepting and gives open streams ``config.drain_timeout`` seconds before
    cancelling them. ``app`` serves a :class:`MockServerApp` the caller built
    (to read its ``statistics()`` in-process); by default one is made from
    ``config``.
    """
    asgi = app if app is not None else MockServerApp(config)
    http = HTTPConfig(
        host=config.host,
        port=config.port,
        graceful_timeout=config.drain_timeout,
        keep_alive_timeout=config.keep_alive_timeout,
    )
    stop = trio.Event()

    async def run_http(*, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        try:
            await serve_http(asgi, http, shutdown_trigger=stop.wait, task_status=task_status)
        finally:
            # serve_http returns once it stopped and open streams drained (or were cut).
            nursery.cancel_scope.cancel()

    with gc_threshold(config.gc_threshold):
        async with trio.open_nursery() as nursery:
            if shutdown_trigger is not None:
                nursery.start_soon(set_after, shutdown_trigger, stop)
            else:
                nursery.start_soon(watch_signals, stop)
            task_status.started(await nursery.start(run_http))
