"""The official ``openai`` package through the gateway: the faithful OpenAI pass-through.

Two ``trio-agent mock-llm`` subprocesses with the same seed answer the same
sequence of calls the same way: one is called directly, one behind a gateway
in proxy mode, so what the client accumulates through the gateway must equal,
chunk for chunk, what it gets from the mock itself. A second gateway answers
from its built-in mock (the same answers take the same relay path) and holds
the limits the error tests run into.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.test_mock_server_tools import TOOLS, _parse_embeddings_responses

pytestmark = pytest.mark.e2e

MOCK = ["--ttft", "0.01", "--itl", "0.001", "--tokens", "12", "--seed", "7", "--mock-tool-calls", "2"]
KEY = "sk-gateway"


def _start(args: list[str], marker: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_agent", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    for _ in range(50):  # bounded: the URL line comes first or not at all
        line = proc.stdout.readline()
        if marker in line:
            return proc, line.split()[line.split().index("on") + 1]
        if not line:
            break
    proc.kill()
    raise AssertionError(proc.stderr.read() if proc.stderr else "no URL printed")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.communicate(timeout=10)


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, str]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        direct, direct_url = _start(["mock-llm", "--port", "0", *MOCK], "listening on")
        procs.append(direct)
        upstream, upstream_url = _start(["mock-llm", "--port", "0", *MOCK], "listening on")
        procs.append(upstream)
        proxy, proxy_url = _start(
            ["serve", "--port", "0", "--upstream-url", f"{upstream_url}/v1", "--upstream-model", "mock-llm",
             "--api-key", KEY, "--max-loop-lag", "0", "--no-access-log"],
            "listening on",
        )
        procs.append(proxy)
        builtin, builtin_url = _start(
            ["serve", "--port", "0", "--api-key", "sk-a", "--max-body-bytes", "20000", "--max-loop-lag", "0",
             "--no-access-log", "--mock-ttft", "0.01", "--mock-itl", "0.002", "--mock-tokens", "12",
             "--mock-tool-calls", "2"],
            "listening on",
        )
        procs.append(builtin)
        # Slow answers (the first token after 60 s) and small limits, for the refusals.
        limited, limited_url = _start(
            ["serve", "--port", "0", "--api-key", "sk-a", "--api-key", "sk-b", "--api-key", "sk-c",
             "--per-key-max-concurrency", "1", "--max-concurrency", "2", "--max-queued", "0",
             "--max-loop-lag", "0", "--no-access-log", "--mock-ttft", "60"],
            "listening on",
        )
        procs.append(limited)
        yield {"direct": direct_url, "upstream": upstream_url, "proxy": proxy_url, "builtin": builtin_url,
               "limited": limited_url}
    finally:
        for proc in procs:
            _stop(proc)


def _client(base: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=10)


def _conversation(client: openai.OpenAI) -> list[Any]:
    """The same calls, in the same order: every streamed chunk and every whole answer."""
    messages: Any = [{"role": "user", "content": "weather and a sum"}]
    seen: list[Any] = []
    stream = client.chat.completions.create(model="m", messages=messages, tools=TOOLS, stream=True)
    seen.append([c.model_dump(exclude={"created"}) for c in stream])
    with client.chat.completions.stream(model="m", messages=messages, tools=TOOLS) as accumulating:
        for _ in accumulating:
            pass
        seen.append(accumulating.get_final_completion().model_dump(exclude={"created"}))
    whole = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    seen.append(whole.model_dump(exclude={"created"}))
    calls = whole.choices[0].message.tool_calls or []
    follow_up: Any = [
        *messages,
        {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]},
        *({"role": "tool", "tool_call_id": c.id, "content": "21"} for c in calls),
    ]
    answer = client.chat.completions.create(model="m", messages=follow_up, tools=TOOLS)
    seen.append(answer.model_dump(exclude={"created"}))
    return seen


def test_tool_calls_through_the_gateway_are_the_mocks_own_chunk_for_chunk(stack: dict[str, str]) -> None:
    with _client(stack["direct"]) as direct, _client(stack["proxy"], KEY) as proxied:
        expected = _conversation(direct)
        got = _conversation(proxied)
    assert got == expected
    chunks, accumulated, whole, answer = got
    deltas = [d for c in chunks if c["choices"] for d in c["choices"][0]["delta"]["tool_calls"] or []]
    assert {d["index"] for d in deltas} == {0, 1} and all(d["id"] for d in deltas if d["type"])
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["usage"] is None for c in chunks)  # the client did not ask: no usage chunk
    names = [c["function"]["name"] for c in whole["choices"][0]["message"]["tool_calls"]]
    assert names == ["get_weather", "add"]
    assert accumulated["choices"][0]["message"]["tool_calls"][1]["function"]["name"] == "add"
    assert answer["choices"][0]["finish_reason"] == "stop" and "21" in answer["choices"][0]["message"]["content"]


def test_parse_embeddings_completions_and_responses_through_both_gateways(stack: dict[str, str]) -> None:
    for base, key in ((stack["proxy"], KEY), (stack["builtin"], "sk-a")):
        with _client(base, key) as client:
            _parse_embeddings_responses(client)
            text = client.completions.create(model="m", prompt="say", max_tokens=3)
            assert text.choices[0].text and text.usage is not None and text.usage.completion_tokens == 3
            pieces = [c.choices[0].text for c in client.completions.create(model="m", prompt="say", stream=True)
                      if c.choices]
            assert "".join(pieces)


def test_a_body_with_every_documented_parameter_reaches_the_upstream_unchanged(stack: dict[str, str]) -> None:
    body: dict[str, Any] = {
        "model": "gpt-4o",
        "messages": [
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "name": "ann", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\":1,\"b\":2}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "3"},
        ],
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "add"}},
        "parallel_tool_calls": False,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "seed": 42, "top_p": 0.9, "temperature": 0.2, "stop": ["\n\n", "END"], "user": "user-1",
        "logprobs": True, "top_logprobs": 2, "presence_penalty": 0.5, "frequency_penalty": -0.5,
        "logit_bias": {"50256": -100}, "max_completion_tokens": 50, "metadata": {"run": "7"}, "store": False,
        "reasoning_effort": "low", "service_tier": "auto", "prediction": {"type": "content", "content": "3"},
        "modalities": ["text"], "audio": {"voice": "alloy", "format": "wav"},
        "stream": True, "stream_options": {"include_usage": False},
        "a_field_from_the_future": {"nested": [1, 2.5, None, "x"]},
    }
    auth = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=10) as http:
        r = http.post(f"{stack['proxy']}/v1/chat/completions", json=body, headers=auth)
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        received = http.get(f"{stack['upstream']}/mock/last-request").json()
        # The one thing the gateway owns here: it asks for usage, to count tokens.
        assert received == {**body, "stream_options": {"include_usage": True}}
        whole = {k: v for k, v in body.items() if k not in ("stream", "stream_options", "model")}
        r = http.post(f"{stack['proxy']}/v1/chat/completions", json=whole, headers=auth)
        assert r.status_code == 200 and r.json()["object"] == "chat.completion"
        received = http.get(f"{stack['upstream']}/mock/last-request").json()
        assert received == {**whole, "model": "mock-llm", "stream": False}  # the default model filled in
        metrics = http.get(f"{stack['proxy']}/metrics").text
    assert 'trio_agent_responses_total{route="/v1/chat/completions",status="200"}' in metrics
    assert 'trio_agent_usage_tokens_total{route="/v1/chat/completions",kind="completion"}' in metrics


def test_every_gateway_error_is_openai_shaped_and_the_clients_own_exception(stack: dict[str, str]) -> None:
    base = stack["builtin"]

    def refused(exc_type: type[openai.APIStatusError], call: Any) -> dict[str, Any]:
        with pytest.raises(exc_type) as info:
            call()
        body = info.value.body
        assert isinstance(body, dict) and {"message", "type", "code", "param"} <= set(body), body
        return body

    with _client(base, "sk-a") as a:
        err = refused(openai.BadRequestError, lambda: a.chat.completions.create(
            model="m", messages=[{"role": "user"}]))  # type: ignore[typeddict-item]
        assert (err["code"], err["param"]) == ("missing_required_parameter", "messages.[0].content")
        assert err["message"] == "Missing required parameter: 'messages[0].content'."
        err = refused(openai.BadRequestError, lambda: a.chat.completions.create(
            model="m", messages=[{"role": "tool", "content": "x"}]))  # type: ignore[list-item,typeddict-item]
        assert (err["code"], err["param"]) == ("missing_required_parameter", "messages.[0].tool_call_id")
        err = refused(openai.BadRequestError, lambda: a.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "function", "function": {"name": "no spaces"}}]))
        assert (err["code"], err["param"]) == ("invalid_value", "tools.[0].function.name")
        err = refused(openai.BadRequestError, lambda: a.embeddings.create(model="e", input="x", extra_body={"stream": 1}))
        assert err["code"] == "invalid_type"
        refused(openai.AuthenticationError, lambda: _client(base, "wrong").models.list())
        err = refused(openai.NotFoundError, lambda: a.models.retrieve("m"))
        assert err["message"] == "Invalid URL (GET /v1/models/m)"
        refused(openai.APIStatusError, lambda: a.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x" * 30000}]))  # 413: over max_body_bytes
    limited = stack["limited"]
    with _client(limited, "sk-a") as a, _client(limited, "sk-c") as c, httpx.Client(timeout=10) as http:

        def hold(key: str) -> Any:
            # /chat/stream sends its head once admitted: the slot is held from then on.
            held = http.stream("POST", f"{limited}/chat/stream", json={"question": "x"},
                               headers={"authorization": f"Bearer {key}"})
            response = held.__enter__()
            lines = response.iter_lines()  # kept: a collected line iterator would close the stream
            assert response.status_code == 200 and next(lines).startswith("event: thinking")
            return held, lines

        held_a = hold("sk-a")
        err = refused(openai.RateLimitError, lambda: a.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]))
        assert err["code"] == "rate_limited"
        held_b = hold("sk-b")
        err = refused(openai.InternalServerError, lambda: c.embeddings.create(model="e", input="x"))
        assert err["code"] == "overloaded"
        for held, _ in (held_a, held_b):
            held.__exit__(None, None, None)


def test_the_native_stream_tells_each_tool_call_and_chat_returns_them(stack: dict[str, str]) -> None:
    auth = {"authorization": "Bearer sk-a"}
    body = {"question": "weather and a sum", "tools": TOOLS}
    with httpx.Client(timeout=10) as http:
        r = http.post(f"{stack['builtin']}/chat/stream", json=body, headers=auth)
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
        whole = http.post(f"{stack['builtin']}/chat", json=body, headers=auth).json()
    calls = [e for e in events if e["type"] == "tool_call"]
    assert [c["name"] for c in calls] == ["get_weather", "add"]
    assert all(set(c) == {"type", "id", "name", "arguments"} and json.loads(c["arguments"]) for c in calls)
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "tool_calls"
    assert whole["finish_reason"] == "tool_calls"
    assert [c["name"] for c in whole["tool_calls"]] == ["get_weather", "add"]
