"""The mock LLM server run in-process on a real Hypercorn at 127.0.0.1:0, for e2e tests.

``serving_mock_llm(config, app)`` starts ``serve_mock_llm`` in a nursery, yields its base URL
(``http://127.0.0.1:PORT``) and stops it through its ``shutdown_trigger`` on exit.
``ScriptedMockServer`` is the real :class:`MockServerApp` that chooses, on the server side,
an ``X-Mock-Fault`` header for each chat request from a script, and records the client
address (host, port) of each one: a test then knows how many attempts reached the server,
in which order, and over which TCP connection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from functools import partial

import trio

from trio_agent.config import MockServerConfig
from trio_agent.mock_server import MockServerApp, serve_mock_llm
from trio_agent.mock_server._app import Message, Receive, Send


@asynccontextmanager
async def serving_mock_llm(config: MockServerConfig, app: MockServerApp) -> AsyncIterator[str]:
    """Serve ``app`` (built from ``config``) until the block ends; yield its base URL."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(
            partial(serve_mock_llm, config, app=app, shutdown_trigger=stop.wait)
        )
        try:
            yield f"http://{host}:{port}"
        finally:
            stop.set()


class ScriptedMockServer(MockServerApp):
    """A :class:`MockServerApp` whose chat requests take their faults from a script.

    The n-th ``POST /v1/chat/completions`` gets the n-th entry of ``script`` as its
    ``X-Mock-Fault`` header (``""`` or a spent script: no header, so the random fault rates
    of the config apply). ``peers`` lists the client address of every chat request.
    """

    def __init__(self, config: MockServerConfig, script: Iterable[str] = ()) -> None:
        super().__init__(config)
        self.script: deque[str] = deque(script)
        self.peers: list[tuple[str, int]] = []

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/v1/chat/completions"
            and scope["method"] == "POST"
        ):
            host, port = scope["client"]
            self.peers.append((host, port))
            fault = self.script.popleft() if self.script else ""
            if fault:
                headers = [(k, v) for k, v in scope["headers"] if k != b"x-mock-fault"]
                scope = {**scope, "headers": [*headers, (b"x-mock-fault", fault.encode())]}
        await super().__call__(scope, receive, send)
