"""LLM backends: the protocol, the in-process mock, the OpenAI-compatible client."""

from ._mock import MockLLM, MockLLMStatistics
from ._openai import OpenAIBackend, OpenAIBackendStatistics, open_openai_backend
from ._retry import RetryBudget, RetryBudgetStatistics
from ._tool_calls import ToolCallAssembler
from ._types import (
    ChatBackend,
    ChatChunk,
    ChatCompletion,
    ChatMessage,
    ChatRequest,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = [
    "ChatBackend",
    "ChatChunk",
    "ChatCompletion",
    "ChatMessage",
    "ChatRequest",
    "MockLLM",
    "MockLLMStatistics",
    "OpenAIBackend",
    "OpenAIBackendStatistics",
    "RetryBudget",
    "RetryBudgetStatistics",
    "ToolCall",
    "ToolCallAssembler",
    "ToolCallDelta",
    "Usage",
    "open_openai_backend",
]
