"""ToolCallAssembler: whole calls out of any fragmentation, each as early as it can be known."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_agent.errors import UpstreamProtocolError
from trio_agent.llm import ChatChunk, ToolCall, ToolCallAssembler, ToolCallDelta

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_arguments = st.dictionaries(st.text(max_size=6), _json_values, max_size=4)


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(text)]:
        pieces.append(text[last:p])
        last = p
    return [p for p in pieces if p] or [""]


@st.composite
def _streams(draw: st.DrawFn) -> tuple[list[ToolCall], list[ChatChunk]]:
    n = draw(st.integers(min_value=1, max_value=4))
    calls = [
        ToolCall(
            id=f"call_{draw(st.uuids()).hex[:8]}_{i}",
            name=draw(st.sampled_from(["get_weather", "calculate", "t"])),
            arguments=json.dumps(draw(_arguments), indent=draw(st.sampled_from([None, 1]))),
        )
        for i in range(n)
    ]
    all_at_zero = draw(st.booleans())  # the quirk: every call at index 0, told apart by id
    deltas: list[ToolCallDelta] = []
    for i, call in enumerate(calls):
        index = 0 if all_at_zero else i
        pieces = _split(call.arguments, draw(st.lists(st.integers(0, 10_000), max_size=6)))
        in_first = draw(st.booleans())  # the quirk: all arguments in the first delta
        if in_first:
            deltas.append(ToolCallDelta(index=index, id=call.id, name=call.name, arguments=call.arguments))
            continue
        deltas.append(ToolCallDelta(index=index, id=call.id, name=call.name))
        repeat_id = draw(st.booleans())  # some servers repeat the id on every piece
        for piece in pieces:
            deltas.append(ToolCallDelta(index=index, id=call.id if repeat_id else None, arguments=piece))
    # Group the deltas into chunks of any size; the last chunk carries the finish.
    sizes = draw(st.lists(st.integers(1, 4), min_size=len(deltas), max_size=len(deltas)))
    chunks, pos = [], 0
    for size in sizes:
        if pos >= len(deltas):
            break
        chunks.append(ChatChunk(tool_calls=tuple(deltas[pos : pos + size])))
        pos += size
    chunks.append(ChatChunk(finish_reason="tool_calls"))
    return calls, chunks


@given(_streams())
@settings(max_examples=300, deadline=None)
def test_any_fragmentation_gives_the_same_calls(stream: tuple[list[ToolCall], list[ChatChunk]]) -> None:
    calls, chunks = stream
    assembler = ToolCallAssembler()
    seen: list[ToolCall] = []
    for chunk in chunks:
        seen.extend(assembler.feed(chunk))
    seen.extend(assembler.finish())
    assert [(c.id, c.name, json.loads(c.arguments)) for c in seen] == [
        (c.id, c.name, json.loads(c.arguments)) for c in calls
    ]
    assert assembler.calls == tuple(seen)


@given(_streams())
@settings(max_examples=200, deadline=None)
def test_each_call_is_reported_when_its_arguments_close(stream: tuple[list[ToolCall], list[ChatChunk]]) -> None:
    # Every arguments text here is a JSON object, so a call is reported by the chunk that
    # carries its last argument piece, never later: delta by delta, the number reported
    # equals the number of calls whose last piece has been seen.
    calls, chunks = stream
    assembler = ToolCallAssembler()
    text: dict[str, str] = {}
    current: str | None = None
    reported = 0
    for chunk in chunks[:-1]:
        for delta in chunk.tool_calls:
            if delta.id is not None:
                current = delta.id
            assert current is not None
            text[current] = text.get(current, "") + delta.arguments
            reported += len(assembler.feed(ChatChunk(tool_calls=(delta,))))
            complete = sum(1 for c in calls if text.get(c.id) == c.arguments)
            assert reported == complete
    assert reported == len(calls)


def test_one_delta_with_all_arguments_is_reported_at_once() -> None:
    assembler = ToolCallAssembler()
    delta = ToolCallDelta(index=0, id="a", name="f", arguments='{"x": 1}')
    assert assembler.feed(ChatChunk(tool_calls=(delta,))) == [ToolCall(id="a", name="f", arguments='{"x": 1}')]
    assert assembler.feed(ChatChunk(finish_reason="tool_calls")) == []


def test_arguments_that_are_not_an_object_complete_at_the_next_call_or_the_finish() -> None:
    assembler = ToolCallAssembler()
    first = ToolCallDelta(index=0, id="a", name="f", arguments="not json")
    assert assembler.feed(ChatChunk(tool_calls=(first,))) == []
    second = ToolCallDelta(index=1, id="b", name="g", arguments="")
    assert assembler.feed(ChatChunk(tool_calls=(second,))) == [ToolCall(id="a", name="f", arguments="not json")]
    assert assembler.finish() == [ToolCall(id="b", name="g", arguments="")]
    assert assembler.finish() == []


def test_a_brace_inside_a_string_does_not_close_the_object() -> None:
    assembler = ToolCallAssembler()
    pieces = ['{"s": "}', '\\"}', '"}']
    out = [assembler.feed(ChatChunk(tool_calls=(ToolCallDelta(index=0, id="a" if i == 0 else None, name="f" if i == 0 else None, arguments=p),))) for i, p in enumerate(pieces)]
    assert out[:2] == [[], []]
    assert out[2] == [ToolCall(id="a", name="f", arguments='{"s": "}\\"}"}')]


def test_missing_ids_are_numbered() -> None:
    assembler = ToolCallAssembler()
    chunk = ChatChunk(
        tool_calls=(
            ToolCallDelta(index=0, name="f", arguments="{}"),
            ToolCallDelta(index=1, name="g", arguments="{}"),
        ),
        finish_reason="tool_calls",
    )
    assert [c.id for c in assembler.feed(chunk)] == ["call_0", "call_1"]


def test_text_after_a_closed_call_is_a_protocol_error() -> None:
    assembler = ToolCallAssembler()
    assembler.feed(ChatChunk(tool_calls=(ToolCallDelta(index=0, id="a", name="f", arguments="{}"),)))
    assembler.feed(ChatChunk(tool_calls=(ToolCallDelta(index=0, arguments=" \n"),)))
    with pytest.raises(UpstreamProtocolError):
        assembler.feed(ChatChunk(tool_calls=(ToolCallDelta(index=0, arguments='{"x": 1}'),)))
