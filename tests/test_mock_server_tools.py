"""The mock LLM server's tool calls, other OpenAI routes, /mock/last-request and faults on them.

In-process on a real Hypercorn at 127.0.0.1:0, over httpx; the official ``openai`` package
drives a ``trio-agent mock-llm`` subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pydantic
import pytest
import trio

from tests._mock_server import serving_mock_llm
from trio_agent.config import MockLLMConfig, MockServerConfig
from trio_agent.mock_server import MockServerApp
from trio_agent.sse import SSEDecoder

pytestmark = pytest.mark.e2e

LLM = MockLLMConfig(ttft=0.0, itl=0.001, tokens=6, seed=1)
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@asynccontextmanager
async def running(llm: MockLLMConfig = LLM) -> AsyncIterator[tuple[httpx.AsyncClient, MockServerApp]]:
    config = MockServerConfig(port=0, llm=llm, drain_timeout=0.2)
    app = MockServerApp(config)
    async with serving_mock_llm(config, app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            yield client, app


def events(raw: bytes) -> list[tuple[str, str]]:
    return [(e.event, e.data) for e in SSEDecoder().feed(raw)]


async def test_streamed_and_whole_tool_calls() -> None:
    with trio.fail_after(10):
        async with running() as (client, app):
            body = {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER], "stream": True}
            response = await client.post("/v1/chat/completions", json=body)
            datas = [d for _, d in events(response.content)]
            assert datas[-1] == "[DONE]"
            chunks = [orjson.loads(d) for d in datas[:-1]]
            deltas = [c["choices"][0]["delta"] for c in chunks]
            assert deltas[0]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
            assert deltas[0]["tool_calls"][0]["id"].startswith("call_")
            arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas if "tool_calls" in d)
            assert "city" in orjson.loads(arguments)
            assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
            assert all("usage" not in c for c in chunks)  # not asked for
            whole = (await client.post("/v1/chat/completions", json={**body, "stream": False})).json()
            message = whole["choices"][0]["message"]
            assert message["content"] is None and whole["choices"][0]["finish_reason"] == "tool_calls"
            assert "city" in orjson.loads(message["tool_calls"][0]["function"]["arguments"])
            assert app.statistics().completed == 2


async def test_last_request_returns_the_body_byte_for_byte_and_unknown_paths_are_json_404() -> None:
    with trio.fail_after(10):
        async with running() as (client, _):
            assert (await client.get("/mock/last-request")).status_code == 404
            raw = b'{ "messages" : [{"role":"user","content":"\\u00e9t\\u00e9"}],\n "x_new": [1.50, 2e3] }'
            assert (await client.post("/v1/chat/completions", content=raw)).status_code == 200
            got = await client.get("/mock/last-request")
            assert got.status_code == 200 and got.content == raw
            emb = b'{"input": "abc", "dimensions": 3}'
            assert (await client.post("/v1/embeddings", content=emb)).status_code == 200
            assert (await client.get("/mock/last-request")).content == emb
            for method, path in [("POST", "/v1/images/generations"), ("GET", "/v1/nope"), ("GET", "/other")]:
                response = await client.request(method, path)
                assert response.status_code == 404
                assert response.headers["content-type"] == "application/json"
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            assert (await client.get("/v1/embeddings")).status_code == 405


async def test_embeddings_completions_and_responses_routes() -> None:
    with trio.fail_after(10):
        async with running() as (client, app):
            emb = (await client.post("/v1/embeddings", json={"input": ["x", "y"], "dimensions": 5})).json()
            assert [len(d["embedding"]) for d in emb["data"]] == [5, 5]
            again = (await client.post("/v1/embeddings", json={"input": "x", "dimensions": 5})).json()
            assert again["data"][0]["embedding"] == emb["data"][0]["embedding"]
            done = (await client.post("/v1/completions", json={"prompt": "p", "max_tokens": 2})).json()
            assert done["object"] == "text_completion" and done["usage"]["completion_tokens"] == 2
            streamed = await client.post("/v1/completions", json={"prompt": "p", "stream": True})
            assert streamed.headers["content-type"].startswith("text/event-stream")
            assert [d for _, d in events(streamed.content)][-1] == "[DONE]"
            response = await client.post("/v1/responses", json={"input": "hi", "stream": True})
            names = [n for n, _ in events(response.content)]
            assert names[0] == "response.created" and names[-1] == "response.completed"
            whole = (await client.post("/v1/responses", json={"input": "hi"})).json()
            assert whole["object"] == "response" and whole["output"][0]["type"] == "message"
            bad = await client.post("/v1/responses", json={"input": 5})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
            assert app.statistics().requests == 7


async def test_faults_on_the_relayed_routes() -> None:
    with trio.fail_after(10):
        async with running() as (client, app):
            body = {"input": "hi", "stream": True}
            refused = await client.post("/v1/responses", json=body, headers={"X-Mock-Fault": "503"})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "service_unavailable"
            cut = await client.post("/v1/embeddings", json={"input": "x"}, headers={"X-Mock-Fault": "500"})
            assert cut.status_code == 500
            # error-after=N: N event batches, then an error event.
            failed = await client.post("/v1/responses", json=body, headers={"X-Mock-Fault": "error-after=2"})
            datas = [d for _, d in events(failed.content)]
            assert "error" in orjson.loads(datas[-1]) and len(datas) > 2
            # drop-after=N: the connection is cut mid-stream.
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post("/v1/completions", json={"prompt": "p", "stream": True},
                                  headers={"X-Mock-Fault": "drop-after=2"})
            s = await app.wait_until(lambda s: s.active == 0)
            assert s.faults == 4 and s.completed == 0


# -- the official openai package against `trio-agent mock-llm` ------------------------------


@pytest.fixture(scope="module")
def mock_llm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_agent", "mock-llm", "--port", "0", "--ttft", "0.01", "--itl", "0.001",
         "--tokens", "12", "--mock-tool-calls", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "mock LLM listening on http://127.0.0.1:PORT"
        assert "listening on" in line, proc.stderr.read() if proc.stderr else line
        yield line.split()[-1] + "/v1"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # waits, and closes the pipes


TOOLS: list[Any] = [
    WEATHER,
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"], "additionalProperties": False}}},
]


def client_for(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=10)


def test_openai_client_accumulates_streamed_tool_calls_as_the_whole_answer(mock_llm_url: str) -> None:
    with client_for(mock_llm_url) as client:
        _tool_calls(client)


def _tool_calls(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "weather and a sum"}]
    with client.chat.completions.stream(model="m", messages=messages, tools=TOOLS) as stream:
        for _ in stream:
            pass
        streamed = stream.get_final_completion()
    whole = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    calls = streamed.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "add"]  # type: ignore[union-attr]
    assert streamed.choices[0].finish_reason == whole.choices[0].finish_reason == "tool_calls"
    assert set(json.loads(calls[1].function.arguments)) == {"a", "b"}  # type: ignore[union-attr]
    # Named tool_choice and "none".
    named = client.chat.completions.create(
        model="m", messages=messages, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "add"}})
    assert [c.function.name for c in named.choices[0].message.tool_calls or []] == ["add", "add"]  # type: ignore[union-attr]
    none = client.chat.completions.create(model="m", messages=messages, tools=TOOLS, tool_choice="none")
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content


class Forecast(pydantic.BaseModel):
    city: str
    days: list[int]
    sunny: bool


def test_openai_client_parse_embeddings_and_responses_streaming(mock_llm_url: str) -> None:
    with client_for(mock_llm_url) as client:
        _parse_embeddings_responses(client)


def _parse_embeddings_responses(client: openai.OpenAI) -> None:
    parsed = client.chat.completions.parse(
        model="m", messages=[{"role": "user", "content": "forecast"}], response_format=Forecast)
    assert isinstance(parsed.choices[0].message.parsed, Forecast)
    emb = client.embeddings.create(model="e", input=["alpha", "beta"])  # base64 on the wire
    plain = client.embeddings.create(model="e", input="alpha", encoding_format="float")
    assert len(emb.data) == 2 and emb.data[0].embedding == pytest.approx(plain.data[0].embedding, rel=1e-6)
    with client.responses.stream(model="m", input="hello") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and final.output_text
    tool = {"type": "function", "name": "add", "parameters": TOOLS[1]["function"]["parameters"]}
    called = client.responses.create(model="m", input="sum", tools=[tool])  # type: ignore[list-item]
    assert [(o.type, getattr(o, "name", None)) for o in called.output] == [("function_call", "add")] * 2


def test_cli_mock_script_replays_its_turns(tmp_path: Path) -> None:
    script = tmp_path / "turns.jsonl"
    script.write_text(json.dumps({"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}],
                                  "quirks": ["one-delta"]}) + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_agent", "mock-llm", "--port", "0", "--ttft", "0", "--itl", "0",
         "--mock-script", str(script)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1] + "/v1"
        with client_for(url) as client:
            for _ in range(2):  # the one turn, replayed again
                answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
                call = (answer.choices[0].message.tool_calls or [])[0]
                assert (call.function.name, call.function.arguments) == ("add", '{"a":1,"b":2}')  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # waits, and closes the pipes
