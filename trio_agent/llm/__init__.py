"""LLM backends: the protocol, the in-process mock, the OpenAI-compatible client, the upstream router."""

from ._mock import MockLLM, MockLLMStatistics
from ._openai import OpenAIBackend, OpenAIBackendStatistics, open_openai_backend
from ._retry import RetryBudget, RetryBudgetStatistics
from ._router import RouterBackend, RouterStatistics, open_router_backend, upstream_unavailable
from ._tool_calls import ToolCallAssembler
from ._traced import complete_chat as complete_chat_traced
from ._traced import open_relay as open_relay_traced
from ._traced import record_chat
from ._traced import stream_chat as stream_chat_traced
from ._types import (
    ChatBackend,
    ChatChunk,
    ChatCompletion,
    ChatMessage,
    ChatRequest,
    Relay,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from ._upstreams import Upstream, UpstreamSet, UpstreamStatistics

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
    "Relay",
    "RetryBudget",
    "RetryBudgetStatistics",
    "RouterBackend",
    "RouterStatistics",
    "ToolCall",
    "ToolCallAssembler",
    "ToolCallDelta",
    "Upstream",
    "UpstreamSet",
    "UpstreamStatistics",
    "Usage",
    "complete_chat_traced",
    "open_openai_backend",
    "open_relay_traced",
    "open_router_backend",
    "record_chat",
    "stream_chat_traced",
    "upstream_unavailable",
]
