"""The /v1 routes over the in-process mock, driven over ASGI on the autojump clock.

The built-in mock's answers carry their wire bytes, so they take the same relay path as a real
upstream's: chunks as written, the usage chunk only when asked for, tool calls as the native
format's ``tool_call`` events, relayed routes byte for byte.
"""

from __future__ import annotations

import orjson
import trio
import trio.testing

from tests._asgi import Exchange, request
from trio_agent.config import MockLLMConfig, ServerConfig
from trio_agent.llm import MockLLM
from trio_agent.server import Gateway, create_app

TOOLS = [
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}},
]  # fmt: skip
ASK = [{"role": "user", "content": "add two numbers"}]


def gateway(**mock: object) -> tuple[Gateway, MockLLM]:
    llm = MockLLM(MockLLMConfig(ttft=0.1, itl=0.01, tokens=4, tool_calls=2), **mock)
    return create_app(ServerConfig(), backend=llm), llm


def frames(body: bytes) -> list[bytes]:
    return [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]


def assert_idle(gw: Gateway, llm: MockLLM) -> None:
    stats = gw.limits.statistics()
    assert (stats.in_flight, stats.queued) == (0, 0)
    assert llm.statistics().active == 0 and gw.drain.active == 0


async def test_streamed_chunks_are_the_mocks_bytes_and_usage_only_when_asked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = gateway()
    body = {"messages": ASK, "tools": TOOLS, "stream": True}
    plain = await request(gw, "POST", "/v1/chat/completions", json=body)
    asked = await request(gw, "POST", "/v1/chat/completions",
                          json={**body, "stream_options": {"include_usage": True}})
    for r in (plain, asked):
        assert r.status == 200 and frames(r.body)[-1] == b"[DONE]"
    plain_chunks = [orjson.loads(f) for f in frames(plain.body)[:-1]]
    asked_chunks = [orjson.loads(f) for f in frames(asked.body)[:-1]]
    assert all(c["choices"] for c in plain_chunks)  # no usage-only chunk
    assert asked_chunks[-1]["choices"] == [] and asked_chunks[-1]["usage"]["completion_tokens"] > 0
    deltas = [c["choices"][0]["delta"] for c in plain_chunks]
    heads = [d["tool_calls"][0] for d in deltas if d.get("tool_calls") and "id" in d["tool_calls"][0]]
    assert [(h["index"], h["function"]["name"]) for h in heads] == [(0, "add"), (1, "add")]
    assert plain_chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert_idle(gw, llm)


async def test_a_whole_answer_is_the_mocks_json(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = gateway()
    r = await request(gw, "POST", "/v1/chat/completions", json={"messages": ASK, "tools": TOOLS})
    answer = r.json()
    assert r.status == 200 and answer["object"] == "chat.completion"
    message = answer["choices"][0]["message"]
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["add", "add"]
    assert message["refusal"] is None and answer["choices"][0]["finish_reason"] == "tool_calls"
    assert_idle(gw, llm)


async def test_the_native_stream_emits_one_tool_call_event_per_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = gateway()
    r = await request(gw, "POST", "/chat/stream", json={"messages": ASK, "tools": TOOLS, "tool_choice": "required"})
    kinds = [e.event for e in r.events]
    assert kinds == ["thinking", "tool_call", "tool_call", "done"]
    calls = [orjson.loads(e.data) for e in r.events if e.event == "tool_call"]
    assert all(set(orjson.loads(c["arguments"])) == {"a", "b"} for c in calls)
    assert len({c["id"] for c in calls}) == 2
    assert orjson.loads(r.events[-1].data)["finish_reason"] == "tool_calls"
    bad = await request(gw, "POST", "/chat/stream", json={"question": "q", "tools": [{"type": "function"}]})
    assert bad.status == 422 and bad.json()["error"]["field"] == "tools.0.function"
    assert_idle(gw, llm)


async def test_relayed_routes_answer_through_admission(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = gateway()
    emb = await request(gw, "POST", "/v1/embeddings", json={"input": ["a", "b"], "dimensions": 4})
    assert emb.status == 200 and [len(d["embedding"]) for d in emb.json()["data"]] == [4, 4]
    assert emb.json()["model"] == "mock-llm"  # the default model filled in
    resp = await request(gw, "POST", "/v1/responses", json={"input": "hello", "stream": True})
    assert resp.status == 200 and resp.events[0].event == "response.created"
    assert resp.events[-1].event == "response.completed"
    refused = await request(gw, "POST", "/v1/completions", json={"prompt": 5})
    assert refused.status == 400 and refused.json()["error"]["param"] == "prompt"  # the upstream's 400
    bad = await request(gw, "POST", "/v1/embeddings", json={"input": "a", "stream": "no"})
    assert bad.status == 400 and bad.json()["error"]["code"] == "invalid_type"
    missing = await request(gw, "POST", "/v1/audio/speech", json={})
    assert missing.status == 404 and missing.json()["error"]["message"] == "Invalid URL (POST /v1/audio/speech)"
    metrics = (await request(gw, "GET", "/metrics")).body.decode()
    assert 'trio_agent_responses_total{route="/v1/embeddings",status="200"} 1' in metrics
    assert 'trio_agent_usage_tokens_total{route="/v1/responses",kind="completion"}' in metrics
    assert gw.limits.statistics().admitted == 3
    assert_idle(gw, llm)


async def test_a_relay_failing_mid_stream_ends_with_one_error_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gw, llm = gateway(fail_after_tokens=2)
    r = await request(gw, "POST", "/v1/completions", json={"prompt": "say", "stream": True})
    assert r.status == 200
    assert r.events[-1].event == "message" and "error" in orjson.loads(r.events[-1].data)
    assert b"[DONE]" not in r.body
    r = await request(gw, "POST", "/v1/responses", json={"input": "say", "stream": True})
    assert r.events[-1].event == "error"
    event = orjson.loads(r.events[-1].data)
    assert event["type"] == "error" and event["code"] == event["error"]["code"] == "upstream_stream_error"
    assert_idle(gw, llm)


async def test_refusals_of_whole_and_relayed_calls_are_openai_errors(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(MockLLMConfig(ttft=5.0, itl=0.01, tokens=4))
    gw = create_app(ServerConfig(api_keys=frozenset({"k"}), per_key_max_concurrency=1), backend=llm)
    auth = {"authorization": "Bearer k"}
    async with trio.open_nursery() as nursery:
        held = Exchange(gw, "POST", "/v1/embeddings", json={"input": "x"}, headers=auth).start(nursery)
        await trio.testing.wait_all_tasks_blocked()
        whole = await request(gw, "POST", "/v1/chat/completions", json={"messages": ASK}, headers=auth)
        relayed = await request(gw, "POST", "/v1/responses", json={"input": "x"}, headers=auth)
        await held.finished.wait()
    for r in (whole, relayed):
        assert r.status == 429 and "retry-after" in r.headers
        assert r.json()["error"]["type"] == "rate_limit_error" and r.json()["error"]["code"] == "rate_limited"
    assert_idle(gw, llm)
