"""Running the mock LLM server: :func:`serve_mock_llm` on Hypercorn's trio worker."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from ..config import MockServerConfig
from ..server._serve import _parse_bind, _wait_then_set, _watch_signals
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
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    stop = trio.Event()

    async def run_hypercorn(*, task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await worker_serve(
                wrap_app(cast(Any, asgi), hc.wsgi_max_body_size, "asgi"),
                hc,
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        finally:
            # Hypercorn returns once it stopped and open streams drained (or were cut).
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        if shutdown_trigger is not None:
            nursery.start_soon(_wait_then_set, shutdown_trigger, stop)
        else:
            nursery.start_soon(_watch_signals, stop)
        binds: list[str] = await nursery.start(run_hypercorn)
        task_status.started(_parse_bind(binds[0]) if binds else (config.host, config.port))
