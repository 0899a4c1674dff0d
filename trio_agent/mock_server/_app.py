"""The mock LLM server's ASGI app: OpenAI's wire formats over :class:`MockLLM`.

A thin raw ASGI app rather than a Quart app, so that nothing but Hypercorn sits
between a token and its write: each chunk's JSON comes from the ``MockLLM``
(``ChatChunk.raw``, built around the orjson-escaped delta once per request)
and is framed with one concatenation; frames already due together (``itl`` 0,
a backlog) go out in one ASGI ``send``.

Routes::

    POST /v1/chat/completions   stream true: text/event-stream of chat.completion.chunk
                                frames, then data: [DONE]; stream false: a chat.completion.
                                Offered tools are called (MockLLMConfig.tool_calls), a tool
                                result is answered in text, a JSON response_format gets JSON
    POST /v1/embeddings         deterministic vectors, seeded by each input's text
    POST /v1/completions        text_completion, streamed or whole
    POST /v1/responses          the Responses API: named events streamed, or a response object
    GET  /v1/models             the one model, as a list
    GET  /mock/stats            MockServerStatistics as JSON
    POST /mock/reset            zero the counters (peak_active restarts at active)
    GET  /mock/last-request     the last JSON body a POST /v1 route received, byte for byte

Any other path is a JSON 404.

Each chat request runs in one nursery beside a task that listens for
``http.disconnect``: a client that leaves mid-stream cancels the stream at
once (counted as ``cancelled``). Errors before the first byte use OpenAI's
shape ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import orjson
import trio

from ..config import MockServerConfig
from ..errors import (
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RequestError,
    RequestValidationError,
    UpstreamError,
    UpstreamStatusError,
)
from ..http import ClientGoneError, DirectBody, direct_body, quick_receive
from ..llm import ChatMessage, ChatRequest, MockLLM, ToolCall, Usage
from ..llm._mock import chat_completion_json
from ._faults import Fault, draw_fault, parse_fault_header

__all__ = ["MockServerApp", "MockServerStatistics"]

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_DONE = b"data: [DONE]\n\n"
_RELAYED = ("/v1/embeddings", "/v1/completions", "/v1/responses")
_ROUTES = {
    "/v1/chat/completions": "POST",
    **dict.fromkeys(_RELAYED, "POST"),
    "/v1/models": "GET",
    "/mock/stats": "GET",
    "/mock/reset": "POST",
    "/mock/last-request": "GET",
}
_COALESCE_BYTES = 16384  # flush coalesced frames at this size

_STATUS_ERRORS: dict[int, tuple[str, str, str | None]] = {
    429: ("Rate limit reached (injected by the mock LLM).", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request (injected by the mock LLM).",
          "server_error", None),
    503: ("The engine is currently overloaded, please try again later (injected by the mock LLM).",
          "server_error", "service_unavailable"),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class MockServerStatistics:
    """Counts of the mock LLM server since start (or the last ``POST /mock/reset``).

    ``active`` chat requests are being served now (``queued`` wait for a
    slot); ``peak_active`` is the most at once. Of the ``requests`` received:
    ``completed`` ended normally, ``cancelled`` lost their client while
    queued or mid-reply,
    ``rejected`` got 429 for want of capacity, ``faults`` had a fault injected
    (random or ``X-Mock-Fault``). ``tokens`` counts content deltas sent.
    """

    active: int
    queued: int
    peak_active: int
    requests: int
    completed: int
    cancelled: int
    rejected: int
    faults: int
    tokens: int


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class _Exchange:
    """One chat request's fate, shared between the handler and its disconnect listener."""

    __slots__ = ("counted", "done", "faulted", "gone")

    def __init__(self) -> None:
        self.done = False  # the reply ended on our side (set before its last send)
        self.faulted = False  # ... by an injected drop or error
        self.gone = False  # the client left before that
        self.counted = False  # completed was counted (before the slot was given back)


def _error_frame(message: str) -> bytes:
    return b"data: " + _error_doc(message, "server_error", "mock_stream_error") + b"\n\n"


