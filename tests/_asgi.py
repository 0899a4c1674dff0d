"""Drive an ASGI app over trio memory channels: read a streamed body incrementally, disconnect mid-stream.

Not httpx.ASGITransport (it buffers the whole body) and not Quart's test
client (its disconnect hangs): the app is called directly, its ``send``
feeds a channel the test reads, and its ``receive`` hands out the body, then
``http.disconnect`` when the test says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio

from trio_agent.sse import ServerSentEvent, SSEDecoder

Message = dict[str, Any]


def make_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "extensions": {},
        "state": {},
    }


class Exchange:
    """One request in flight. ``buffer`` is how many messages the app may send unread."""

    def __init__(
        self,
        app: Any,
        method: str,
        path: str,
        *,
        json: Any = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        buffer: float = math.inf,
        chunks: list[bytes] | None = None,
        hold_body: bool = False,
        fail_sends_after: int | None = None,
    ) -> None:
        self.app = app
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        if json is not None:
            body = orjson.dumps(json)
            hdrs.setdefault("content-type", "application/json")
        self._chunks = chunks if chunks is not None else [body or b""]
        self._hold_body = hold_body
        self._sends_left = fail_sends_after
        if body is not None and chunks is None:
            hdrs.setdefault("content-length", str(len(body)))
        self.scope = make_scope(
            method, path, [(k.encode(), v.encode()) for k, v in hdrs.items()]
        )
        self._tx, self._rx = trio.open_memory_channel[Message](buffer)
        self._disconnected = trio.Event()
        self.finished = trio.Event()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self._decoder = SSEDecoder()
        self._pending: list[ServerSentEvent] = []
        self.body = b""
        self.complete = False

    async def _receive(self) -> Message:
        if self._chunks:
            chunk = self._chunks.pop(0)
            more = bool(self._chunks) or self._hold_body
            return {"type": "http.request", "body": chunk, "more_body": more}
        await self._disconnected.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if self._sends_left is not None:
            if self._sends_left == 0:
                raise OSError("connection reset by peer")
            self._sends_left -= 1
        await self._tx.send(message)

    async def run(self) -> None:
        try:
            await self.app(self.scope, self._receive, self._send)
        finally:
            self.finished.set()
            self._tx.close()

    def start(self, nursery: trio.Nursery) -> Exchange:
        nursery.start_soon(self.run)
        return self

    def disconnect(self) -> None:
        self._disconnected.set()

    async def response_start(self) -> int:
        if self.status is None:
            message = await self._rx.receive()
            assert message["type"] == "http.response.start", message
            self.status = int(message["status"])
            self.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        return self.status

    async def read_chunk(self) -> bytes | None:
        """The next body chunk, or None once the body is complete or the app returned."""
        await self.response_start()
        if self.complete:
            return None
        try:
            message = await self._rx.receive()
        except trio.EndOfChannel:
            return None
        assert message["type"] == "http.response.body", message
        data: bytes = message.get("body", b"")
        self.body += data
        if not message.get("more_body", False):
            self.complete = True
        return data

    async def read_all(self) -> bytes:
        while await self.read_chunk() is not None:
            pass
        return self.body

    async def next_event(self) -> ServerSentEvent | None:
        while not self._pending:
            chunk = await self.read_chunk()
            if chunk is None:
                return None
            self._pending.extend(self._decoder.feed(chunk))
        return self._pending.pop(0)

    async def events(self) -> list[ServerSentEvent]:
        out = []
        while (ev := await self.next_event()) is not None:
            out.append(ev)
        return out

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    events: list[ServerSentEvent] = field(default_factory=list)

    def json(self) -> Any:
        return orjson.loads(self.body)


async def request(app: Any, method: str, path: str, **kwargs: Any) -> Response:
    """A whole exchange: send, read everything, wait for the app to return."""
    async with trio.open_nursery() as nursery:
        ex = Exchange(app, method, path, **kwargs).start(nursery)
        await ex.response_start()
        is_sse = ex.headers.get("content-type", "").startswith("text/event-stream")
        events = await ex.events() if is_sse else []
        if not is_sse:
            await ex.read_all()
        await ex.finished.wait()
        assert ex.status is not None
        return Response(ex.status, ex.headers, ex.body, events)


def data(event: ServerSentEvent) -> Any:
    return orjson.loads(event.data)
