"""Running the mock LLM server: :func:`serve_mock_llm` on Hypercorn's trio worker.

It is served the way the gateway is (:func:`~trio_agent.server._listen.serve_hypercorn`:
the accept queue drained in one pass, a listen backlog of 4096): with
Hypercorn's own worker (a backlog of 100, one accept per scheduler pass), a
gateway opening a thousand upstream connections at once lost SYNs and waited
for TCP's 1 s, 3 s and 7 s retransmits, and proxied TTFT p50 was 7 s.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.utils import wrap_app

from ..config import MockServerConfig
from ..server._listen import serve_hypercorn
from ..server._serve import (
    _LISTEN_BACKLOG,
    _gc_threshold,
    _parse_bind,
    _wait_then_set,
    _watch_signals,
)
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
    picks a free one). On shutdown Hypercorn stops accepting and gives open
    streams ``config.drain_timeout`` seconds before cancelling them. ``app``
    serves a :class:`MockServerApp` the caller built (to read its
    ``statistics()`` in-process); by default one is made from ``config``.
    """
    asgi = app if app is not None else MockServerApp(config)
    hc = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hc.bind = [f"{host}:{config.port}"]
    hc.graceful_timeout = config.drain_timeout
    hc.keep_alive_timeout = config.keep_alive_timeout
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.backlog = _LISTEN_BACKLOG
    stop = trio.Event()

    async def run_hypercorn(*, task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await serve_hypercorn(
                wrap_app(cast(Any, asgi), hc.wsgi_max_body_size, "asgi"),
                hc,
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        finally:
            # Hypercorn returns once it stopped and open streams drained (or were cut).
            nursery.cancel_scope.cancel()

    async with _gc_threshold(config.gc_threshold), trio.open_nursery() as nursery:
        if shutdown_trigger is not None:
            nursery.start_soon(_wait_then_set, shutdown_trigger, stop)
        else:
            nursery.start_soon(_watch_signals, stop)
        binds: list[str] = await nursery.start(run_hypercorn)
        task_status.started(_parse_bind(binds[0]) if binds else (config.host, config.port))
