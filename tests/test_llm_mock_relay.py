"""MockLLM.open_relay: embeddings, completions and the Responses API as OpenAI-shaped bytes."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import orjson
import pytest
import trio

from trio_agent.llm import MockLLM, Relay
from trio_agent.sse import SSEDecoder


async def relay_json(llm: MockLLM, path: str, body: dict[str, Any]) -> tuple[Relay, Any]:
    async with llm.open_relay(path, orjson.dumps(body), stream=False) as relay:
        assert not relay.streaming
        return relay, orjson.loads(relay.body)


async def relay_events(llm: MockLLM, path: str, body: dict[str, Any]) -> tuple[Relay, list[tuple[str, str]], list[float]]:
    decoder = SSEDecoder()
    events, times = [], []
    async with llm.open_relay(path, orjson.dumps(body), stream=True) as relay:
        assert relay.streaming and relay.content_type.startswith("text/event-stream")
        async for data in relay:
            assert data.endswith(b"\n\n")  # whole events only
            times.append(trio.current_time())
            events.extend((e.event, e.data) for e in decoder.feed(data))
    return relay, events, times


async def test_embeddings_are_deterministic_unit_vectors(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0.05)
    relay, doc = await relay_json(llm, "/embeddings", {"model": "emb", "input": ["a cat", "a dog", "a cat"]})
    assert relay.status == 200 and relay.content_type == "application/json"
    assert trio.current_time() == pytest.approx(0.05)
    vectors = [d["embedding"] for d in doc["data"]]
    assert [d["index"] for d in doc["data"]] == [0, 1, 2] and doc["model"] == "emb"
    assert len(vectors[0]) == 1536 and vectors[0] == vectors[2] != vectors[1]
    assert math.isclose(sum(v * v for v in vectors[1]), 1.0, rel_tol=1e-9)
    assert relay.usage is not None and relay.usage.prompt_tokens == 6
    # Another mock, another seed: the same text, the same vector; base64 as float32.
    _, small = await relay_json(MockLLM(seed=9, ttft=0), "/v1/embeddings",
                                {"input": "a cat", "dimensions": 8, "encoding_format": "base64"})
    packed = base64.b64decode(small["data"][0]["embedding"])
    floats = struct.unpack("<8f", packed)
    _, plain = await relay_json(llm, "/embeddings", {"input": "a cat", "dimensions": 8})
    assert floats == pytest.approx(plain["data"][0]["embedding"], rel=1e-6)


async def test_completions_whole_and_streamed(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0.1, itl=0.01, tokens=4)
    relay, doc = await relay_json(llm, "/completions", {"model": "m", "prompt": "say", "max_tokens": 3})
    assert doc["object"] == "text_completion" and doc["choices"][0]["finish_reason"] == "length"
    assert len(doc["choices"][0]["text"].split()) == 3 and doc["usage"]["completion_tokens"] == 3
    body = {"prompt": "say", "stream": True, "stream_options": {"include_usage": True}}
    start = trio.current_time()
    relay, events, times = await relay_events(llm, "/completions", body)
    datas = [d for _, d in events]
    assert datas[-1] == "[DONE]"
    chunks = [orjson.loads(d) for d in datas[:-1]]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 4 + ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert relay.usage is not None and relay.usage.completion_tokens == 4
    # The relay opens with its first event (ttft); the rest follow at the token pacing.
    assert relay.first_byte_at == times[0] == pytest.approx(start + 0.1)
    assert times[-1] == pytest.approx(start + 0.13)


async def test_responses_stream_named_events_with_text(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0.1, itl=0.01, tokens=3)
    relay, events, _ = await relay_events(llm, "/responses", {"model": "m", "input": "hello", "stream": True})
    names = [name for name, _ in events]
    assert names[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert names.count("response.output_text.delta") == 3
    assert names[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    docs = [orjson.loads(d) for _, d in events]
    assert [d["type"] for d in docs] == names
    assert [d["sequence_number"] for d in docs] == list(range(len(docs)))
    text = "".join(d["delta"] for d in docs if d["type"] == "response.output_text.delta")
    completed = docs[-1]["response"]
    assert completed["status"] == "completed"
    assert completed["output"][0]["content"][0]["text"] == text
    assert relay.usage is not None and relay.usage.completion_tokens == 3


async def test_responses_function_calls_and_outputs(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0, itl=0, tool_calls=2)
    tool = {"type": "function", "name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}
    _, events, _ = await relay_events(llm, "/responses", {"input": "find", "tools": [tool], "stream": True})
    docs = [orjson.loads(d) for _, d in events]
    done = [d["item"] for d in docs if d["type"] == "response.output_item.done"]
    assert [(i["type"], i["name"], i["status"]) for i in done] == [("function_call", "lookup", "completed")] * 2
    for item in done:
        deltas = "".join(d["delta"] for d in docs if d["type"] == "response.function_call_arguments.delta"
                         and d["item_id"] == item["id"])
        assert deltas == item["arguments"] and "q" in orjson.loads(item["arguments"])
    # The function's output sent back is answered in text, quoting it.
    follow = {"input": [
        {"role": "user", "content": "find"},
        {"type": "function_call", "call_id": done[0]["call_id"], "name": "lookup", "arguments": done[0]["arguments"]},
        {"type": "function_call_output", "call_id": done[0]["call_id"], "output": "found 3 rows"},
    ], "tools": [tool]}
    _, doc = await relay_json(llm, "/responses", follow)
    assert doc["object"] == "response" and doc["status"] == "completed"
    assert [o["type"] for o in doc["output"]] == ["message"]
    assert "lookup returned found 3 rows" in doc["output"][0]["content"][0]["text"]


async def test_bad_bodies_and_paths_get_openai_errors(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0)
    cases = [
        ("/embeddings", b"{", 400, None),
        ("/embeddings", b'{"input": 5}', 400, "input"),
        ("/embeddings", b'{"input": "x", "dimensions": 0}', 400, "dimensions"),
        ("/completions", b'{"prompt": "x", "max_tokens": -1}', 400, "max_tokens"),
        ("/responses", b'{"input": 3}', 400, "input"),
        ("/responses", b"[]", 400, None),
        ("/images/generations", b"{}", 404, None),
    ]
    for path, body, status, param in cases:
        async with llm.open_relay(path, body, stream=False) as relay:
            assert relay.status == status, (path, body)
            error = orjson.loads(relay.body)["error"]
            assert error["param"] == param and error["message"]
            assert set(error) == {"message", "type", "param", "code"}
    assert llm.statistics().active == 0


async def test_leaving_a_relayed_stream_early_cancels_its_chat_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    llm = MockLLM(pacing_resolution=0, ttft=0, itl=0.01, tokens=50)
    async with llm.open_relay("/responses", b'{"input": "x", "stream": true}', stream=True) as relay:
        seen = 0
        async for _ in relay:
            seen += 1
            if seen == 3:  # response.created, then the first deltas: the chat stream is open
                break
    s = llm.statistics()
    assert (s.active, s.cancelled) == (0, 1)
