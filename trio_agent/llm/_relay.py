"""A relayed OpenAI answer: status, content type and bytes the server writes through unchanged.

The routes the gateway does not model (``/v1/embeddings``, ``/v1/completions``,
``/v1/responses``) go through a backend's ``open_relay(path, body, stream=...)``::

    async with backend.open_relay("/embeddings", body, stream=False) as relay:
        write_head(relay.status, relay.content_type)
        if relay.streaming:
            async for data in relay:   # one or more whole SSE events, as the upstream sent them
                write(data)
        else:
            write(relay.body)

The context is opened once the first byte is there (retries happen only
before it); leaving it closes the upstream call. What metrics need is read
off the bytes as they pass, never re-encoded: ``first_byte_at`` (trio time)
and ``usage``, the last usage seen in any API's shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import trio

from ._types import Usage
from ._wire import usage_from_object

__all__ = ["Relay"]


class Relay:
    """One relayed answer (see the module). Iterating it yields raw SSE bytes when ``streaming``.

    A non-200 ``status`` comes with the upstream's own error body, to be
    written through as it is (a 400 from the upstream is the client's mistake,
    told in the upstream's words).
    """

    __slots__ = ("_pending", "_scanned", "_source", "_usage", "body", "content_type", "first_byte_at", "status")

    def __init__(
        self,
        *,
        status: int,
        content_type: str,
        body: bytes | None = None,
        source: AsyncIterator[bytes] | None = None,
        first_byte_at: float | None = None,
    ) -> None:
        self.status = status
        self.content_type = content_type
        #: The whole answer when not streamed (``b""`` for a streamed one).
        self.body = body if body is not None else b""
        #: When the first byte of the answer arrived (trio time).
        self.first_byte_at = first_byte_at
        self._source = source
        self._pending: bytes | None = None
        self._usage: Usage | None = None
        self._scanned = source is not None  # a body is scanned for usage when first asked

    @property
    def streaming(self) -> bool:
        """Whether the answer is an event stream to iterate (else: ``body``)."""
        return self._source is not None

    @property
    def usage(self) -> Usage | None:
        """The last usage the answer carried so far (``None`` if none yet)."""
        if not self._scanned:
            self._scanned = True
            if b'"usage"' in self.body:
                self._usage = _usage_in(self.body) or self._usage
        return self._usage

    def __repr__(self) -> str:
        kind = "streaming" if self.streaming else f"{len(self.body)} bytes"
        return f"<Relay status={self.status} {self.content_type!r} {kind}>"

    async def prime(self) -> None:
        """Wait for the first bytes of a stream (and stamp ``first_byte_at``); a no-op for a body."""
        if self._source is None or self._pending is not None:
            return
        try:
            self._pending = await self._source.__anext__()
        except StopAsyncIteration:
            self._pending = b""
        self._note(self._pending)
        self.first_byte_at = trio.current_time()

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        if self._source is None:
            raise StopAsyncIteration
        pending = self._pending
        if pending is not None:
            self._pending = None
            if pending:
                return pending
            raise StopAsyncIteration
        data = await self._source.__anext__()
        if self.first_byte_at is None:
            self.first_byte_at = trio.current_time()
        self._note(data)
        return data

    def _note(self, data: bytes) -> None:
        if b'"usage"' in data:  # a substring test first: most events carry none
            for event in data.split(b"\n\n"):
                if b'"usage"' in event:
                    self._usage = _usage_in(_event_data(event)) or self._usage


def _event_data(event: bytes) -> bytes:
    lines = [
        line[5:].lstrip(b" ") for line in event.replace(b"\r\n", b"\n").split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(lines)


def _usage_in(data: bytes) -> Usage | None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    usage = usage_from_object(obj.get("usage"))
    if usage is None:  # Responses API events carry it in their response object
        response = obj.get("response")
        if isinstance(response, dict):
            usage = usage_from_object(response.get("usage"))
    return usage
