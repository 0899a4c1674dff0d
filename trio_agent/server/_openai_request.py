"""OpenAI request bodies: the gateway's policy checks, refused the way OpenAI refuses them.

``/v1/chat/completions`` is a pass-through: the client's body goes upstream as
it is (:attr:`ChatRequest.openai_body`), and this module only (a) enforces
what the gateway owns (message count and length, the ``max_tokens`` limit)
and the mistakes OpenAI itself refuses before any model runs (a user message
without content, a tool message without ``tool_call_id``, a malformed function
tool), and (b) reads a *view* of the body (messages as text, tool calls, tool
results, tools, tool choice, model, limits) for metrics and for the mock.
Fields it does not know are never looked at: they reach the upstream as sent.

Every refusal is a 400 :class:`RequestValidationError` whose ``code``, message
wording and ``field`` (rendered as OpenAI's ``param``, e.g.
``messages.[0].content``) follow OpenAI's own answers for the same mistake,
so an OpenAI SDK raises ``BadRequestError`` with the same fields either way.

The native routes reuse :func:`parse_tools` and :func:`parse_tool_choice`
(their refusals translated to the native 422 shape by the caller).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import ServerConfig
from ..errors import RequestValidationError
from ..llm import ChatMessage, ChatRequest, ToolCall

__all__ = ["OpenAIBody", "parse_openai_chat", "parse_relay_body", "parse_tool_choice", "parse_tools"]

_ROLES = ("system", "assistant", "user", "tool", "developer")
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_TOOL_CHOICES = ("none", "auto", "required")


# -- OpenAI's refusals ---------------------------------------------------------------------


def _where(path: tuple[str | int, ...]) -> tuple[str, str]:
    """(``messages[0].content`` for the message, ``messages.[0].content`` for ``param``)."""
    text = ""
    param = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            param += f".[{part}]"
        else:
            text += f".{part}" if text else part
            param += f".{part}" if param else part
    return text, param


def _error(message: str, code: str, path: tuple[str | int, ...]) -> RequestValidationError:
    return RequestValidationError(message, field=_where(path)[1] or None, status_code=400, code=code)


def _missing(*path: str | int) -> RequestValidationError:
    return _error(f"Missing required parameter: '{_where(path)[0]}'.", "missing_required_parameter", path)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _wrong_type(value: Any, expected: str, *path: str | int) -> RequestValidationError:
    return _error(
        f"Invalid type for '{_where(path)[0]}': expected {expected}, but got {_kind(value)} instead.",
        "invalid_type",
        path,
    )


def _supported(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def _invalid_value(value: Any, values: tuple[str, ...], *path: str | int) -> RequestValidationError:
    return _error(
        f"Invalid value: '{value}'. Supported values are: {_supported(values)}.", "invalid_value", path
    )


def _object(value: Any, *path: str | int) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _wrong_type(value, "an object", *path)
    return value


def _string(value: Any, *path: str | int) -> str:
    if not isinstance(value, str):
        raise _wrong_type(value, "a string", *path)
    return value


def _integer(value: Any, *path: str | int, minimum: int, maximum: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON does not tell 5.0 from 5
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong_type(value, "an integer", *path)
    name = _where(path)[0]
    if value < minimum:
        raise _error(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {minimum}, "
            f"but got {value} instead.",
            "integer_below_min_value",
            path,
        )
    if value > maximum:
        raise _error(
            f"Invalid '{name}': integer above maximum value. Expected a value <= {maximum}, "
            f"but got {value} instead.",
            "integer_above_max_value",
            path,
        )
    return value


# -- tools -----------------------------------------------------------------------------------


def parse_tools(value: Any, *, path: tuple[str | int, ...] = ("tools",)) -> tuple[Mapping[str, Any], ...]:
    """The function tools of a ``tools`` array, checked as OpenAI checks them.

    A function tool needs ``function.name`` matching ``^[a-zA-Z0-9_-]{1,64}$``
    and, when given, an object ``parameters``. Tools of other types are kept
    out of the view (an upstream that knows them gets them in the body).
    """
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _wrong_type(value, "an array of objects", *path)
    if not value:
        raise _error(
            f"Invalid '{_where(path)[0]}': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "empty_array",
            path,
        )
    tools: list[Mapping[str, Any]] = []
    for i, item in enumerate(value):
        tool = _object(item, *path, i)
        kind = tool.get("type")
        if kind is None:
            raise _missing(*path, i, "type")
        if _string(kind, *path, i, "type") != "function":
            continue
        if "function" not in tool:
            raise _missing(*path, i, "function")
        fn = _object(tool["function"], *path, i, "function")
        if "name" not in fn:
            raise _missing(*path, i, "function", "name")
        name = _string(fn["name"], *path, i, "function", "name")
        if len(name) > 64:
            raise _error(
                f"Invalid '{_where((*path, i, 'function', 'name'))[0]}': string too long. Expected a "
                f"string with maximum length 64, but got a string with length {len(name)} instead.",
                "string_above_max_length",
                (*path, i, "function", "name"),
            )
        if not _TOOL_NAME.fullmatch(name):
            raise _error(
                f"Invalid '{_where((*path, i, 'function', 'name'))[0]}': string does not match pattern. "
                "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                "invalid_value",
                (*path, i, "function", "name"),
            )
        parameters = fn.get("parameters")
        if parameters is not None:
            _object(parameters, *path, i, "function", "parameters")
        tools.append(tool)
    return tuple(tools)


def parse_tool_choice(
    value: Any, *, path: tuple[str | int, ...] = ("tool_choice",)
) -> str | Mapping[str, Any] | None:
    """``"none"``, ``"auto"``, ``"required"`` or ``{"type": "function", "function": {"name"}}``
    (other object types pass to the upstream). Without ``tools`` it is the upstream's to judge."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in _TOOL_CHOICES:
            raise _invalid_value(value, _TOOL_CHOICES, *path)
        choice: str | Mapping[str, Any] = value
    else:
        obj = _object(value, *path)
        if "type" not in obj:
            raise _missing(*path, "type")
        if obj.get("type") == "function":
            fn = obj.get("function")
            if fn is None:
                raise _missing(*path, "function")
            if "name" not in _object(fn, *path, "function"):
                raise _missing(*path, "function", "name")
            _string(fn["name"], *path, "function", "name")
        choice = obj
    return choice


