"""The GenAI client metrics: one duration and the token usage per model call, bounded labels.

Unit tests on the autojump clock (exact durations, every outcome); then a real
server on 127.0.0.1 port 0 whose ``/metrics`` is scraped and parsed after a
call on each route that calls a model.
"""

from __future__ import annotations

import itertools
import re

import httpx
import pytest
import trio
import trio.testing

from tests._reliability import running_gateway
from trio_agent.config import MockLLMConfig, ServerConfig
from trio_agent.errors import UpstreamError
from trio_agent.llm import Usage
from trio_agent.server import AdmissionStatistics, GatewayMetrics
from trio_agent.server._metrics_genai import (
    DURATION_BUCKETS,
    MAX_MODEL_LABELS,
    OTHER,
    TOKEN_BUCKETS,
    GenAIMetrics,
)
from trio_agent.server._metrics_merge import sample_values

DURATION = "gen_ai_client_operation_duration_seconds"
TOKENS = "gen_ai_client_token_usage"
OK = 'gen_ai_operation_name="chat",gen_ai_request_model="m",outcome="ok"'


def _values(genai: GenAIMetrics) -> dict[str, float]:
    return sample_values("\n".join(genai.render()))


def test_buckets_are_the_conventions_advice() -> None:
    assert TOKEN_BUCKETS[:9] == (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)
    assert TOKEN_BUCKETS[-1] == 4**13
    assert DURATION_BUCKETS[0] == 0.01 and DURATION_BUCKETS[-1] == 81.92
    assert all(b == a * 2 for a, b in itertools.pairwise(DURATION_BUCKETS))


async def test_a_call_records_its_duration_and_tokens(autojump_clock: trio.testing.MockClock) -> None:
    genai = GenAIMetrics()
    with genai.call("chat", "m") as call:
        await trio.sleep(1.5)
        call.finish(Usage(prompt_tokens=10, completion_tokens=3))
    v = _values(genai)
    assert v[f"{DURATION}_sum{{{OK}}}"] == 1.5
    assert v[f"{DURATION}_count{{{OK}}}"] == 1
    assert v[f'{DURATION}_bucket{{{OK},le="1.28"}}'] == 0
    assert v[f'{DURATION}_bucket{{{OK},le="2.56"}}'] == 1
    assert v[f'{DURATION}_bucket{{{OK},le="+Inf"}}'] == 1
    tok = 'gen_ai_operation_name="chat",gen_ai_request_model="m",gen_ai_token_type'
    assert v[f'{TOKENS}_sum{{{tok}="input"}}'] == 10
    assert v[f'{TOKENS}_bucket{{{tok}="input",le="4"}}'] == 0
    assert v[f'{TOKENS}_bucket{{{tok}="input",le="16"}}'] == 1
    assert v[f'{TOKENS}_bucket{{{tok}="output",le="4"}}'] == 1


async def test_every_end_of_a_call_has_its_outcome(autojump_clock: trio.testing.MockClock) -> None:
    genai = GenAIMetrics()
    with pytest.raises(UpstreamError):
        async with genai.call("chat", "m"):
            await trio.sleep(0.25)
            raise UpstreamError("upstream said no", code="upstream_status")
    with trio.move_on_after(2.0):  # a deadline, a disconnect or the drain
        async with genai.call("chat", "m"):
            await trio.sleep_forever()
    with pytest.raises(RuntimeError):
        with genai.call("chat", "m"):
            raise RuntimeError("a bug")
    with genai.call("chat", "m") as call:  # a stream that ended with an error event, not raised
        call.finish(None, UpstreamError("cut", code="upstream_stream_error"))
    with trio.move_on_after(1.0):  # cancelled inside a nursery: an exception group of Cancelled
        async with genai.call("chat", "m"), trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            await trio.sleep_forever()
    v = _values(genai)
    base = 'gen_ai_operation_name="chat",gen_ai_request_model="m"'
    assert v[f'{DURATION}_sum{{{base},outcome="error",error_type="upstream_status"}}'] == 0.25
    assert v[f'{DURATION}_sum{{{base},outcome="cancelled",error_type="cancelled"}}'] == 3.0
    assert v[f'{DURATION}_count{{{base},outcome="cancelled",error_type="cancelled"}}'] == 2
    assert v[f'{DURATION}_count{{{base},outcome="error",error_type="{OTHER}"}}'] == 1
    assert v[f'{DURATION}_count{{{base},outcome="error",error_type="upstream_stream_error"}}'] == 1
    assert not any(k.startswith(TOKENS) for k in v)  # no usage reported, none recorded


def test_model_labels_are_capped() -> None:
    genai = GenAIMetrics()
    for i in range(MAX_MODEL_LABELS + 10):
        genai.record("chat", f"model-{i}", 0.1)
    genai.record("chat", "model-0", 0.1)  # a model already named keeps its name
    genai.record("chat", "x" * 500, 0.1)
    models = {m for k in _values(genai) for m in re.findall(r'gen_ai_request_model="([^"]*)"', k)}
    assert len(models) == MAX_MODEL_LABELS + 1
    assert OTHER in models and "model-0" in models and f"model-{MAX_MODEL_LABELS}" not in models
    assert _values(genai)[f'{DURATION}_count{{gen_ai_operation_name="chat",gen_ai_request_model="{OTHER}",outcome="ok"}}'] == 11


