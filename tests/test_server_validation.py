"""Request validation: 400 for bytes that are not JSON, 422 naming the field for the rest."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_agent.config import ServerConfig
from trio_agent.errors import RequestValidationError
from trio_agent.server._openai_request import parse_openai_chat
from trio_agent.server._validation import (
    check_content_type,
    decode_json,
    parse_batch_body,
    parse_chat_body,
)

LIMITS = ServerConfig(max_messages=3, max_message_chars=20, max_tokens_limit=50, max_batch_items=4)


def test_question_becomes_one_user_message() -> None:
    req = parse_chat_body({"question": "hi", "max_tokens": 5, "temperature": 0.5, "model": "m"}, LIMITS)
    assert [(m.role, m.content) for m in req.messages] == [("user", "hi")]
    assert (req.max_tokens, req.temperature, req.model) == (5, 0.5, "m")


def test_messages_are_kept_in_order() -> None:
    body = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}
    assert [m.role for m in parse_chat_body(body, LIMITS).messages] == ["system", "user"]


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_json_content_types(content_type: str) -> None:
    check_content_type(content_type)


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/x-www-form-urlencoded"])
def test_other_content_types_are_400(content_type: str | None) -> None:
    with pytest.raises(RequestValidationError) as info:
        check_content_type(content_type)
    assert info.value.status_code == 400


@pytest.mark.parametrize("raw", [b"", b"{", b"nul", b"\xff"])
def test_malformed_json_is_400(raw: bytes) -> None:
    with pytest.raises(RequestValidationError) as info:
        decode_json(raw)
    assert info.value.status_code == 400


def test_batch_forms_and_cap() -> None:
    assert len(parse_batch_body({"questions": ["a", "b"]}, LIMITS).requests) == 2
    reqs = parse_batch_body({"requests": [{"question": "a", "max_tokens": 2}]}, LIMITS).requests
    assert reqs[0].max_tokens == 2
    with pytest.raises(RequestValidationError) as info:
        parse_batch_body({"questions": ["a"] * 5}, LIMITS)
    assert (info.value.status_code, info.value.field) == (413, "questions")
    with pytest.raises(RequestValidationError) as info:
        parse_batch_body({"requests": [{"question": "a"}, {"question": "b", "max_tokens": 99}]}, LIMITS)
    assert info.value.field == "requests.1.max_tokens"


def test_openai_body_is_passed_through_and_its_view_read() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
            {"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 7,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
        "n": 2,
        "some_future_field": {"x": 1},
    }
    parsed = parse_openai_chat(body, ServerConfig(max_messages=4, max_message_chars=20, max_tokens_limit=50))
    req = parsed.request
    assert parsed.stream and parsed.include_usage and req.max_tokens == 7
    assert req.openai_body is body
    assert [m.content for m in req.messages] == ["be brief", "q", None, "42"]
    assert req.messages[2].tool_calls[0].name == "f" and req.messages[3].tool_call_id == "c1"
    assert req.tools == tuple(body["tools"]) and req.tool_choice == "auto"


@pytest.mark.parametrize(
    ("body", "code", "param", "message"),
    [
        ({"messages": [{"role": "user"}]}, "missing_required_parameter", "messages.[0].content",
         "Missing required parameter: 'messages[0].content'."),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}]},
         "missing_required_parameter", "messages.[1].tool_call_id",
         "Missing required parameter: 'messages[1].tool_call_id'."),
        ({}, "missing_required_parameter", "messages", "Missing required parameter: 'messages'."),
        ({"messages": []}, "empty_array", "messages", None),
        ({"messages": [{"role": "user", "content": "q"}] * 4}, "array_above_max_length", "messages", None),
        ({"messages": [{"role": "robot", "content": "q"}]}, "invalid_value", "messages.[0].role", None),
        ({"messages": [{"role": "user", "content": "x" * 21}]}, "string_above_max_length", "messages.[0].content", None),
        ({"messages": [{"role": "user", "content": 5}]}, "invalid_type", "messages.[0].content", None),
        ({"messages": [{"role": "user", "content": "q"}], "stream": "yes"}, "invalid_type", "stream",
         "Invalid type for 'stream': expected a boolean, but got a string instead."),
        ({"messages": [{"role": "user", "content": "q"}], "max_tokens": 51}, "integer_above_max_value", "max_tokens", None),
        ({"messages": [{"role": "user", "content": "q"}], "max_completion_tokens": 0},
         "integer_below_min_value", "max_completion_tokens", None),
        ({"messages": [{"role": "user", "content": "q"}], "temperature": 3}, "decimal_above_max_value", "temperature", None),
        ({"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function", "function": {"name": "a b"}}]},
         "invalid_value", "tools.[0].function.name", None),
        ({"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function", "function": {}}]},
         "missing_required_parameter", "tools.[0].function.name", None),
        ({"messages": [{"role": "user", "content": "q"}],
          "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
         "invalid_type", "tools.[0].function.parameters", None),
        ({"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function", "function": {"name": "f"}}],
          "tool_choice": "sometimes"}, "invalid_value", "tool_choice", None),
    ],
)
def test_openai_body_mistakes_are_refused_as_openai_refuses_them(
    body: Any, code: str, param: str, message: str | None
) -> None:
    with pytest.raises(RequestValidationError) as info:
        parse_openai_chat(body, LIMITS)
    exc = info.value
    assert (exc.status_code, exc.code, exc.field) == (400, code, param)
    if message is not None:
        assert exc.message == message


def test_native_bodies_take_tools_and_refuse_bad_ones_naming_the_field() -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    req = parse_chat_body({"question": "q", "tools": [tool], "tool_choice": "required"}, LIMITS)
    assert req.tools == (tool,) and req.tool_choice == "required"
    with pytest.raises(RequestValidationError) as info:
        parse_chat_body({"question": "q", "tools": [{"type": "function", "function": {"name": "x" * 65}}]}, LIMITS)
    assert (info.value.status_code, info.value.field) == (422, "tools.0.function.name")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
chat_like = st.fixed_dictionaries(
    {},
    optional={
        "question": json_values,
        "messages": st.lists(
            st.fixed_dictionaries({}, optional={"role": json_values | st.sampled_from(["user", "system"]), "content": json_values}),
            max_size=5,
        ),
        "model": json_values,
        "max_tokens": json_values,
        "temperature": json_values,
    },
)


@given(body=json_values | chat_like)
def test_any_json_is_either_a_request_or_a_422_naming_a_field(body: Any) -> None:
    try:
        req = parse_chat_body(body, LIMITS)
    except RequestValidationError as exc:
        assert exc.status_code == 422
        assert exc.field is not None
        return
    assert 1 <= len(req.messages) <= LIMITS.max_messages
    assert all(len(m.content) <= LIMITS.max_message_chars for m in req.messages)
    assert req.max_tokens is None or 1 <= req.max_tokens <= LIMITS.max_tokens_limit


@given(body=json_values | chat_like)
def test_any_json_openai_body_is_a_request_or_a_400_naming_a_param(body: Any) -> None:
    try:
        parse_openai_chat(body, LIMITS)
    except RequestValidationError as exc:
        assert exc.status_code == 400 and exc.field is not None and exc.code != "invalid_request"
