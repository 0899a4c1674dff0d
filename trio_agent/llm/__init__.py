"""LLM backends: the protocol, the in-process mock, the OpenAI-compatible client."""

from ._mock import MockLLM, MockLLMStatistics
from ._types import ChatBackend, ChatChunk, ChatCompletion, ChatMessage, ChatRequest, Usage

__all__ = ["MockLLM", "MockLLMStatistics", "ChatBackend", "ChatChunk", "ChatCompletion", "ChatMessage", "ChatRequest", "Usage"]
