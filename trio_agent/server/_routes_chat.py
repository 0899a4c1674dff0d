"""The native chat routes: ``POST /chat``, ``/chat/stream`` and ``/chat/batch``.

Each function builds one handler from the collaborators it needs. Errors
before the response head are raised; the front (or Quart's error handler)
renders them through the one error renderer.
"""

from __future__ import annotations

import orjson
import trio
from quart import Response

from ..config import ServerConfig
from ._body import BodyReader, view_json_body
from ._chat import ChatService
from ._context import RequestContext
from ._metrics import GatewayMetrics
from ._router import AsgiHandler, Call, ViewHandler
from ._stream import NativeFormat, StreamService
from ._validation import parse_batch_body, parse_chat_body

__all__ = ["chat", "chat_batch", "chat_batch_stream", "chat_stream", "json_view"]


def json_view(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def chat_stream(body: BodyReader, streams: StreamService, config: ServerConfig) -> AsgiHandler:
    """``POST /chat/stream``: our SSE events."""

    async def handle(call: Call) -> None:
        present, raw = await body.read_json(call)
        if not present:
            call.ctx.outcome = "disconnect"
            return
        request = parse_chat_body(raw, config)
        fmt = NativeFormat(call.ctx.request_id)
        await streams.serve(call.ctx, call.receive, call.send, request, fmt)

    return handle


def chat_batch_stream(
    body: BodyReader, streams: StreamService, config: ServerConfig
) -> AsgiHandler:
    """``POST /chat/batch`` with ``Accept: text/event-stream``: one event per item."""

    async def handle(call: Call) -> None:
        present, raw = await body.read_json(call)
        if not present:
            call.ctx.outcome = "disconnect"
            return
        batch = parse_batch_body(raw, config)
        await streams.serve_batch(call.ctx, call.receive, call.send, batch.requests)

    return handle


def chat(chats: ChatService, metrics: GatewayMetrics, config: ServerConfig) -> ViewHandler:
    """``POST /chat``: the whole reply as JSON."""

    async def handle(ctx: RequestContext) -> Response:
        request = parse_chat_body(await view_json_body(), config)
        try:
            result = await chats.complete(request, ctx)
        except trio.Cancelled:
            # Quart cancels the view when the client leaves.
            metrics.disconnects += 1
            ctx.outcome = "disconnect"
            raise
        ctx.outcome = "done"
        return json_view(result.payload())

    return handle


def chat_batch(chats: ChatService, config: ServerConfig) -> ViewHandler:
    """``POST /chat/batch``: every item's result as one JSON answer."""

    async def handle(ctx: RequestContext) -> Response:
        batch = parse_batch_body(await view_json_body(), config)
        results = await chats.run_batch(batch.requests, ctx)
        ctx.outcome = "done"
        return json_view({"request_id": ctx.request_id, "results": results})

    return handle
