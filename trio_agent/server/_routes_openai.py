"""The OpenAI-compatible routes: ``/v1/chat/completions`` and the relayed ``/v1`` routes.

``/v1/chat/completions`` is a pass-through: the client's body, checked for
the gateway's policy (:mod:`._openai_request`), goes upstream unchanged
(``ChatRequest.openai_body``); a streamed answer comes back chunk by chunk as
the upstream wrote it (:class:`~._stream.OpenAIRelayFormat`), a whole one as
the upstream's JSON bytes. ``/v1/embeddings``, ``/v1/completions`` and
``/v1/responses`` are relayed as bytes (:mod:`._relay`). Every error the
gateway adds is in OpenAI's shape (the front renders ``/v1`` errors so).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import trio

from ..config import ServerConfig
from ..errors import TrioAgentError
from ..llm import ChatBackend, ChatCompletion
from ._body import BodyReader
from ._chat import ChatService, usage_payload
from ._context import RequestContext
from ._openai_request import parse_openai_chat, parse_relay_body
from ._relay import RelayService
from ._router import AsgiHandler, Call
from ._stream import OpenAIRelayFormat, StreamService
from ._validation import decode_json

__all__ = ["openai_chat", "relay"]

T = TypeVar("T")


def openai_chat(
    body: BodyReader,
    streams: StreamService,
    chats: ChatService,
    backend: ChatBackend,
    config: ServerConfig,
) -> AsgiHandler:
    """``POST /v1/chat/completions``: the upstream's chunks when ``stream``, else its JSON."""

    async def handle(call: Call) -> None:
        ctx = call.ctx
        present, raw = await body.read_json(call)
        if not present:
            ctx.outcome = "disconnect"
            return
        parsed = parse_openai_chat(raw, config)
        request = parsed.request
        model = request.model or backend.model
        if parsed.stream:
            fmt = OpenAIRelayFormat(ctx.request_id, model, include_usage=parsed.include_usage)
            await streams.serve(ctx, call.receive, call.send, request, fmt)
            return
        completion = await _until_disconnect(call, lambda: chats.complete_whole(request, ctx))
        if completion is None:
            streams.metrics.disconnects += 1
            ctx.outcome = "disconnect"
            return
        ctx.outcome = "done"
        data = completion.raw if completion.raw is not None else _completion_json(completion, ctx)
        await _send_bytes(call, 200, data, ctx)

    return handle


def relay(path: str, body: BodyReader, relays: RelayService, backend: ChatBackend, config: ServerConfig) -> AsgiHandler:
    """``POST /v1{path}``: the body to the backend's ``open_relay``, the answer back as it came."""

    async def handle(call: Call) -> None:
        ctx = call.ctx
        present, raw = await body.read_bytes(call)
        if not present:
            ctx.outcome = "disconnect"
            return
        doc = decode_json(raw)
        stream, model = parse_relay_body(doc, config)
        if model is None:  # the one field the gateway owns: the default model
            raw = orjson.dumps({**doc, "model": backend.model})
        await relays.serve(call, path, raw, stream=stream, model=model or backend.model)

    return handle


async def _until_disconnect(call: Call, work: Callable[[], Awaitable[T]]) -> T | None:
    """``work()``'s result, or None when the client left first (the work is then cancelled)."""
    result: list[T] = []
    failure: list[TrioAgentError] = []
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            while (await call.receive())["type"] != "http.disconnect":
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        try:
            result.append(await work())
        except TrioAgentError as exc:
            failure.append(exc)  # raised below, outside the nursery: not as an exception group
        nursery.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return result[0] if result else None


async def _send_bytes(call: Call, status: int, data: bytes, ctx: RequestContext) -> None:
    ctx.status = status
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        *ctx.response_headers,
    ]
    await call.send({"type": "http.response.start", "status": status, "headers": headers})
    await call.send({"type": "http.response.body", "body": data, "more_body": False})


def _completion_json(completion: ChatCompletion, ctx: RequestContext) -> bytes:
    """A ``chat.completion`` for a backend that does not keep the upstream's bytes."""
    message: dict[str, Any] = {"role": "assistant", "content": completion.content or None}
    if completion.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in completion.tool_calls
        ]
    elif message["content"] is None:
        message["content"] = ""
    return orjson.dumps(
        {
            "id": f"chatcmpl-{ctx.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": completion.model,
            "choices": [{"index": 0, "message": message, "finish_reason": completion.finish_reason}],
            "usage": usage_payload(completion.usage),
        }
    )
