"""Model calls as spans: ``chat {model}`` around a backend's ``stream_chat`` / ``complete_chat``.

Callers go through :func:`stream_chat` and :func:`complete_chat` instead of the
backend's methods; with tracing off (no current tracer) they return the
backend's own call, so the off path costs one context-variable read.

The span follows the OpenTelemetry GenAI conventions for an inference call
(SpanKind CLIENT, ``gen_ai.operation.name`` ``chat``, request and response
model, token usage, finish reasons; the first token as an event).
``gen_ai.provider.name`` is ``openai`` (the wire API every backend speaks) and
the deprecated ``gen_ai.system`` carries the same value for backends that still
read it. The span is current only while the call is opened (retries, the
request head, so the upstream gets its ``traceparent``), not while the caller
reads the chunks: whatever the caller starts meanwhile (an agent's tool calls)
stays a child of the caller's own span.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import trio

from ..tracing import current_tracer
from ._types import ChatBackend, ChatChunk, ChatCompletion, ChatMessage, ChatRequest, Relay, Usage

if TYPE_CHECKING:
    from ..tracing._tracer import GatewayTracer, TraceSpan

__all__ = ["TracedStream", "complete_chat", "input_messages", "open_relay", "record_chat", "stream_chat"]

PROVIDER = "openai"

_T = TypeVar("_T")


def stream_chat(
    backend: ChatBackend, request: ChatRequest, *, observe: bool = True
) -> AbstractAsyncContextManager[AsyncIterator[ChatChunk]]:
    """``backend.stream_chat(request)``, in a ``chat`` span when tracing is on.

    ``observe`` false: the chunks are the backend's own, not watched on their way (no
    cost per chunk; ``gen_ai.response.model`` and ``.id`` are then not read off them); the
    caller tells the span what it saw with :func:`record_chat` before it leaves the block.
    """
    tracer = current_tracer()
    if tracer is None:
        return backend.stream_chat(request)
    # Recording the completion (--trace-content) needs every chunk's text.
    return TracedStream(tracer, backend, request, observe=observe or tracer.content)


def record_chat(
    call: object, *, usage: Usage | None, finish_reason: str | None, first_token_at: float | None
) -> None:
    """What the caller saw of an unobserved :func:`stream_chat` (``first_token_at``: trio time).

    A no-op unless ``call`` is a traced stream opened with ``observe=False``.
    """
    if type(call) is TracedStream:
        call.record(usage=usage, finish_reason=finish_reason, first_token_at=first_token_at)


async def complete_chat(backend: ChatBackend, request: ChatRequest) -> ChatCompletion:
    """``await backend.complete_chat(request)``, in a ``chat`` span when tracing is on."""
    tracer = current_tracer()
    if tracer is None:
        return await backend.complete_chat(request)
    with _start(tracer, backend, request).current() as span:
        completion = await backend.complete_chat(request)
        # Before end(): an ended span ignores its attributes.
        _finish(tracer, span, completion.model, None, completion.usage, (completion.finish_reason,), completion.content)
    return completion


def open_relay(
    backend: ChatBackend, path: str, body: bytes, *, stream: bool, operation: str, model: str
) -> AbstractAsyncContextManager[Relay]:
    """``backend.open_relay(path, body, stream=stream)``, in a ``{operation} {model}`` span when
    tracing is on (``operation``: ``embeddings``, ``text_completion``, ``chat``)."""
    tracer = current_tracer()
    if tracer is None:
        return backend.open_relay(path, body, stream=stream)
    return _TracedRelay(tracer, backend, path, body, stream=stream, operation=operation, model=model)


def _model_call(
    tracer: GatewayTracer, operation: str, model: str, more: Mapping[str, Any] | None = None
) -> TraceSpan:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.system": PROVIDER,
        "gen_ai.request.model": model,
    }
    if more:
        attributes.update(more)
    return tracer.start_client(f"{operation} {model}", attributes)


def _start(tracer: GatewayTracer, backend: ChatBackend, request: ChatRequest) -> TraceSpan:
    # Every request attribute given at the start, in one dict.
    more: dict[str, Any] = {}
    if request.max_tokens is not None:
        more["gen_ai.request.max_tokens"] = request.max_tokens
    if request.temperature is not None:
        more["gen_ai.request.temperature"] = request.temperature
    if tracer.content:
        more["gen_ai.input.messages"] = input_messages(request.messages)
    return _model_call(tracer, "chat", request.model or backend.model, more)


async def _enter_in_span(span: TraceSpan, inner: AbstractAsyncContextManager[_T]) -> _T:
    """Enter ``inner`` with ``span`` current, so the request it opens carries the span's
    ``traceparent``; a failure to open ends the span with it."""
    span.attach()
    try:
        return await inner.__aenter__()
    except BaseException as exc:
        span.fail_with(exc)
        span.end()
        raise
    finally:
        span.detach()


async def _exit_in_span(
    span: TraceSpan,
    inner: AbstractAsyncContextManager[Any],
    exc_info: tuple[type[BaseException] | None, BaseException | None, TracebackType | None],
    settle: Callable[[bool], None],
) -> bool | None:
    """Leave ``inner``; a failure in the block or on leaving sets ``span``'s status, then
    ``settle(failed)`` adds what the call answered, and the span ends."""
    exc = exc_info[1]
    try:
        return await inner.__aexit__(*exc_info)
    except BaseException as raised:
        span.fail_with(raised)
        raise
    finally:
        if exc is not None:
            span.fail_with(exc)
        settle(exc is not None)
        span.end()


def _finish(
    tracer: GatewayTracer,
    span: TraceSpan,
    model: str | None,
    response_id: str | None,
    usage: Usage | None,
    finish_reasons: tuple[str, ...],
    text: str | None,
) -> None:
    """The response's attributes, set on ``span`` at once (before its ``end``)."""
    attributes: dict[str, Any] = {}
    if model is not None:
        attributes["gen_ai.response.model"] = model
    if response_id is not None:
        attributes["gen_ai.response.id"] = response_id
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
    if finish_reasons:
        attributes["gen_ai.response.finish_reasons"] = finish_reasons
    if tracer.content and text is not None:
        output = [{"role": "assistant", "parts": [{"type": "text", "content": text}],
                   "finish_reason": finish_reasons[0] if finish_reasons else None}]  # fmt: skip
        attributes["gen_ai.output.messages"] = orjson.dumps(output).decode()
    span.set_all(attributes)