def test_label_values_are_escaped() -> None:
    genai = GenAIMetrics()
    genai.record("chat", 'we"ird\\model', 0.1)
    assert f'{DURATION}_count{{gen_ai_operation_name="chat",gen_ai_request_model="we\\"ird\\\\model",outcome="ok"}}' in _values(genai)


def test_the_gateway_renders_them_beside_its_own_series() -> None:
    m = GatewayMetrics()
    m.genai.record("chat", "m", 0.5, usage=Usage(prompt_tokens=1, completion_tokens=2))
    stats = AdmissionStatistics(
        in_flight=0, queued=0, max_concurrency=1, max_queued=0, admitted=0, shed_full=0,
        shed_timeout=0, shed_key_limit=0, shed_loop_lag=0, keys_in_flight=0, mean_service_time=1.0,
    )  # fmt: skip
    text = m.render(stats, draining=False)
    assert f"# TYPE {DURATION} histogram" in text and f"# TYPE {TOKENS} histogram" in text
    assert text.index("trio_agent_request_seconds") < text.index(DURATION)
    assert sample_values(text)[f"{DURATION}_count{{{OK}}}"] == 1


_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-z_]+="(\\.|[^"\\])*"(,[a-z_]+="(\\.|[^"\\])*")*\})? \S+$')


def _check_histograms(text: str, name: str) -> None:
    """Every series of a histogram: cumulative buckets ending in +Inf == _count."""
    values = sample_values(text)
    series: dict[str, list[float]] = {}
    for key, value in values.items():
        if key.startswith(f"{name}_bucket{{"):
            labels = re.sub(r',le="[^"]*"', "", key[len(name) + 7 :])
            series.setdefault(labels, []).append(value)
    assert series, name
    for labels, buckets in series.items():
        assert buckets == sorted(buckets), labels
        assert buckets[-1] == values[f"{name}_count{labels}"], labels


@pytest.mark.e2e
async def test_each_route_that_calls_a_model_records_it_in_the_scrape() -> None:
    messages = [{"role": "user", "content": "hi"}]
    config = ServerConfig(port=0, access_log=False, mock=MockLLMConfig(ttft=0, itl=0, tokens=4))
    with trio.fail_after(30):
        async with running_gateway(config) as srv, httpx.AsyncClient(base_url=srv.url) as client:
            for path, body in [
                ("/chat/stream", {"messages": messages}),
                ("/chat", {"messages": messages, "model": "second-model"}),
                ("/v1/chat/completions", {"messages": messages, "model": "mock-llm"}),
                ("/v1/chat/completions", {"messages": messages, "model": "mock-llm", "stream": True}),
                ("/v1/embeddings", {"input": "hello world", "model": "mock-llm"}),
                ("/agent", {"messages": [{"role": "user", "content": "what is 2*7"}]}),
            ]:
                r = await client.post(path, json=body)
                assert r.status_code == 200, (path, r.text)
            agent_steps = [e for e in r.json()["events"] if e["type"] == "step_end"]
            text = (await client.get("/metrics")).text
    for line in text.splitlines():
        assert line.startswith("# ") or _SAMPLE.match(line), line
    _check_histograms(text, DURATION)
    _check_histograms(text, TOKENS)
    v = sample_values(text)
    mock = 'gen_ai_operation_name="chat",gen_ai_request_model="mock-llm"'
    # /chat/stream, the two /v1/chat/completions and each model call of the agent run
    assert len(agent_steps) == 2
    assert v[f'{DURATION}_count{{{mock},outcome="ok"}}'] == 3 + len(agent_steps)
    assert v[f'{DURATION}_count{{gen_ai_operation_name="chat",gen_ai_request_model="second-model",outcome="ok"}}'] == 1
    assert v[f'{DURATION}_count{{gen_ai_operation_name="embeddings",gen_ai_request_model="mock-llm",outcome="ok"}}'] == 1
    agent_output = sum(s["usage"]["completion_tokens"] for s in agent_steps)
    assert v[f'{TOKENS}_sum{{{mock},gen_ai_token_type="output"}}'] == 3 * 4 + agent_output
    assert v[f'{TOKENS}_count{{{mock},gen_ai_token_type="input"}}'] == 3 + len(agent_steps)
    emb = 'gen_ai_operation_name="embeddings",gen_ai_request_model="mock-llm"'
    assert v[f'{TOKENS}_count{{{emb},gen_ai_token_type="input"}}'] == 1
    assert f'{TOKENS}_count{{{emb},gen_ai_token_type="output"}}' not in v
    # The existing series are still there, beside them.
    assert v['trio_agent_responses_total{route="/chat/stream",status="200"}'] == 1


@pytest.mark.e2e
async def test_a_stream_that_fails_midway_records_the_error_the_client_got() -> None:
    config = ServerConfig(
        port=0, access_log=False, mock=MockLLMConfig(ttft=0, itl=0, tokens=8, fail_after_tokens=2)
    )
    with trio.fail_after(30):
        async with running_gateway(config) as srv, httpx.AsyncClient(base_url=srv.url) as client:
            r = await client.post("/chat/stream", json={"messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200
            code = re.findall(r'"code":"([a-z_]+)"', r.text.split("event: error", 1)[1])[0]
            v = sample_values((await client.get("/metrics")).text)
    key = f'{DURATION}_count{{gen_ai_operation_name="chat",gen_ai_request_model="mock-llm",outcome="error",error_type="{code}"}}'
    assert v[key] == 1
    assert not any(k.startswith(f"{DURATION}_count") and 'outcome="ok"' in k for k in v)
