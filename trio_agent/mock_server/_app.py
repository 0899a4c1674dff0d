"""The mock LLM server's ASGI app: OpenAI's chat completions wire format over :class:`MockLLM`.

A thin raw ASGI app rather than a Quart app, so that nothing but Hypercorn sits
between a token and its write: the per-token path is one ``bytes``
concatenation (a JSON prefix and suffix built once per request around the
orjson-escaped delta); frames already due together (``itl`` 0, a backlog) go
out in one ASGI ``send``.

Routes::

    POST /v1/chat/completions   stream true: text/event-stream of chat.completion.chunk
                                frames, then data: [DONE]; stream false: a chat.completion
    GET  /v1/models             the one model, as a list
    GET  /mock/stats            MockServerStatistics as JSON
    POST /mock/reset            zero the counters (peak_active restarts at active)

Each chat request runs in one nursery beside a task that listens for
``http.disconnect``: a client that leaves mid-stream cancels the stream at
once (counted as ``cancelled``). Errors before the first byte use OpenAI's
shape ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
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
from ..llm import ChatMessage, ChatRequest, MockLLM, Usage
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


def _usage_json(usage: Usage) -> bytes:
    return orjson.dumps(
        {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
    )


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


def _content_text(content: Any, field: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("text", ""), str):
                raise _invalid(f"{field} parts must be objects with a string 'text'", field)
            parts.append(part.get("text", ""))
        return "".join(parts)
    raise _invalid(f"{field} must be a string or a list of content parts", field)


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
        parsed.append(ChatMessage(role=m["role"], content=text))
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
    request = ChatRequest(messages=tuple(parsed), model=model, max_tokens=max_tokens)
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
        self._ids = itertools.count(1)
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
        routes = {
            "/v1/chat/completions": "POST",
            "/v1/models": "GET",
            "/mock/stats": "GET",
            "/mock/reset": "POST",
        }
        allowed = routes.get(path)
        if allowed is None:
            raise NotFoundError(f"no route for {method} {path}")
        if method != allowed:
            raise MethodNotAllowedError(f"{path} allows {allowed} only")
        if path == "/v1/chat/completions":
            await self._chat(scope, receive, send)
        elif path == "/v1/models":
            model = {"id": self.config.llm.model, "object": "model", "created": 0,
                     "owned_by": "trio-agent"}
            await _send_json(send, 200, orjson.dumps({"object": "list", "data": [model]}))
        else:
            if path == "/mock/reset":
                self.reset()
            await _send_json(send, 200, orjson.dumps(self.statistics()))

    # -- chat completions ------------------------------------------------------------

    async def _chat(self, scope: Message, receive: Receive, send: Send) -> None:
        body = await _read_body(receive, self.config.max_body_bytes)
        self._requests += 1
        call = _parse_chat(body, self.config.llm.model)
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
                await self._admit_and_reply(send, call, fault, exchange)
                nursery.cancel_scope.cancel()
            # A completed reply was counted before its slot was given back (_admit_and_reply).
            if exchange.gone and not exchange.counted:
                self._cancelled += 1
        finally:
            self._changed.unpark_all()

    async def _admit_and_reply(
        self, send: Send, call: _ChatCall, fault: Fault, exchange: _Exchange
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
            if call.stream:
                await self._stream(send, call, fault, exchange)
            else:
                await self._complete(send, call, fault, exchange)
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
        cid = f"chatcmpl-mock{next(self._ids):012x}".encode()
        created = str(int(time.time())).encode()
        model = orjson.dumps(call.model)
        envelope = (
            b'data: {"id":"' + cid + b'","object":"chat.completion.chunk","created":' + created
            + b',"model":' + model + b',"system_fingerprint":null,"choices":'
        )
        usage_null = b',"usage":null' if call.include_usage else b""
        head = envelope + b'[{"index":0,"delta":{"content":'
        tail = b'},"logprobs":null,"finish_reason":null}]' + usage_null + b"}\n\n"
        role = envelope + b'[{"index":0,"delta":{"role":"assistant","content":""}' + tail[1:]
        out = (
            _slow_writer(send, exchange, self.config.slow_bytes_delay)
            if fault.slow_bytes
            else _writer(send, exchange)
        )
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        pending = [role]  # the role frame goes out with the first token, as OpenAI's does
        pending_bytes = 0
        sent = 0
        llm = self._llm_for(fault)
        cfg = llm.config
        async with llm.stream_chat(call.request) as chunks:
            # Token i is due at start + ttft + i * itl (+- jitter) on the stream's clock; taken
            # after the stream's own start, this bound errs late, never early.
            start = trio.current_time() + cfg.ttft + cfg.jitter
            try:
                async for chunk in chunks:
                    if sent == fault.stall_after:
                        await out(b"".join(pending), False)
                        await trio.sleep_forever()
                    if sent == fault.drop_after:
                        await out(b"".join(pending), False)
                        exchange.done = exchange.faulted = True
                        return  # Hypercorn closes a connection whose response did not end
                    if sent == fault.error_after:
                        exchange.faulted = True
                        pending.append(_error_frame("The mock LLM failed mid-stream (injected)."))
                        await out(b"".join(pending), True)
                        return
                    if chunk.delta:
                        frame = head + orjson.dumps(chunk.delta) + tail
                        pending.append(frame)
                        pending_bytes += len(frame)
                        sent += 1
                        self._tokens += 1
                        # Coalesce frames that are all due now (itl 0, or a backlog): one write
                        # instead of one per token. A frame waits only if the next token is
                        # surely due already, so no frame goes out later than its token.
                        if (
                            pending_bytes >= _COALESCE_BYTES
                            or start + sent * cfg.itl > trio.current_time()
                        ):
                            await out(b"".join(pending), False)
                            pending.clear()
                            pending_bytes = 0
                    if chunk.finish_reason is not None:
                        pending.append(
                            envelope + b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":'
                            + orjson.dumps(chunk.finish_reason) + b"}]" + usage_null + b"}\n\n"
                        )
                        if call.include_usage and chunk.usage is not None:
                            pending.append(envelope + b'[],"usage":' + _usage_json(chunk.usage) + b"}\n\n")
                        pending.append(_DONE)
                        await out(b"".join(pending), True)
                        return
            except UpstreamError as exc:  # a fault configured on the MockLLM itself
                exchange.faulted = True
                pending.append(_error_frame(f"The mock LLM failed: {exc}"))
                await out(b"".join(pending), True)

    async def _complete(
        self, send: Send, call: _ChatCall, fault: Fault, exchange: _Exchange
    ) -> None:
        parts: list[str] = []
        finish = "stop"
        prompt_tokens = completion_tokens = 0
        async with self._llm_for(fault).stream_chat(call.request) as chunks:
            try:
                async for chunk in chunks:
                    if len(parts) == fault.stall_after:
                        await trio.sleep_forever()
                    if len(parts) == fault.drop_after:
                        # Promise a body, send a piece of it, hang up.
                        headers = [(b"content-type", b"application/json"), (b"content-length", b"4096")]
                        await send({"type": "http.response.start", "status": 200, "headers": headers})
                        await send({"type": "http.response.body", "body": b'{"id":', "more_body": True})
                        exchange.done = exchange.faulted = True
                        return
                    if len(parts) == fault.error_after:
                        err = _error_doc(
                            "The mock LLM failed mid-generation (injected).", "server_error", None
                        )
                        exchange.done = exchange.faulted = True
                        await _send_json(send, 500, err)
                        return
                    if chunk.delta:
                        parts.append(chunk.delta)
                        self._tokens += 1
                    if chunk.finish_reason is not None:
                        finish = chunk.finish_reason
                    if chunk.usage is not None:
                        prompt_tokens = chunk.usage.prompt_tokens
                        completion_tokens = chunk.usage.completion_tokens
            except UpstreamError as exc:  # a fault configured on the MockLLM itself
                exchange.done = exchange.faulted = True
                status = (
                    exc.upstream_status or 500 if isinstance(exc, UpstreamStatusError) else 500
                )
                err = _error_doc(f"The mock LLM failed: {exc}", "server_error", None)
                await _send_json(send, status or 500, err)
                return
        doc: dict[str, Any] = {
            "id": f"chatcmpl-mock{next(self._ids):012x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": call.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(parts), "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        body = orjson.dumps(doc)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if fault.slow_bytes:
            await _slow_writer(send, exchange, self.config.slow_bytes_delay)(body, True)
        else:
            await _writer(send, exchange)(body, True)


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
