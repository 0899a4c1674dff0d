"""Early answers: a whole response given from the request head, without starting the app.

``early(method, target, headers)`` (an :data:`EarlyAnswer`) decides per
request; None calls the app as usual. A server uses it for the answers it
can give from the head alone, such as refusals under overload: no app task,
no ASGI messages, no request parsing, which is most of what a refusal costs
(docs/decisions/002).

:class:`LeanH11Protocol` is Hypercorn's ``H11Protocol`` with its
``_create_stream`` overridden, the one hook between a parsed request head and
the app (checked in tests/test_http_contracts.py). Invariants: the answer is
one write, framed by the connection's own ``h11.Connection`` (so h11's state
stays true); the request body is read and dropped; the connection is
recycled after it (keep-alive) exactly as after any response, and the idle
timer bounds a body that never ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import h11
from hypercorn.events import RawData, Updated
from hypercorn.protocol.events import EndBody, StreamClosed
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol
from hypercorn.protocol.http_stream import HTTPStream

from ._receive import put_nowait

__all__ = ["EarlyAnswer", "LeanH11Protocol"]

#: ``(method, target, headers) -> (status, headers, body)`` of a whole answer given without
#: calling the app, or None to call it.
EarlyAnswer = Callable[
    [bytes, bytes, list[tuple[bytes, bytes]]], "tuple[int, list[tuple[bytes, bytes]], bytes] | None"
]


class _CannedResponse:
    """Stands in for Hypercorn's ``HTTPStream`` once the answer has been sent from the head.

    It swallows the request body and closes the stream at its end, as
    ``HTTPStream`` does after a response.
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


class LeanH11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol, answering some requests from their head alone."""

    def __init__(self, early: EarlyAnswer | None, *args: Any) -> None:
        super().__init__(*args)
        self._early = early

    async def _create_stream(self, request: h11.Request) -> None:
        early = self._early
        answer = None if early is None else early(request.method, request.target, list(request.headers))
        if answer is None:
            await super()._create_stream(request)
            if isinstance(self.stream, HTTPStream) and self.stream.app_put is not None:
                self.stream.app_put = put_nowait(self.stream.app_put)
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