def input_messages(messages: tuple[ChatMessage, ...]) -> str:
    """``gen_ai.input.messages``: the conversation in the conventions' JSON shape (role, parts)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        parts: list[dict[str, Any]] = []
        if m.role == "tool":
            parts.append({"type": "tool_call_response", "id": m.tool_call_id, "response": m.content})
        elif m.content:
            parts.append({"type": "text", "content": m.content})
        for call in m.tool_calls:
            parts.append({"type": "tool_call", "id": call.id, "name": call.name, "arguments": call.arguments})
        out.append({"role": m.role, "parts": parts})
    return orjson.dumps(out).decode()


class TracedStream:
    """``backend.stream_chat(request)`` inside a ``chat`` span, ended when the block is left."""

    __slots__ = ("_backend", "_chunks", "_inner", "_observe", "_recorded", "_request", "_span", "_tracer")

    def __init__(self, tracer: GatewayTracer, backend: ChatBackend, request: ChatRequest, *, observe: bool) -> None:
        self._tracer = tracer
        self._backend = backend
        self._request = request
        self._observe = observe
        self._inner: AbstractAsyncContextManager[AsyncIterator[ChatChunk]] | None = None
        self._span: TraceSpan | None = None
        self._chunks: _ObservedChunks | None = None
        self._recorded: tuple[Usage | None, str | None] | None = None

    def record(self, *, usage: Usage | None, finish_reason: str | None, first_token_at: float | None) -> None:
        span = self._span
        if span is None:
            return
        self._recorded = (usage, finish_reason)
        if first_token_at is not None:
            # trio's clock to the wall clock spans are stamped with
            ago = trio.current_time() - first_token_at
            span.event("gen_ai.first_token", at_ns=time.time_ns() - int(ago * 1e9))

    async def __aenter__(self) -> AsyncIterator[ChatChunk]:
        span = self._span = _start(self._tracer, self._backend, self._request)
        inner = self._inner = self._backend.stream_chat(self._request)
        chunks = await _enter_in_span(span, inner)
        if not self._observe:
            return chunks
        self._chunks = _ObservedChunks(chunks, span, self._tracer.content)
        return self._chunks

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        span, chunks, inner = self._span, self._chunks, self._inner
        assert span is not None and inner is not None

        def settle(failed: bool) -> None:
            if chunks is not None:
                _finish(
                    self._tracer, span, chunks.model, chunks.response_id, chunks.usage,
                    chunks.finish_reasons, "".join(chunks.text) if chunks.text is not None else None,
                )  # fmt: skip
            elif self._recorded is not None:
                usage, finish_reason = self._recorded
                _finish(self._tracer, span, None, None, usage, (finish_reason,) if finish_reason else (), None)

        return await _exit_in_span(span, inner, (exc_type, exc, tb), settle)


class _TracedRelay:
    """A relayed call inside its span: usage as the relay read it, the upstream's status."""

    __slots__ = ("_inner", "_model", "_operation", "_relay", "_span", "_tracer")

    def __init__(
        self, tracer: GatewayTracer, backend: ChatBackend, path: str, body: bytes,
        *, stream: bool, operation: str, model: str,
    ) -> None:  # fmt: skip
        self._tracer = tracer
        self._operation = operation
        self._model = model
        self._inner = backend.open_relay(path, body, stream=stream)
        self._span: TraceSpan | None = None
        self._relay: Relay | None = None

    async def __aenter__(self) -> Relay:
        span = self._span = _model_call(self._tracer, self._operation, self._model)
        self._relay = await _enter_in_span(span, self._inner)
        return self._relay

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        span, relay = self._span, self._relay
        assert span is not None and relay is not None

        def settle(failed: bool) -> None:
            if not failed and relay.status >= 400:
                span.fail(str(relay.status), f"the upstream answered {relay.status}")
            usage = relay.usage
            if usage is not None:
                span.set_all(
                    {"gen_ai.usage.input_tokens": usage.prompt_tokens, "gen_ai.usage.output_tokens": usage.completion_tokens}
                )

        return await _exit_in_span(span, self._inner, (exc_type, exc, tb), settle)