# -- chat completions ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class OpenAIBody:
    """A checked ``/v1/chat/completions`` body: the request (its ``openai_body`` the client's
    own), whether to stream, and whether the client asked for the usage chunk."""

    request: ChatRequest
    stream: bool
    include_usage: bool


def _content(
    msg: Mapping[str, Any], i: int, role: str, limits: ServerConfig
) -> str | None:
    """The message's text (content parts joined; other parts left to the upstream)."""
    if "content" not in msg:
        if role == "assistant":
            return None
        raise _missing("messages", i, "content")
    content = msg["content"]
    if content is None:
        if role == "assistant":
            return None
        raise _wrong_type(content, "one of a string or array of objects", "messages", i, "content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for j, item in enumerate(content):
            part = _object(item, "messages", i, "content", j)
            kind = part.get("type")
            if kind is None:
                raise _missing("messages", i, "content", j, "type")
            _string(kind, "messages", i, "content", j, "type")
            if kind in ("text", "refusal"):
                if kind not in part:
                    raise _missing("messages", i, "content", j, kind)
                texts.append(_string(part[kind], "messages", i, "content", j, kind))
        text = "".join(texts)
    else:
        raise _wrong_type(content, "one of a string or array of objects", "messages", i, "content")
    if len(text) > limits.max_message_chars:
        raise _error(
            f"Invalid 'messages[{i}].content': string too long. Expected a string with maximum length "
            f"{limits.max_message_chars}, but got a string with length {len(text)} instead.",
            "string_above_max_length",
            ("messages", i, "content"),
        )
    return text


def _tool_calls(value: Any, i: int) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _wrong_type(value, "an array of objects", "messages", i, "tool_calls")
    calls = []
    for j, item in enumerate(value):
        call = _object(item, "messages", i, "tool_calls", j)
        for name in ("id", "function"):
            if name not in call:
                raise _missing("messages", i, "tool_calls", j, name)
        call_id = _string(call["id"], "messages", i, "tool_calls", j, "id")
        fn = _object(call["function"], "messages", i, "tool_calls", j, "function")
        for name in ("name", "arguments"):
            if name not in fn:
                raise _missing("messages", i, "tool_calls", j, "function", name)
        calls.append(
            ToolCall(
                id=call_id,
                name=_string(fn["name"], "messages", i, "tool_calls", j, "function", "name"),
                arguments=_string(fn["arguments"], "messages", i, "tool_calls", j, "function", "arguments"),
            )
        )
    return tuple(calls)


def _messages(value: Any, limits: ServerConfig) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list):
        raise _wrong_type(value, "an array of objects", "messages")
    if not value:
        raise _error(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "empty_array",
            ("messages",),
        )
    if len(value) > limits.max_messages:
        raise _error(
            f"Invalid 'messages': array too long. Expected an array with maximum length "
            f"{limits.max_messages}, but got an array with length {len(value)} instead.",
            "array_above_max_length",
            ("messages",),
        )
    out = []
    for i, item in enumerate(value):
        msg = _object(item, "messages", i)
        if "role" not in msg:
            raise _missing("messages", i, "role")
        role = msg["role"]
        if not isinstance(role, str) or role not in _ROLES:
            raise _invalid_value(role, _ROLES, "messages", i, "role")
        content = _content(msg, i, role, limits)
        tool_call_id = msg.get("tool_call_id")
        if role == "tool":
            if tool_call_id is None:
                raise _missing("messages", i, "tool_call_id")
            _string(tool_call_id, "messages", i, "tool_call_id")
        elif tool_call_id is not None:
            tool_call_id = None  # only a tool message answers a call
        name = msg.get("name")
        if name is not None:
            _string(name, "messages", i, "name")
        calls = _tool_calls(msg.get("tool_calls"), i) if role == "assistant" else ()
        out.append(
            ChatMessage(role=role, content=content, tool_calls=calls, tool_call_id=tool_call_id, name=name)
        )
    return tuple(out)


