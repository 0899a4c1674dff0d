"""The backend protocol: what the gateway asks of any LLM, mock or real."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._relay import Relay

__all__ = [
    "ChatBackend",
    "ChatChunk",
    "ChatCompletion",
    "ChatMessage",
    "ChatRequest",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
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
    :class:`trio.WouldBlock`. The gateway uses it to send the chunks that
    piled up while it was busy as one event (both built-in backends have it).

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
