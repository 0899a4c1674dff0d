"""OpenAI's chat wire objects read into our types: a streamed chunk, usage in every API's shape.

Shared by the OpenAI-compatible client (chunks read off an upstream), the
mock's script replay (chunks written by hand) and :class:`~trio_agent.llm.Relay`
(usage seen in relayed answers), so all three read the wire the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._types import ChatChunk, ToolCall, ToolCallDelta, usage_from_object

__all__ = ["chunk_from_object", "tool_calls_from_message", "usage_from_object"]  # the last from _types


def _tool_call_deltas(raw: Any) -> tuple[ToolCallDelta, ...]:
    if not isinstance(raw, list):
        return ()
    out = []
    for position, item in enumerate(raw):
        if not isinstance(item, Mapping):
            continue
        fn = item.get("function")
        fn = fn if isinstance(fn, Mapping) else {}
        index = item.get("index")
        name = fn.get("name")
        arguments = fn.get("arguments")
        call_id = item.get("id")
        out.append(
            ToolCallDelta(
                # A server that leaves out ``index`` sends one call per delta list entry.
                index=index if type(index) is int else position,
                id=call_id if isinstance(call_id, str) else None,
                name=name if isinstance(name, str) else None,
                arguments=arguments if isinstance(arguments, str) else "",
            )
        )
    return tuple(out)


def chunk_from_object(obj: Mapping[str, Any], raw: bytes | None) -> ChatChunk:
    """One ``chat.completion.chunk`` object as a :class:`ChatChunk` carrying ``raw``.

    Only the first choice is read (the gateway asks for one); fields it does not
    know stay in ``raw``. Raises ``TypeError``/``AttributeError`` on a malformed
    choice; the caller maps them to its own error.
    """
    usage = usage_from_object(obj.get("usage"))
    choices = obj.get("choices")
    if not choices:
        return ChatChunk(usage=usage, raw=raw)
    choice = choices[0]
    delta = choice.get("delta") or {}
    text = delta.get("content") or ""
    calls = delta.get("tool_calls")
    return ChatChunk(
        delta=text if isinstance(text, str) else "",
        tool_calls=_tool_call_deltas(calls) if calls else (),
        finish_reason=choice.get("finish_reason"),
        usage=usage,
        raw=raw,
    )


def tool_calls_from_message(message: Mapping[str, Any]) -> tuple[ToolCall, ...]:
    """The complete tool calls of a ``chat.completion`` message (skipping malformed entries)."""
    raw = message.get("tool_calls")
    if not isinstance(raw, list):
        return ()
    out = []
    for item in raw:
        fn = item.get("function") if isinstance(item, Mapping) else None
        if not isinstance(fn, Mapping):
            continue
        arguments = fn.get("arguments")
        out.append(
            ToolCall(
                id=str(item.get("id") or ""),
                name=str(fn.get("name") or ""),
                arguments=arguments if isinstance(arguments, str) else "",
            )
        )
    return tuple(out)
