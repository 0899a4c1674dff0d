"""LLM backends: the protocol, the in-process mock, the OpenAI-compatible client."""

from ._types import ChatBackend, ChatChunk, ChatCompletion, ChatMessage, ChatRequest, Usage

__all__ = ["ChatBackend", "ChatChunk", "ChatCompletion", "ChatMessage", "ChatRequest", "Usage"]
