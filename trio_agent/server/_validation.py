"""Request bodies -> typed requests. Every refusal names the field it is about.

Malformed JSON or a wrong ``Content-Type`` is a 400; a body that parses but
has a wrong, missing or unknown field is a 422 with ``field`` set (a dotted
path such as ``messages.2.content``). Limits (message count, message length,
``max_tokens``, batch size) come from :class:`~trio_agent.config.ServerConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..config import ServerConfig
from ..errors import RequestValidationError
from ..llm import ChatMessage, ChatRequest
from ._openai_request import parse_tool_choice, parse_tools

__all__ = [
    "BatchBody",
    "check_content_type",
    "decode_json",
    "parse_batch_body",
    "parse_chat_body",
]

_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
_CHAT_FIELDS = frozenset(
    {"question", "messages", "model", "max_tokens", "temperature", "tools", "tool_choice"}
)


def _invalid(message: str, field: str | None) -> RequestValidationError:
    return RequestValidationError(message, field=field, status_code=422)


def check_content_type(content_type: str | None) -> None:
    """Only ``application/json`` (any charset parameter) is accepted: else 400."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise RequestValidationError(
            "Content-Type must be application/json", field="content-type", status_code=400
        )


def decode_json(raw: bytes) -> Any:
    """Parse JSON; malformed JSON is a 400."""
    if not raw:
        raise RequestValidationError("request body is empty", field=None, status_code=400)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestValidationError(
            f"malformed JSON: {exc}", field=None, status_code=400
        ) from exc


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{field} must be a JSON object", field)
    return value


def _text(value: Any, field: str, limits: ServerConfig, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{field} must be a string", field)
    if not allow_empty and not value.strip():
        raise _invalid(f"{field} must not be empty", field)
    if len(value) > limits.max_message_chars:
        raise _invalid(
            f"{field} is longer than {limits.max_message_chars} characters", field
        )
    return value


def _messages(value: Any, field: str, limits: ServerConfig) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise _invalid(f"{field} must be a non-empty array", field)
    if len(value) > limits.max_messages:
        raise _invalid(f"{field} holds more than {limits.max_messages} messages", field)
    out = []
    for i, item in enumerate(value):
        where = f"{field}.{i}"
        msg = _object(item, where)
        role = msg.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise _invalid(f"{where}.role must be one of {sorted(_ROLES)}", f"{where}.role")
        content = msg.get("content")
        out.append(ChatMessage(role=role, content=_text(content, f"{where}.content", limits)))
    return tuple(out)


def _options(body: Mapping[str, Any], limits: ServerConfig, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str) or not model or len(model) > 256:
            raise _invalid("model must be a non-empty string", prefix + "model")
        out["model"] = model
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON (and JSON Schema) do not tell 5.0 from 5
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _invalid(f"{name} must be a positive integer", prefix + name)
        if value > limits.max_tokens_limit:
            raise _invalid(f"{name} must be at most {limits.max_tokens_limit}", prefix + name)
        out["max_tokens"] = value
    temperature = body.get("temperature")
    if temperature is not None:
        if (
            not isinstance(temperature, (int, float))
            or isinstance(temperature, bool)
            or not 0 <= temperature <= 2
        ):
            raise _invalid("temperature must be a number in [0, 2]", prefix + "temperature")
        out["temperature"] = float(temperature)
    return out


def parse_chat_body(body: Any, limits: ServerConfig, *, prefix: str = "") -> ChatRequest:
    """``{"question": ...}`` or ``{"messages": [...]}``, plus model/max_tokens/temperature."""
    obj = _object(body, prefix.rstrip(".") or "body")
    unknown = sorted(set(obj) - _CHAT_FIELDS)
    if unknown:
        raise _invalid(f"unknown field {unknown[0]!r}", prefix + unknown[0])
    has_q, has_m = "question" in obj, "messages" in obj
    if has_q == has_m:
        raise _invalid("send exactly one of 'question' or 'messages'", prefix + "question")
    if has_q:
        messages: tuple[ChatMessage, ...] = (
            ChatMessage(role="user", content=_text(obj["question"], prefix + "question", limits)),
        )
    else:
        messages = _messages(obj["messages"], prefix + "messages", limits)
    tools, choice = _tools(obj, prefix)
    return ChatRequest(messages=messages, tools=tools, tool_choice=choice, **_options(obj, limits, prefix))


def _tools(
    obj: Mapping[str, Any], prefix: str
) -> tuple[tuple[Mapping[str, Any], ...], str | Mapping[str, Any] | None]:
    """``tools`` and ``tool_choice``, checked as on ``/v1`` and refused in the native shape (422)."""
    if "tools" not in obj and "tool_choice" not in obj:
        return (), None
    try:
        tools = parse_tools(obj.get("tools"))
        choice = parse_tool_choice(obj.get("tool_choice"))
    except RequestValidationError as exc:
        # OpenAI's param ``tools.[0].function.name`` is our field ``tools.0.function.name``.
        field = (exc.field or "tools").replace(".[", ".").replace("]", "")
        raise _invalid(exc.message, prefix + field) from None
    return tools, choice


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchBody:
    """A parsed ``/chat/batch`` body: one :class:`ChatRequest` per item."""

    requests: tuple[ChatRequest, ...]


def parse_batch_body(body: Any, limits: ServerConfig) -> BatchBody:
    """``{"questions": [str, ...]}`` or ``{"requests": [chat bodies]}``; 413 past ``max_batch_items``."""
    obj = _object(body, "body")
    unknown = sorted(set(obj) - {"questions", "requests"})
    if unknown:
        raise _invalid(f"unknown field {unknown[0]!r}", unknown[0])
    if ("questions" in obj) == ("requests" in obj):
        raise _invalid("send exactly one of 'questions' or 'requests'", "questions")
    name = "questions" if "questions" in obj else "requests"
    items = obj[name]
    if not isinstance(items, list) or not items:
        raise _invalid(f"{name} must be a non-empty array", name)
    if len(items) > limits.max_batch_items:
        raise RequestValidationError(
            f"{name} holds {len(items)} items, more than max_batch_items={limits.max_batch_items}",
            field=name,
            status_code=413,
        )
    if name == "questions":
        reqs = tuple(
            ChatRequest.from_question(_text(q, f"questions.{i}", limits))
            for i, q in enumerate(items)
        )
    else:
        reqs = tuple(
            parse_chat_body(item, limits, prefix=f"requests.{i}.") for i, item in enumerate(items)
        )
    return BatchBody(requests=reqs)
