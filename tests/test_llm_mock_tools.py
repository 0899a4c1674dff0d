"""The mocks' deterministic decisions: which tools to call, arguments from JSON schemas, replies.

Generated values are checked with ``jsonschema_rs`` (installed with the test extra, through
schemathesis), an implementation independent of the generator.
"""

from __future__ import annotations

import random
from typing import Any

import jsonschema_rs
import orjson
import pydantic
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_agent.llm import ChatMessage, ChatRequest, ToolCall
from trio_agent.llm._mock_tools import (
    argument_fragments,
    plan_tool_calls,
    response_format_schema,
    tool_results_reply,
    value_for_schema,
)


def _valid(schema: dict[str, Any], value: Any) -> bool:
    return bool(jsonschema_rs.validator_for(schema).is_valid(value))


# -- schemas drawn by hypothesis ---------------------------------------------------------

_NAMES = st.text("abcdefgh_", min_size=1, max_size=6)


def _scalar() -> st.SearchStrategy[dict[str, Any]]:
    bounds = st.integers(-50, 50)
    integer = st.builds(
        lambda lo, width, use_lo, use_hi, step: {
            "type": "integer",
            **({"minimum": lo} if use_lo else {}),
            **({"maximum": lo + width} if use_hi else {}),
            **({"multipleOf": step} if step and width >= step else {}),
        },
        bounds, st.integers(0, 40), st.booleans(), st.booleans(), st.sampled_from([0, 1, 2, 5]),
    )
    number = st.builds(
        lambda lo, width, excl: {"type": "number", "exclusiveMinimum" if excl else "minimum": lo,
                                 "maximum": lo + width},
        bounds, st.integers(1, 40), st.booleans(),
    )
    string = st.builds(
        lambda lo, extra, fmt: {"type": "string", "minLength": lo, "maxLength": lo + extra,
                                **({"format": fmt} if fmt else {})},
        st.integers(0, 12), st.integers(0, 12),
        st.sampled_from([None, "date", "date-time", "email", "uri", "uuid"]),
    )
    enum = st.lists(st.one_of(st.integers(), _NAMES, st.booleans()), min_size=1, max_size=4).map(
        lambda values: {"enum": values}
    )
    return st.one_of(
        integer, number, string, enum,
        st.just({"type": "boolean"}), st.just({"type": "null"}),
        _NAMES.map(lambda c: {"const": c}),
        st.builds(lambda d: {"type": "string", "default": d}, _NAMES),
        st.just({"type": ["string", "null"]}),
    )


def _schema() -> st.SearchStrategy[dict[str, Any]]:
    def extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
        obj = st.dictionaries(_NAMES, children, max_size=4).flatmap(
            lambda props: st.builds(
                lambda required, closed: {
                    "type": "object", "properties": props, "required": required,
                    **({"additionalProperties": False} if closed else {}),
                },
                st.lists(st.sampled_from(sorted(props)), unique=True) if props else st.just([]),
                st.booleans(),
            )
        )
        array = st.builds(
            lambda items, lo, extra: {"type": "array", "items": items, "minItems": lo, "maxItems": lo + extra},
            children, st.integers(0, 3), st.integers(0, 2),
        )
        any_of = st.lists(children, min_size=1, max_size=3).map(lambda opts: {"anyOf": [*opts, {"type": "null"}]})
        return st.one_of(obj, array, any_of)

    return st.recursive(_scalar(), extend, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(schema=_schema(), seed=st.integers(0, 2**32))
def test_values_always_validate_against_their_schema(schema: dict[str, Any], seed: int) -> None:
    value = value_for_schema(schema, random.Random(seed))
    assert _valid(schema, value), (schema, value)
    # Deterministic: the same seed gives the same value.
    assert value_for_schema(schema, random.Random(seed)) == value


class Address(pydantic.BaseModel):
    street: str
    zip_code: str = pydantic.Field(min_length=5, max_length=5)


class Person(pydantic.BaseModel):
    name: str
    age: int = pydantic.Field(ge=0, le=130)
    height: float = pydantic.Field(gt=0, lt=3)
    tags: list[str]
    home: Address
    others: list[Address] = []
    nickname: str | None = None
    kind: str = pydantic.Field(default="human", pattern="^[a-z]+$")


def test_pydantic_schemas_with_refs_give_values_the_model_accepts() -> None:
    schema = Person.model_json_schema()
    assert "$defs" in schema  # nested models come as local $ref
    for seed in range(50):
        value = value_for_schema(schema, random.Random(seed))
        assert _valid(schema, value)
        Person.model_validate(value)


def test_recursive_schemas_stop() -> None:
    schema = {
        "$defs": {"node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/node"}},
                           "required": ["child"]}},
        "$ref": "#/$defs/node",
    }
    value = value_for_schema(schema, random.Random(1))
    assert isinstance(value, dict)  # bounded depth, no RecursionError


