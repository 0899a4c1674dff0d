"""MockLLM answering with tool calls: OpenAI's streamed shape, pacing, raw JSON, scripts and quirks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest
import trio

from trio_agent.errors import ConfigError
from trio_agent.llm import ChatChunk, ChatMessage, ChatRequest, MockLLM, ToolCall
from trio_agent.llm._mock_script import parse_script

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"]}}}
HI = (ChatMessage(role="user", content="hi"),)


async def collect(llm: MockLLM, request: ChatRequest) -> list[tuple[float, ChatChunk]]:
    out = []
    async with llm.stream_chat(request) as chunks:
        async for chunk in chunks:
            out.append((trio.current_time(), chunk))
    return out


def accumulate(chunks: list[ChatChunk]) -> list[dict[str, str]]:
    """A test-local accumulation, as OpenAI's clients do it: by index; a new id starts a call."""
    calls: list[dict[str, str]] = []
    by_index: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for d in chunk.tool_calls:
            call = by_index.get(d.index)
            if call is None or (d.id is not None and d.id != call["id"]):
                call = by_index[d.index] = {"id": d.id or "", "name": d.name or "", "arguments": ""}
                calls.append(call)
            call["arguments"] += d.arguments
    return calls


def raw_objects(chunks: list[ChatChunk]) -> list[dict[str, Any]]:
    assert all(c.raw is not None for c in chunks)
    return [orjson.loads(c.raw) for c in chunks if c.raw is not None]


async def test_tool_calls_stream_as_openai_streams_them(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0.5, itl=0.01, tool_calls=2, seed=3)
    request = ChatRequest(messages=HI, tools=(WEATHER, ADD))
    got = await collect(llm, request)
    chunks = [c for _, c in got]
    objs = raw_objects(chunks)
    # The first delta of each call: index, id, type, name, empty arguments (role on the very first).
    heads = [o["choices"][0]["delta"] for o in objs if o["choices"] and "id" in
             (o["choices"][0]["delta"].get("tool_calls") or [{}])[0]]
    assert heads[0]["role"] == "assistant" and heads[0]["content"] is None
    assert [h["tool_calls"][0]["index"] for h in heads] == [0, 1]
    assert [h["tool_calls"][0]["type"] for h in heads] == ["function", "function"]
    assert [h["tool_calls"][0]["function"] for h in heads] == [
        {"name": "get_weather", "arguments": ""}, {"name": "add", "arguments": ""}]
    calls = accumulate(chunks)
    assert [c["name"] for c in calls] == ["get_weather", "add"]
    assert set(orjson.loads(calls[1]["arguments"])) == {"a", "b"}
    # Each chunk's own fields match its raw JSON.
    for chunk, obj in zip(chunks, objs, strict=True):
        if obj["choices"]:
            assert obj["choices"][0]["finish_reason"] == chunk.finish_reason
            wire = obj["choices"][0]["delta"].get("tool_calls") or []
            assert [w.get("function", {}).get("arguments", "") for w in wire] == [d.arguments for d in chunk.tool_calls]
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]
    assert chunks[-1].usage is not None and objs[-1]["choices"] == []
    # Paced like tokens: unit i at ttft + i * itl.
    times = [round(t, 9) for t, c in got if c.tool_calls]
    assert times == [round(0.5 + i * 0.01, 9) for i in range(len(times))]
    # The same seed gives the same calls; complete_chat gives them whole, with its JSON.
    again = MockLLM(pacing_resolution=0, ttft=0.5, itl=0.01, tool_calls=2, seed=3)
    done = await again.complete_chat(request)
    assert [(c.name, c.arguments, c.id) for c in done.tool_calls] == [
        (c["name"], c["arguments"], c["id"]) for c in calls]
    assert done.finish_reason == "tool_calls" and done.raw is not None
    message = orjson.loads(done.raw)["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"][0]["function"]["name"] == "get_weather"


async def test_tool_choice_none_and_tool_results_get_text(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0, itl=0, tool_calls=1)
    got = await collect(llm, ChatRequest(messages=HI, tools=(WEATHER,), tool_choice="none"))
    assert all(not c.tool_calls for _, c in got) and [c.finish_reason for _, c in got if c.finish_reason] == ["stop"]
    call = ToolCall(id="call_9", name="get_weather", arguments='{"city":"Oslo"}')
    after = (*HI, ChatMessage(role="assistant", content=None, tool_calls=(call,)),
             ChatMessage(role="tool", content="snow, -3 C", tool_call_id="call_9"))
    done = await llm.complete_chat(ChatRequest(messages=after, tools=(WEATHER,)))
    assert not done.tool_calls and "get_weather returned snow, -3 C" in done.content
    assert done.finish_reason == "stop"
    assert MockLLM(tool_calls=0).config.tool_calls == 0
    done = await MockLLM(pacing_resolution=0, ttft=0, itl=0, tool_calls=0).complete_chat(
        ChatRequest(messages=HI, tools=(WEATHER,)))
    assert not done.tool_calls and done.content


class Answer(pydantic.BaseModel):
    title: str
    score: int = pydantic.Field(ge=1, le=5)
    tags: list[str]