class _ObservedChunks:
    """The backend's chunk iterator, noting for the span what passes (first token, usage, end).

    Keeps ``receive_nowait`` when the backend's iterator has it (the server sends
    chunks that piled up as one event through it).
    """

    __slots__ = (
        "_first",
        "_inner",
        "_nowait",
        "_span",
        "finish_reasons",
        "model",
        "receive_nowait",
        "response_id",
        "text",
        "usage",
    )

    def __init__(self, inner: AsyncIterator[ChatChunk], span: TraceSpan, content: bool) -> None:
        self._inner = inner
        self._span = span
        self._first = True
        self.model: str | None = None
        self.response_id: str | None = None
        self.usage: Usage | None = None
        self.finish_reasons: tuple[str, ...] = ()
        self.text: list[str] | None = [] if content else None
        nowait = getattr(inner, "receive_nowait", None)
        self._nowait = nowait
        if nowait is not None:
            self.receive_nowait = self._receive_nowait

    def __aiter__(self) -> _ObservedChunks:
        return self

    async def __anext__(self) -> ChatChunk:
        chunk = await self._inner.__anext__()
        self._see(chunk)
        return chunk

    def _receive_nowait(self) -> ChatChunk:
        chunk: ChatChunk = self._nowait()  # type: ignore[misc]
        self._see(chunk)
        return chunk

    def _see(self, chunk: ChatChunk) -> None:
        if self._first:
            if chunk.raw is not None and self.model is None:
                self._read_head(chunk.raw)
            if chunk.delta or chunk.tool_calls:
                self._first = False
                self._span.event("gen_ai.first_token")
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.finish_reason is not None:
            self.finish_reasons = (chunk.finish_reason,)
        if self.text is not None and chunk.delta:
            self.text.append(chunk.delta)

    def _read_head(self, raw: bytes) -> None:
        """The response's model and id, from the first chunk that carries them (read once)."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if isinstance(obj, Mapping):
            model, rid = obj.get("model"), obj.get("id")
            self.model = model if isinstance(model, str) else None
            self.response_id = rid if isinstance(rid, str) else None