def _error_doc(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


async def _send_json(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or ()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _retry_after_header(seconds: float) -> list[tuple[bytes, bytes]]:
    shown = f"{seconds:g}" if seconds != int(seconds) else str(int(seconds))
    return [(b"retry-after", shown.encode())]


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    take = quick_receive(receive)  # what Hypercorn already received: no scheduler pass
    while True:
        message = await take()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise PayloadTooLargeError(f"request body larger than {limit} bytes", limit=limit)
        chunks.append(body)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _invalid(message: str, field: str | None = None) -> RequestValidationError:
    return RequestValidationError(message, field=field, status_code=400)


def _content_text(content: Any, field: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("text", ""), str):
                raise _invalid(f"{field} parts must be objects with a string 'text'", field)
            parts.append(part.get("text", ""))
        return "".join(parts)
    raise _invalid(f"{field} must be a string or a list of content parts", field)


def _tool_calls(raw: Any, field: str) -> tuple[ToolCall, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _invalid(f"{field} must be an array", field)
    calls = []
    for k, item in enumerate(raw):
        fn = item.get("function") if isinstance(item, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _invalid(f"{field}[{k}] must be a function call with a name", f"{field}[{k}]")
        arguments = fn.get("arguments", "")
        calls.append(
            ToolCall(
                id=str(item.get("id") or ""),
                name=fn["name"],
                arguments=arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode(),
            )
        )
    return tuple(calls)


@dataclass(frozen=True, kw_only=True, slots=True)
class _ChatCall:
    request: ChatRequest
    model: str
    stream: bool
    include_usage: bool


def _parse_chat(body: bytes, default_model: str) -> _ChatCall:
    """Validate an OpenAI chat completions body. Raises RequestValidationError (400)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _invalid("the request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise _invalid("the request body must be a JSON object")
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty array", "messages")
    parsed: list[ChatMessage] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _invalid(f"messages[{i}] must be an object with a string 'role'", f"messages[{i}]")
        text = _content_text(m.get("content"), f"messages[{i}].content")
        call_id = m.get("tool_call_id")
        name = m.get("name")
        parsed.append(
            ChatMessage(
                role=m["role"],
                content=text,
                tool_calls=_tool_calls(m.get("tool_calls"), f"messages[{i}].tool_calls"),
                tool_call_id=call_id if isinstance(call_id, str) else None,
                name=name if isinstance(name, str) else None,
            )
        )
    model = doc.get("model", default_model)
    if not isinstance(model, str) or not model:
        raise _invalid("'model' must be a non-empty string", "model")
    stream = doc.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("'stream' must be a boolean", "stream")
    options = doc.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _invalid("'stream_options' must be an object", "stream_options")
    include_usage = (options or {}).get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise _invalid("'stream_options.include_usage' must be a boolean", "stream_options")
    max_tokens = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = doc.get(name)
        if value is None:
            continue
        if type(value) is not int or value < 1:
            raise _invalid(f"'{name}' must be an integer >= 1", name)
        max_tokens = value if max_tokens is None else min(max_tokens, value)
    n = doc.get("n", 1)
    if n not in (1, None):
        raise _invalid("the mock LLM serves only n=1", "n")
    tools = doc.get("tools") or []
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise _invalid("'tools' must be an array of objects", "tools")
    tool_choice = doc.get("tool_choice")
    if tool_choice is not None and not isinstance(tool_choice, str | dict):
        raise _invalid("'tool_choice' must be a string or an object", "tool_choice")
    request = ChatRequest(
        messages=tuple(parsed),
        model=model,
        max_tokens=max_tokens,
        tools=tuple(tools),
        tool_choice=tool_choice,
        openai_body=doc,
    )
    return _ChatCall(request=request, model=model, stream=bool(stream), include_usage=include_usage)


class MockServerApp:
    """The ASGI app of the mock LLM server (see the module docstring).

    One :class:`MockLLM` paces every reply (one shared clock); a request whose
    ``X-Mock-Fault`` sets ``ttft`` gets its own. Admission is one
    ``trio.CapacityLimiter`` of ``max_concurrency`` with at most
    ``max_queued`` waiters, each for at most ``max_queue_wait`` seconds.
    """

    def __init__(self, config: MockServerConfig) -> None:
        self.config = config
        self.llm = MockLLM(config.llm)
        self._limiter = trio.CapacityLimiter(config.max_concurrency)
        self._rng = random.Random(config.llm.seed)
        #: The body of the last POST to a /v1 route, as received (``GET /mock/last-request``).
        self.last_request: bytes | None = None
        self._active = self._queued = 0
        self._changed = trio.lowlevel.ParkingLot()
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._peak_active = self._active
        self._requests = self._completed = self._cancelled = 0
        self._rejected = self._faults = self._tokens = 0

    def reset(self) -> None:
        """Zero the counters; ``peak_active`` restarts at the current ``active``."""
        self._reset_counters()
        self._changed.unpark_all()

    async def wait_until(
        self, predicate: Callable[[MockServerStatistics], bool]
    ) -> MockServerStatistics:
        """Wait until ``predicate(self.statistics())`` holds; return those statistics.

        Checked whenever a request starts, queues, ends or is refused (not per
        token), so a test can wait for "the server saw the client leave"
        without polling.
        """
        await trio.lowlevel.checkpoint()
        while not predicate(stats := self.statistics()):
            await self._changed.park()
        return stats

    def statistics(self) -> MockServerStatistics:
        """A snapshot of the counters."""
        return MockServerStatistics(
            active=self._active,
            queued=self._queued,
            peak_active=self._peak_active,
            requests=self._requests,
            completed=self._completed,
            cancelled=self._cancelled,
            rejected=self._rejected,
            faults=self._faults,
            tokens=self._tokens,
        )

    def __repr__(self) -> str:
        return (
            f"<MockServerApp active={self._active} "
            f"queued={self._queued} "
            f"max_concurrency={self.config.max_concurrency} requests={self._requests}>"
        )

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            return
        try:
            await self._route(scope, receive, send)
        except _ClientGone:
            return
        except RequestError as exc:
            status = getattr(exc, "status_code", 400)
            type_ = "invalid_request_error"
            param = getattr(exc, "field", None)
            await _send_json(send, status, _error_doc(exc.message, type_, exc.code, param))

    async def _route(self, scope: Message, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        allowed = _ROUTES.get(path)
        if allowed is None:
            raise NotFoundError(f"no route for {method} {path}")
        if method != allowed:
            raise MethodNotAllowedError(f"{path} allows {allowed} only")
        if path in _RELAYED or path == "/v1/chat/completions":
            await self._call(scope, receive, send, path)
        elif path == "/v1/models":
            model = {"id": self.config.llm.model, "object": "model", "created": 0,
                     "owned_by": "trio-agent"}
            await _send_json(send, 200, orjson.dumps({"object": "list", "data": [model]}))
        elif path == "/mock/last-request":
            if self.last_request is None:
                raise NotFoundError("no request has been received yet")
            await _send_json(send, 200, self.last_request)
        else:
            if path == "/mock/reset":
                self.reset()
            await _send_json(send, 200, orjson.dumps(self.statistics()))

    # -- calls: chat completions and the relayed routes ---------------------------------

    async def _call(self, scope: Message, receive: Receive, send: Send, path: str) -> None:
        body = await _read_body(receive, self.config.max_body_bytes)
        self.last_request = body
        self._requests += 1
        reply: Callable[[Send, Fault, _Exchange], Awaitable[None]]
        if path == "/v1/chat/completions":
            call = _parse_chat(body, self.config.llm.model)
            reply = partial(self._chat_reply, call)
        else:
            reply = partial(self._relay_reply, path.removeprefix("/v1"), body)
        header = next((v for k, v in scope["headers"] if k == b"x-mock-fault"), None)
        if header is not None:
            fault = parse_fault_header(header.decode("latin-1"))
        else:
            fault = draw_fault(self.config, self._rng)
        if fault.injected:
            self._faults += 1
        if fault.status is not None:
            self._changed.unpark_all()
            await self._send_status_fault(send, fault)
            return
        exchange = _Exchange()
        # The listener runs from here on: a client that leaves while queued or mid-reply
        # cancels its request at once.
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_listen_for_disconnect, receive, nursery.cancel_scope, exchange)
                await self._admit_and_reply(send, reply, fault, exchange)
                nursery.cancel_scope.cancel()
            # A completed reply was counted before its slot was given back (_admit_and_reply).
            if exchange.gone and not exchange.counted:
                self._cancelled += 1
        finally:
            self._changed.unpark_all()

    async def _chat_reply(
        self, call: _ChatCall, send: Send, fault: Fault, exchange: _Exchange
    ) -> None:
        if call.stream:
            await self._stream(send, call, fault, exchange)
        else:
            await self._complete(send, call, fault, exchange)

    async def _admit_and_reply(
        self,
        send: Send,
        reply: Callable[[Send, Fault, _Exchange], Awaitable[None]],
        fault: Fault,
        exchange: _Exchange,
    ) -> None:
        limiter = self._limiter
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            if self._queued >= self.config.max_queued:
                await self._reject(send, exchange)
                return
            self._queued += 1
            self._changed.unpark_all()
            try:
                with trio.move_on_after(self.config.max_queue_wait) as waited:
                    await limiter.acquire()
            finally:
                self._queued -= 1
            if waited.cancelled_caught:
                await self._reject(send, exchange)
                return
        self._active += 1
        self._peak_active = max(self._peak_active, self._active)
        self._changed.unpark_all()
        try:
            await reply(send, fault, exchange)
        finally:
            # Counted before the slot is given back, so a reader that sees it idle sees it done:
            # the last bytes may be on the wire already (a direct write does not yield).
            if exchange.done and not exchange.faulted and not exchange.gone:
                self._completed += 1
                exchange.counted = True
            self._active -= 1
            limiter.release()

    async def _send_status_fault(self, send: Send, fault: Fault) -> None:
        status = fault.status or 500
        message, type_, code = _STATUS_ERRORS.get(
            status, (f"Injected HTTP {status} by the mock LLM.", "server_error", None)
        )
        retry_after = fault.retry_after
        if retry_after is None and status == 429:
            retry_after = 1.0
        extra = _retry_after_header(retry_after) if retry_after is not None else None
        await _send_json(send, status, _error_doc(message, type_, code), extra)

    async def _reject(self, send: Send, exchange: _Exchange) -> None:
        self._rejected += 1
        exchange.done = exchange.faulted = True  # not completed, and its end is no disconnect
        doc = _error_doc(
            f"The mock LLM is at capacity ({self.config.max_concurrency} running, "
            f"{self.config.max_queued} queued); retry later.",
            "requests",
            "rate_limit_exceeded",
        )
        await _send_json(send, 429, doc, _retry_after_header(self.config.retry_after))

    def _llm_for(self, fault: Fault) -> MockLLM:
        if fault.ttft is None:
            return self.llm
        return MockLLM(replace(self.config.llm, ttft=fault.ttft))

    async def _stream(self, send: Send, call: _ChatCall, fault: Fault, exchange: _Exchange) -> None:
        out = (
            _slow_writer(send, exchange, self.config.slow_bytes_delay)
            if fault.slow_bytes
            else _writer(send, exchange)
        )
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        pending: list[bytes] = []
        pending_bytes = 0
        sent = 0  # content and tool-call deltas sent: what fault counts refer to
        llm = self._llm_for(fault)
        cfg = llm.config
        async with llm.stream_chat(call.request) as chunks:
            # Unit i is due at start + ttft + i * itl (+- jitter) on the stream's clock; taken
            # after the stream's own start, this bound errs late, never early.
            start = trio.current_time() + cfg.ttft + cfg.jitter
            try:
                async for chunk in chunks:
                    said = bool(chunk.delta or chunk.tool_calls)
                    if said and sent == fault.stall_after:
                        await out(b"".join(pending), False)
                        await trio.sleep_forever()
                    if said and sent == fault.drop_after:
                        await out(b"".join(pending), False)
                        exchange.done = exchange.faulted = True
                        return  # Hypercorn closes a connection whose response did not end
                    if said and sent == fault.error_after:
                        exchange.faulted = True
                        pending.append(_error_frame("The mock LLM failed mid-stream (injected)."))
                        await out(b"".join(pending), True)
                        return
                    if (
                        chunk.usage is not None
                        and not call.include_usage
                        and not said
                        and chunk.finish_reason is None
                    ):
                        continue  # the usage chunk, which OpenAI sends only when asked
                    assert chunk.raw is not None  # every MockLLM chunk carries its JSON
                    frame = b"data: " + chunk.raw + b"\n\n"
                    pending.append(frame)
                    pending_bytes += len(frame)
                    if not said:
                        continue  # the role, finish and usage chunks go out with their neighbours
                    sent += 1
                    if chunk.delta:
                        self._tokens += 1
                    # Coalesce frames that are all due now (itl 0, or a backlog): one write
                    # instead of one per token. A frame waits only if the next unit is
                    # surely due already, so no frame goes out later than its unit.
                    if (
                        pending_bytes >= _COALESCE_BYTES
                        or start + sent * cfg.itl > trio.current_time()
                    ):
                        await out(b"".join(pending), False)
                        pending.clear()
                        pending_bytes = 0
            except UpstreamError as exc:  # a fault configured on the MockLLM itself
                exchange.faulted = True
                pending.append(_error_frame(f"The mock LLM failed: {exc}"))
                await out(b"".join(pending), True)
                return
        pending.append(_DONE)
        await out(b"".join(pending), True)

    async def _complete(
        self, send: Send, call: _ChatCall, fault: Fault, exchange: _Exchange
    ) -> None:
        parts: list[str] = []
        finish = "stop"
        usage = Usage(prompt_tokens=0, completion_tokens=0)
        said = 0
        async with self._llm_for(fault).stream_chat(call.request) as chunks:
            try:
                async for chunk in chunks:
                    if chunk.delta or chunk.tool_calls:
                        if said == fault.stall_after:
                            await trio.sleep_forever()
                        if said == fault.drop_after:
                            # Promise a body, send a piece of it, hang up.
                            await _send_partial(send, 200, "application/json", b'{"id":')
                            exchange.done = exchange.faulted = True
                            return
                        if said == fault.error_after:
                            err = _error_doc(
                                "The mock LLM failed mid-generation (injected).", "server_error", None
                            )
                            exchange.done = exchange.faulted = True
                            await _send_json(send, 500, err)
                            return
                        said += 1
                    if chunk.delta:
                        parts.append(chunk.delta)
                        self._tokens += 1
                    if chunk.finish_reason is not None:
                        finish = chunk.finish_reason
                    if chunk.usage is not None:
                        usage = chunk.usage
            except UpstreamError as exc:  # a fault configured on the MockLLM itself
                exchange.done = exchange.faulted = True
                status = (
                    exc.upstream_status or 500 if isinstance(exc, UpstreamStatusError) else 500
                )
                err = _error_doc(f"The mock LLM failed: {exc}", "server_error", None)
                await _send_json(send, status or 500, err)
                return
            # The whole reply's calls and id, as the stream planned them.
            tool_calls: tuple[ToolCall, ...] = getattr(chunks, "tool_calls", ())
            cid: str = getattr(chunks, "cid", "chatcmpl-mock")
        content = "".join(parts)
        body = chat_completion_json(
            cid=cid,
            created=int(time.time()),
            model=call.model,
            content=content if content or not tool_calls else None,
            tool_calls=tool_calls,
            finish_reason=finish,
            usage=usage,
        )
        await self._send_body(send, 200, "application/json", body, fault, exchange)

    async def _send_body(
        self, send: Send, status: int, content_type: str, body: bytes, fault: Fault, exchange: _Exchange
    ) -> None:
        headers = [
            (b"content-type", content_type.encode("latin-1")),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if fault.slow_bytes:
            await _slow_writer(send, exchange, self.config.slow_bytes_delay)(body, True)
        else:
            await _writer(send, exchange)(body, True)

    async def _relay_reply(
        self, path: str, body: bytes, send: Send, fault: Fault, exchange: _Exchange
    ) -> None:
        """Embeddings, completions, responses: the MockLLM's relay, written through.

        Faults count events of a stream (``stall-after``, ``drop-after``,
        ``error-after``); a whole body counts as one.
        """
        llm = self._llm_for(fault)
        try:
            async with llm.open_relay(path, body, stream=False) as relay:
                if not relay.streaming:
                    if fault.stall_after == 0:
                        await trio.sleep_forever()
                    if fault.drop_after == 0:
                        exchange.done = exchange.faulted = True
                        await _send_partial(send, relay.status, relay.content_type, relay.body[:8])
                        return
                    if fault.error_after == 0:
                        exchange.done = exchange.faulted = True
                        err = _error_doc(
                            "The mock LLM failed mid-generation (injected).", "server_error", None
                        )
                        await _send_json(send, 500, err)
                        return
                    await self._send_body(send, relay.status, relay.content_type, relay.body, fault, exchange)
                    return
                out = (
                    _slow_writer(send, exchange, self.config.slow_bytes_delay)
                    if fault.slow_bytes
                    else _writer(send, exchange)
                )
                headers = [(b"content-type", relay.content_type.encode("latin-1")), *_SSE_HEADERS[1:]]
                await send({"type": "http.response.start", "status": relay.status, "headers": headers})
                sent = 0
                async for data in relay:
                    if sent == fault.stall_after:
                        await trio.sleep_forever()
                    if sent == fault.drop_after:
                        exchange.done = exchange.faulted = True
                        return  # Hypercorn closes a connection whose response did not end
                    if sent == fault.error_after:
                        exchange.faulted = True
                        await out(_error_frame("The mock LLM failed mid-stream (injected)."), True)
                        return
                    await out(data, False)
                    sent += 1
                await out(b"", True)
        except UpstreamError as exc:  # a fault configured on the MockLLM itself
            exchange.done = exchange.faulted = True
            status = exc.upstream_status if isinstance(exc, UpstreamStatusError) else 500
            err = _error_doc(f"The mock LLM failed: {exc}", "server_error", None)
            await _send_json(send, status or 500, err)


async def _send_partial(send: Send, status: int, content_type: str, piece: bytes) -> None:
    """Promise a 4096-byte body, send ``piece`` of it and stop (the connection is then cut)."""
    headers = [(b"content-type", content_type.encode("latin-1")), (b"content-length", b"4096")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": piece, "more_body": True})


# A writer's ``write(data, end=True)`` marks the exchange done just before the ASGI send that
# ends the reply (its end wakes the disconnect listener, which must not count it as a client
# leaving) and not earlier: a client that leaves while a slow-bytes reply still dribbles its
# last write is cancelled at once and counted as such.


def _writer(send: Send, exchange: _Exchange) -> Callable[[bytes, bool], Awaitable[None]]:
    # Under Hypercorn the body goes straight to the socket when it is free (the gateway's
    # DirectBody): half the CPU per paced token. Resolved at the first write, after the head.
    direct: DirectBody | None = None
    resolved = False

    async def write(data: bytes, end: bool) -> None:
        nonlocal direct, resolved
        if not resolved:
            direct, resolved = direct_body(send), True
        if end:
            exchange.done = True
        elif direct is not None:
            try:
                await direct.send(data)
            except ClientGoneError:
                pass  # the disconnect listener ends the exchange
            return
        await send({"type": "http.response.body", "body": data, "more_body": not end})

    return write


def _slow_writer(
    send: Send, exchange: _Exchange, delay: float
) -> Callable[[bytes, bool], Awaitable[None]]:
    async def write(data: bytes, end: bool) -> None:
        for i in range(len(data)):
            await send({"type": "http.response.body", "body": data[i : i + 1], "more_body": True})
            await trio.sleep(delay)
        if end:
            exchange.done = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return write


async def _listen_for_disconnect(
    receive: Receive, cancel_scope: trio.CancelScope, exchange: _Exchange
) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not exchange.done:
                exchange.gone = True
                cancel_scope.cancel()
            return


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
