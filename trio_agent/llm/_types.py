"""The backend protocol: what the gateway asks of any LLM, mock or real."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["ChatBackend", "ChatChunk", "ChatCompletion", "ChatMessage", "ChatRequest", "Usage"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ChatMessage:
    """One chat message: ``role`` is system, user, assistant or tool."""

    role: str
    content: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ChatRequest:
    """A chat completion request, independent of any wire format."""

    messages: tuple[ChatMessage, ...]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None

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

    ``delta`` is new text (may be empty); ``finish_reason`` is set on the
    chunk that ends the choice ("stop", "length"); ``usage`` arrives once, at
    the end, when the backend knows it.
    """

    delta: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ChatCompletion:
    """A whole, non-streamed reply."""

    content: str
    finish_reason: str
    usage: Usage
    model: str


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
