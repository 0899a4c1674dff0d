"""A tiny ASGI app served by trio_agent.http.serve_http on 127.0.0.1:0, for the http layer's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import trio

from trio_agent.http import ConnectionCounter, DrainingListener, EarlyAnswer, HTTPConfig, serve_http

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def ok_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Lifespan handled; every HTTP request gets ``200 {"ok":true}``."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    body = b'{"ok":true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        kind = message["type"].rsplit(".", 1)[-1]
        await send({"type": f"lifespan.{kind}.complete"})
        if kind == "shutdown":
            return


@dataclass
class RunningHTTP:
    host: str
    port: int
    counter: ConnectionCounter
    listeners: list[DrainingListener] = field(default_factory=list)


@asynccontextmanager
async def running_http(
    config: HTTPConfig, app: App = ok_app, *, early: EarlyAnswer | None = None
) -> AsyncIterator[RunningHTTP]:
    """``serve_http(app, config)`` on 127.0.0.1 port 0, stopped on exit."""
    config = replace(config, host="127.0.0.1", port=0)
    counter = ConnectionCounter()
    listeners: list[DrainingListener] = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(
            partial(
                serve_http,
                app,
                config,
                shutdown_trigger=stop.wait,
                on_listeners=listeners.extend,
                counter=counter,
                early=early,
            )
        )
        try:
            yield RunningHTTP(host, port, counter, listeners)
        finally:
            stop.set()