def _options(obj: Mapping[str, Any], limits: ServerConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    model = obj.get("model")
    if model is not None:
        out["model"] = _string(model, "model")
    for name in ("max_tokens", "max_completion_tokens"):
        value = obj.get(name)
        if value is not None:
            out["max_tokens"] = _integer(value, name, minimum=1, maximum=limits.max_tokens_limit)
    temperature = obj.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool):
            raise _wrong_type(temperature, "a decimal", "temperature")
        for bad, code, word, bound in (
            (temperature < 0, "decimal_below_min_value", "below minimum", ">= 0"),
            (temperature > 2, "decimal_above_max_value", "above maximum", "<= 2"),
        ):
            if bad:
                raise _error(
                    f"Invalid 'temperature': decimal {word} value. Expected a value {bound}, "
                    f"but got {temperature} instead.",
                    code,
                    ("temperature",),
                )
        out["temperature"] = float(temperature)
    return out


def _stream_flags(obj: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = obj.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _wrong_type(stream, "a boolean", "stream")
    include_usage = False
    options = obj.get("stream_options")
    if options is not None:
        flag = _object(options, "stream_options").get("include_usage")
        if flag is not None and not isinstance(flag, bool):
            raise _wrong_type(flag, "a boolean", "stream_options", "include_usage")
        include_usage = bool(flag)
    return bool(stream), include_usage


def parse_openai_chat(body: Any, limits: ServerConfig) -> OpenAIBody:
    """Check a chat completions body and read its view; the body itself goes upstream unchanged."""
    if not isinstance(body, dict):
        raise _wrong_type(body, "an object", "body")
    if "messages" not in body:
        raise _missing("messages")
    messages = _messages(body["messages"], limits)
    stream, include_usage = _stream_flags(body)
    tools = parse_tools(body.get("tools"))
    choice = parse_tool_choice(body.get("tool_choice"))
    request = ChatRequest(
        messages=messages,
        tools=tools,
        tool_choice=choice,
        openai_body=body,
        **_options(body, limits),
    )
    return OpenAIBody(request=request, stream=stream, include_usage=include_usage)


# -- the relayed routes -------------------------------------------------------------------------


def parse_relay_body(body: Any, limits: ServerConfig) -> tuple[bool, str | None]:
    """(stream, model) of an ``/embeddings``, ``/completions`` or ``/responses`` body.

    Only what the gateway owns is checked (an object, ``stream`` a boolean, ``model``
    a string, the ``max_tokens`` limit); the upstream judges the rest.
    """
    if not isinstance(body, dict):
        raise _wrong_type(body, "an object", "body")
    stream, _ = _stream_flags(body)
    model = body.get("model")
    if model is not None:
        _string(model, "model")
    for name in ("max_tokens", "max_output_tokens"):
        value = body.get(name)
        if value is not None:
            _integer(value, name, minimum=1, maximum=limits.max_tokens_limit)
    return stream, model