TOOLS = (
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"]}}},
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"]}}},
    {"type": "function", "function": {"name": "now"}},  # no parameters at all
)


def _request(**kwargs: Any) -> ChatRequest:
    return ChatRequest(messages=(ChatMessage(role="user", content="hi"),), tools=TOOLS, **kwargs)


def test_calls_go_round_robin_with_arguments_valid_for_each_tool() -> None:
    calls = plan_tool_calls(_request(), 4, random.Random(3))
    assert [c.name for c in calls] == ["get_weather", "add", "now", "get_weather"]
    assert len({c.id for c in calls}) == 4 and all(c.id.startswith("call_") for c in calls)
    for call in calls:
        tool = next(t["function"] for t in TOOLS if t["function"]["name"] == call.name)
        schema = tool.get("parameters", {"type": "object"})
        assert _valid(schema, orjson.loads(call.arguments))
    assert plan_tool_calls(_request(), 4, random.Random(3)) == calls  # deterministic


def test_tool_choice_none_named_and_count_zero() -> None:
    rng = random.Random(0)
    assert plan_tool_calls(_request(tool_choice="none"), 2, rng) == []
    assert plan_tool_calls(_request(), 0, rng) == []
    named = {"type": "function", "function": {"name": "add"}}
    assert [c.name for c in plan_tool_calls(_request(tool_choice=named), 2, rng)] == ["add", "add"]
    assert [c.name for c in plan_tool_calls(_request(tool_choice="required"), 1, rng)] == ["get_weather"]
    serial = ChatRequest(messages=_request().messages, tools=TOOLS, openai_body={"parallel_tool_calls": False})
    assert [c.name for c in plan_tool_calls(serial, 3, rng)] == ["get_weather"]
    # Tools read from the client's body when the parsed view has none.
    body_only = ChatRequest(
        messages=(ChatMessage(role="user", content="hi"),),
        openai_body={"tools": list(TOOLS), "tool_choice": {"type": "function", "function": {"name": "now"}}},
    )
    assert [c.name for c in plan_tool_calls(body_only, 1, rng)] == ["now"]
    # The Responses API's flat tools.
    flat = ChatRequest(messages=_request().messages, tools=({"type": "function", "name": "flat"},))
    assert [c.name for c in plan_tool_calls(flat, 1, rng)] == ["flat"]


def test_a_tool_result_is_answered_in_text_that_quotes_it() -> None:
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city":"Paris"}')
    messages = (
        ChatMessage(role="user", content="weather?"),
        ChatMessage(role="assistant", content=None, tool_calls=(call,)),
        ChatMessage(role="tool", content='{"temp": 21, "sky": "clear"}', tool_call_id="call_1"),
    )
    request = ChatRequest(messages=messages, tools=TOOLS)
    assert plan_tool_calls(request, 1, random.Random(0)) == []
    reply = tool_results_reply(messages)
    assert "get_weather" in reply and '{"temp": 21, "sky": "clear"}' in reply


def test_argument_fragments_join_back_and_response_formats() -> None:
    text = '{"city":"Paris, France","n":[1,2]}'
    pieces = argument_fragments(text)
    assert "".join(pieces) == text and len(pieces) > 5
    assert response_format_schema({"response_format": {"type": "text"}}) is None
    assert response_format_schema({"response_format": {"type": "json_object"}}) is not None
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert response_format_schema({"response_format": fmt}) == schema
    assert response_format_schema({"text": {"format": {"type": "json_schema", "schema": schema}}}) == schema


def test_a_schemas_examples_are_what_the_mock_answers() -> None:
    # The example tools give examples so that the built-in mock calls them with sensible
    # arguments ("Paris", not a filler word).
    schema = {"type": "string", "examples": ["Paris", "Oslo"]}
    seen = {value_for_schema(schema, random.Random(seed)) for seed in range(20)}
    assert seen == {"Paris", "Oslo"}
    assert value_for_schema({"type": "string", "default": "Lima", "examples": ["Paris"]}, random.Random(0)) == "Lima"
