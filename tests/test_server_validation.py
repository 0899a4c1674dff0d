"""Request validation: 400 for bytes that are not JSON, 422 naming the field for the rest."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_agent.config import ServerConfig
from trio_agent.errors import RequestValidationError
from trio_agent.server._validation import (
    check_content_type,
    decode_json,
    parse_batch_body,
    parse_chat_body,
    parse_openai_body,
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


def test_openai_body_is_lenient_on_unknown_fields_and_strict_on_known_ones() -> None:
    parsed = parse_openai_body(
        {
            "model": "m",
            "messages": [{"role": "assistant", "content": None}, {"role": "user", "content": "q"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_completion_tokens": 7,
            "top_p": 0.9,
            "user": "x",
        },
        LIMITS,
    )
    assert parsed.stream and parsed.include_usage and parsed.request.max_tokens == 7
    for body, field in (
        ({"messages": [{"role": "user", "content": "q"}], "stream": "yes"}, "stream"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages.0.content.0"),
        ({"messages": [{"role": "user", "content": "q"}], "stream_options": {"include_usage": 1}},
         "stream_options.include_usage"),
    ):
        with pytest.raises(RequestValidationError) as info:
            parse_openai_body(body, LIMITS)
        assert info.value.field == field


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


@given(body=json_values)
def test_any_json_openai_body_is_a_request_or_a_422(body: Any) -> None:
    try:
        parse_openai_body(body, LIMITS)
    except RequestValidationError as exc:
        assert exc.status_code == 422 and exc.field is not None