async def test_json_response_format_gets_json_for_its_schema(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0, itl=0.01)
    body = {"messages": [{"role": "user", "content": "hi"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "Answer", "schema": Answer.model_json_schema()}}}
    done = await llm.complete_chat(ChatRequest(messages=HI, openai_body=body))
    Answer.model_validate_json(done.content)
    assert done.finish_reason == "stop"


async def test_include_usage_adds_usage_null_as_openai_does(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0, itl=0, tokens=3)
    body = {"messages": [], "stream_options": {"include_usage": True}}
    with_usage = raw_objects([c for _, c in await collect(llm, ChatRequest(messages=HI, openai_body=body))])
    assert all(o["usage"] is None for o in with_usage[:-1]) and with_usage[-1]["usage"]["completion_tokens"] == 3
    plain = raw_objects([c for _, c in await collect(llm, ChatRequest(messages=HI))])
    assert all("usage" not in o for o in plain[:-1])
    assert [o["choices"][0]["delta"] for o in plain[:2]] == [{"role": "assistant", "content": ""}, {"content": plain[1]["choices"][0]["delta"]["content"]}]


# -- script mode -----------------------------------------------------------------------------

QUIRKY = [
    # Every call at index 0, told apart by id; all arguments in the first delta.
    {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [
        {"index": 0, "delta": {"role": "assistant", "tool_calls": [{"index": 0, "id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]}, "finish_reason": None}]},
    {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [
        {"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_b", "type": "function",
         "function": {"name": "add", "arguments": "{\"a\":1,"}}]}, "finish_reason": None}]},
    {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [
        {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"b\":2}"}}]},
         "finish_reason": None}]},
    {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [
        {"index": 0, "delta": {}, "finish_reason": "tool_calls"}], "x_vendor": {"kept": True}},
]


def write_script(tmp_path: Path, *turns: Any) -> str:
    path = tmp_path / "script.jsonl"
    path.write_bytes(b"# a comment\n" + b"\n".join(orjson.dumps(t) for t in turns) + b"\n")
    return str(path)


async def test_script_replays_exact_chunks_with_their_quirks(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    script = write_script(tmp_path, QUIRKY, {"content": "Rome is sunny; 1 + 2 = 3."})
    llm = MockLLM(pacing_resolution=0, ttft=0.2, itl=0.05, script=script)
    got = await collect(llm, ChatRequest(messages=HI, tools=(WEATHER, ADD)))
    chunks = [c for _, c in got]
    assert [orjson.loads(c.raw or b"") for c in chunks] == QUIRKY  # nothing added, nothing lost
    assert [round(t, 9) for t, _ in got] == [0.2, 0.25, 0.3, 0.35]
    assert accumulate(chunks) == [
        {"id": "call_a", "name": "get_weather", "arguments": '{"city":"Rome"}'},
        {"id": "call_b", "name": "add", "arguments": '{"a":1,"b":2}'},
    ]
    # The next request gets the next turn (text, expanded the mock's way), then it starts over.
    second = await llm.complete_chat(ChatRequest(messages=HI))
    assert second.content == "Rome is sunny; 1 + 2 = 3." and second.finish_reason == "stop"
    third = await llm.complete_chat(ChatRequest(messages=HI))
    assert [(c.id, c.name, c.arguments) for c in third.tool_calls] == [
        ("call_a", "get_weather", '{"city":"Rome"}'), ("call_b", "add", '{"a":1,"b":2}')]
    assert third.finish_reason == "tool_calls"


async def test_compact_script_quirks(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    calls = [{"name": "get_weather", "arguments": {"city": "Lima"}, "id": "call_x"},
             {"name": "add", "arguments": '{"a":1,"b":2}', "id": "call_y"}]
    script = write_script(
        tmp_path,
        {"tool_calls": calls, "quirks": ["one-delta", "index-zero"]},
        {"tool_calls": calls},
    )
    llm = MockLLM(pacing_resolution=0, ttft=0, itl=0.01, script=script)
    quirky = [c for _, c in await collect(llm, ChatRequest(messages=HI))]
    deltas = [d for c in quirky for d in c.tool_calls]
    assert [(d.index, d.id, d.arguments) for d in deltas] == [
        (0, "call_x", '{"city":"Lima"}'), (0, "call_y", '{"a":1,"b":2}')]
    plain = [c for _, c in await collect(llm, ChatRequest(messages=HI))]
    deltas = [d for c in plain for d in c.tool_calls]
    assert deltas[0].arguments == "" and len(deltas) > 4
    assert {d.index for d in deltas} == {0, 1}
    assert accumulate(plain) == accumulate(quirky) == [
        {"id": "call_x", "name": "get_weather", "arguments": '{"city":"Lima"}'},
        {"id": "call_y", "name": "add", "arguments": '{"a":1,"b":2}'},
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "no turns"),
        ("{nope", "line 1: not JSON"),
        ('{"content": "x", "colour": 1}', "unknown keys"),
        ('{"tool_calls": [{"arguments": {}}]}', "string 'name'"),
        ('{"tool_calls": [], "quirks": ["sideways"]}', "'quirks'"),
        ("[1]", "chunk 0 is not an object"),
        ("7", "a turn is a list"),
    ],
)
def test_bad_scripts_are_config_errors_naming_the_line(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_script(text)


def test_a_missing_script_file_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the mock script"):
        MockLLM(script=str(tmp_path / "missing.jsonl"))
