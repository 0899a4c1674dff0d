"""The backend protocol: what the gateway asks of any LLM, mock or real."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import orjson
import trio

__all__ = [
    "ChatBackend",
    "ChatChunk",
    "ChatCompletion",
    "ChatMessage",
    "ChatRequest",
    "Relay",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "usage_from_object",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCall:
    """One complete tool call the model asked for; ``arguments`` is the JSON text as sent."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallDelta:
    """One streamed piece of a tool call, as OpenAI sends it.

    The first piece of a call carries ``id`` and ``name`` (and usually empty
    ``arguments``); later pieces carry ``index`` and a fragment of
    ``arguments``. Parallel calls are told apart by ``index``; some servers
    reuse ``index`` 0 and tell calls apart by a new ``id`` instead, and some
    send all arguments in the first piece.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class ChatMessage:
    """One chat message: ``role`` is system, user, assistant or tool.

    ``content`` is the message's text (``None`` for an assistant message that
    only calls tools). An assistant message may carry ``tool_calls``; a tool
    message answers one call and names it with ``tool_call_id``.
    """

    role: str
    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ChatRequest:
    """A chat completion request, independent of any wire format."""

    messages: tuple[ChatMessage, ...]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    #: OpenAI function tools offered to the model (``{"type": "function", "function": {...}}``).
    tools: tuple[Mapping[str, Any], ...] = ()
    #: ``"auto"``, ``"none"``, ``"required"`` or ``{"type": "function", ...}``; ``None`` = not sent.
    tool_choice: str | Mapping[str, Any] | None = None
    #: The client's OpenAI body exactly as received, on the ``/v1`` pass-through path. When
    #: set, an OpenAI-compatible backend forwards it unchanged except for what the gateway
    #: owns (default model, ``stream``, ``stream_options.include_usage``); the fields above
    #: are a parsed view of it for policy and for the mock.
    openai_body: Mapping[str, Any] | None = None

    @classmethod
    def from_question(cls, question: str, **kwargs: object) -> ChatRequest:
        """A one-message request: ``{"role": "user", "content": question}``."""
        return cls(messages=(ChatMessage(role="user", content=question),), **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    """Token counts, as the upstream reported them (or the mock counted them)."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_from_object(obj: Any) -> Usage | None:
    """Usage from a ``usage`` object: chat and completions (``prompt_tokens``,
    ``completion_tokens``), embeddings (``prompt_tokens`` only) or the
    Responses API (``input_tokens``, ``output_tokens``); None if it is none of them.
    """
    if not isinstance(obj, Mapping):
        return None
    prompt = obj.get("prompt_tokens", obj.get("input_tokens"))
    completion = obj.get("completion_tokens", obj.get("output_tokens"))
    if prompt is None and completion is None:
        return None
    try:
        return Usage(prompt_tokens=int(prompt or 0), completion_tokens=int(completion or 0))
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, kw_only=True, slots=True)
class ChatChunk:
    """One piece of a streamed reply.

    ``delta`` is new text (may be empty); ``tool_calls`` are pieces of tool
    calls (see :class:`ToolCallDelta`); ``finish_reason`` is set on the chunk
    that ends the choice ("stop", "length", "tool_calls"); ``usage`` arrives
    once, at the end, when the backend knows it. ``raw`` is the chunk's JSON
    exactly as the upstream sent it (the SSE ``data`` of one chunk), so a
    relay can forward it without re-encoding; ``None`` when the chunk was not
    read off an OpenAI wire.
    """

    delta: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    raw: bytes | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ChatCompletion:
    """A whole, non-streamed reply."""

    content: str
    finish_reason: str
    usage: Usage
    model: str
    tool_calls: tuple[ToolCall, ...] = ()
    #: The upstream's JSON answer exactly as sent, when it came off an OpenAI wire.
    raw: bytes | None = None


class Relay:
    """A relayed OpenAI answer: status, content type and bytes the server writes through unchanged.

    The routes the gateway does not model (``/v1/embeddings``,
    ``/v1/completions``, ``/v1/responses``) go through a backend's
    ``open_relay(path, body, stream=...)``::

        async with backend.open_relay("/embeddings", body, stream=False) as relay:
            write_head(relay.status, relay.content_type)
            if relay.streaming:
                async for data in relay:  # one or more whole SSE events, as sent
                    write(data)
            else:
                write(relay.body)

    The context is entered once the first byte is there (retries happen only
    before it); leaving it closes the upstream call. What metrics need is read
    off the bytes as they pass, never re-encoded: ``first_byte_at`` (trio
    time) and ``usage``, the last usage seen in any API's shape. A non-200
    ``status`` comes with the upstream's own error body, to be written through
    as it is (a 400 from the upstream is the client's mistake, told in the
    upstream's words).
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


@runtime_checkable
class ChatBackend(Protocol):
    """What the gateway needs from an LLM.

    ``stream_chat`` returns an async context manager so that the stream has a
    defined lifetime: leaving the block (normally, by error or by
    cancellation) closes the upstream call at once::

        async with backend.stream_chat(request) as chunks:
            async for chunk in chunks:
                ...

    Errors are raised as :class:`trio_agent.errors.UpstreamError` subclasses.

    The chunk iterator may also offer ``receive_nowait() -> ChatChunk``: the
    next chunk if it is already there (read, or due), else
    :class:`trio.WouldBlock`; or ``ready_nowait() -> ChatChunk | None``, the
    same answering None (cheaper: it is asked after every chunk). The gateway
    uses it to send the chunks that piled up while it was busy as one event
    (both built-in backends have both). And ``push(offer)``: the iterator
    calls ``offer(chunk, ready_nowait)`` for its next chunks from its own
    clock, without a task switch per chunk, until ``offer`` answers False or a
    chunk needs ``__anext__`` (the mock has it; docs/decisions/014).

    ``open_relay(path, body, stream=...)`` relays one OpenAI call the gateway
    does not model (``/embeddings``, ``/completions``, ``/responses``): the
    body goes upstream as it is, and the answer comes back as bytes to write
    through (see :class:`~trio_agent.llm.Relay`), with the same retries before
    the first byte, deadlines and disconnect-by-closing as ``stream_chat``.
    """

    @property
    def model(self) -> str:
        """The default model name this backend serves."""
        ...

    def stream_chat(
        self, request: ChatRequest
    ) -> AbstractAsyncContextManager[AsyncIterator[ChatChunk]]: ...

    async def complete_chat(self, request: ChatRequest) -> ChatCompletion: ...

    async def list_models(self) -> list[str]: ...

    def statistics(self) -> object:
        """A frozen snapshot of the backend's state, for ``/metrics``."""
        ...

    def open_relay(
        self, path: str, body: bytes, *, stream: bool
    ) -> AbstractAsyncContextManager[Relay]: ...
