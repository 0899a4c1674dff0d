"""The gateway front and its JSON endpoints: request ids, auth, CORS, every error as JSON."""

from __future__ import annotations

import logging

import orjson
import pytest
import trio
import trio.testing

from tests._asgi import Exchange, request
from tests._fakes import assert_released, make_gateway
from trio_agent.config import MockLLMConfig

Q = {"question": "hello"}
KEY = "sk-test-secret-123"


def assert_json_error(r: object, status: int, code: str) -> dict[str, object]:
    assert r.status == status, r.body  # type: ignore[attr-defined]
    assert r.headers["content-type"] == "application/json"  # type: ignore[attr-defined]
    err = r.json()["error"]  # type: ignore[attr-defined]
    assert err["code"] == code
    assert err["request_id"] == r.headers["x-request-id"]  # type: ignore[attr-defined]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["retryable"], bool)
    return err  # type: ignore[no-any-return]


async def test_chat_returns_the_whole_answer(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.2, itl=0.1, tokens=3))
    r = await request(gw, "POST", "/chat", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status == 200
    body = r.json()
    assert body["content"] == "t0 t1 t2 "
    assert body["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == 6
    assert body["timings"] == {"queued_ms": 0.0, "ttft_ms": 200.0, "total_ms": 400.0}
    assert_released(gw, llm)


async def test_chat_timeout_is_504(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.1, tokens=5, stall_after_tokens=1), request_timeout=2.0)
    r = await request(gw, "POST", "/chat", json=Q)
    assert trio.current_time() == 2.0
    assert_json_error(r, 504, "timeout")
    assert llm.cancelled == 1
    assert_released(gw, llm)


async def test_chat_overload_is_503_with_retry_after(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=5.0, tokens=1), max_concurrency=1, max_queued=0)
    async with trio.open_nursery() as n:
        first = Exchange(gw, "POST", "/chat", json=Q).start(n)
        await trio.testing.wait_all_tasks_blocked()
        r = await request(gw, "POST", "/chat", json=Q)
        err = assert_json_error(r, 503, "overloaded")
        assert err["retryable"] is True
        assert int(r.headers["retry-after"]) == err["retry_after"]
        assert await first.response_start() == 200
    assert_released(gw, llm)


async def test_chat_upstream_error_is_502(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.1, fail_before_first=True))
    r = await request(gw, "POST", "/chat", json=Q)
    err = assert_json_error(r, 502, "upstream_status")
    assert err["upstream_status"] == 503
    assert_released(gw, llm)


async def test_chat_disconnect_cancels_the_upstream(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=10.0, tokens=1))
    async with trio.open_nursery() as n:
        ex = Exchange(gw, "POST", "/chat", json=Q).start(n)
        await trio.testing.wait_all_tasks_blocked()
        assert llm.active == 1
        ex.disconnect()
        await ex.finished.wait()
    assert llm.cancelled == 1 and gw.metrics.disconnects == 1
    assert_released(gw, llm)


async def test_request_id_is_echoed_when_sane_and_generated_otherwise() -> None:
    gw, _ = make_gateway()
    r = await request(gw, "GET", "/healthz", headers={"x-request-id": "abc-123.X:y"})
    assert r.headers["x-request-id"] == "abc-123.X:y"
    r = await request(gw, "GET", "/healthz", headers={"x-request-id": "bad id\twith<junk>"})
    assert len(r.headers["x-request-id"]) == 32
    r = await request(gw, "GET", "/nope", headers={"x-request-id": "req-7"})
    assert r.json()["error"]["request_id"] == "req-7"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("GET", "/nope", {}, 404, "not_found"),
        ("GET", "/chat", {}, 405, "method_not_allowed"),
        ("GET", "/chat/stream", {}, 405, "method_not_allowed"),
        ("DELETE", "/healthz", {}, 405, "method_not_allowed"),
        ("POST", "/chat", {"body": b"{", "headers": {"content-type": "application/json"}}, 400, "invalid_request"),
        ("POST", "/chat", {"body": b'{"question": "x"}', "headers": {"content-type": "text/plain"}}, 400, "invalid_request"),
        ("POST", "/chat/stream", {"body": b"", "headers": {"content-type": "application/json"}}, 400, "invalid_request"),
        ("POST", "/chat", {"json": {"question": "x", "extra": 1}}, 422, "invalid_request"),
        ("POST", "/chat", {"json": [1, 2]}, 422, "invalid_request"),
    ],
)
async def test_every_error_is_json(
    method: str, path: str, kwargs: dict[str, object], status: int, code: str
) -> None:
    gw, llm = make_gateway()
    r = await request(gw, method, path, **kwargs)
    assert_json_error(r, status, code)
    assert b"Traceback" not in r.body and b"<html" not in r.body.lower()
    assert llm.started == 0


async def test_405_lists_the_allowed_methods() -> None:
    gw, _ = make_gateway()
    r = await request(gw, "GET", "/chat/batch")
    assert "POST" in r.headers["allow"]


@pytest.mark.parametrize("path", ["/chat", "/chat/stream", "/v1/chat/completions", "/chat/batch"])
async def test_body_too_large_by_content_length(path: str) -> None:
    gw, llm = make_gateway(max_body_bytes=100)
    body = orjson.dumps({"question": "x" * 200})
    r = await request(gw, "POST", path, body=body, headers={"content-type": "application/json"})
    assert r.status == 413
    assert r.headers["content-type"] == "application/json"
    assert llm.started == 0


@pytest.mark.parametrize("path", ["/chat", "/chat/stream"])
async def test_body_too_large_while_reading(path: str) -> None:
    gw, llm = make_gateway(max_body_bytes=100)
    chunks = [b'{"question": "', b"x" * 60, b"x" * 60, b'"}']
    r = await request(gw, "POST", path, chunks=chunks, headers={"content-type": "application/json"})
    assert_json_error(r, 413, "payload_too_large")
    assert llm.started == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"question": ""}, "question"),
        ({"question": 3}, "question"),
        ({}, "question"),
        ({"question": "a", "messages": []}, "question"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "ok"}, {"role": "user"}]}, "messages.1.content"),
        ({"messages": [{"role": "user", "content": "x"}] * 5}, "messages"),
        ({"question": "x" * 51}, "question"),
        ({"question": "x", "max_tokens": 101}, "max_tokens"),
        ({"question": "x", "max_tokens": True}, "max_tokens"),
        ({"question": "x", "temperature": 3}, "temperature"),
        ({"question": "x", "model": ""}, "model"),
    ],
)
async def test_validation_names_the_field(body: object, field: str) -> None:
    gw, llm = make_gateway(max_messages=4, max_message_chars=50, max_tokens_limit=100)
    r = await request(gw, "POST", "/chat", json=body)
    err = assert_json_error(r, 422, "invalid_request")
    assert err["field"] == field
    assert llm.started == 0


async def test_auth_is_checked_first_in_constant_time_and_never_echoed(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_agent.access")
    gw, llm = make_gateway(api_keys=frozenset({KEY, "other-key"}))
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {KEY}"}):
        for path in ("/chat", "/chat/stream", "/v1/chat/completions", "/v1/models", "/nope"):
            r = await request(gw, "POST" if "chat" in path else "GET", path, json=Q, headers=headers)
            assert r.status == 401, (path, headers)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert KEY.encode() not in r.body
    assert gw.limits.statistics().admitted == 0 and llm.started == 0
    ok = await request(gw, "POST", "/chat", json=Q, headers={"authorization": f"Bearer {KEY}"})
    assert ok.status == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await request(gw, "GET", path)).status == 200
    logs = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "Bearer" not in logs and KEY not in logs
    metrics = await request(gw, "GET", "/metrics")
    assert KEY.encode() not in metrics.body


async def test_openai_errors_use_openai_shape() -> None:
    gw, _ = make_gateway(api_keys=frozenset({KEY}))
    r = await request(gw, "POST", "/v1/chat/completions", json={"messages": []})
    assert r.status == 401
    assert r.json()["error"]["type"] == "authentication_error"
    auth = {"authorization": f"Bearer {KEY}"}
    r = await request(gw, "POST", "/v1/chat/completions", json={"messages": []}, headers=auth)
    err = r.json()["error"]
    assert r.status == 400
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", "messages", "empty_array")
    r = await request(gw, "POST", "/v1/chat/completions", json={"model": "x"}, headers=auth)
    assert r.json()["error"] == {
        "message": "Missing required parameter: 'messages'.",
        "type": "invalid_request_error",
        "code": "missing_required_parameter",
        "param": "messages",
        "request_id": r.headers["x-request-id"],
    }
    r = await request(gw, "POST", "/v1/nope", json={}, headers=auth)
    assert r.status == 404 and r.json()["error"]["message"] == "Invalid URL (POST /v1/nope)"


async def test_per_key_limit_is_429(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(
        MockLLMConfig(ttft=5.0, tokens=1),
        api_keys=frozenset({"key-a", "key-b"}),
        per_key_max_concurrency=1,
    )
    a = {"authorization": "Bearer key-a"}
    async with trio.open_nursery() as n:
        held = Exchange(gw, "POST", "/chat/stream", json=Q, headers=a).start(n)
        await held.next_event()
        r = await request(gw, "POST", "/chat/stream", json=Q, headers=a)
        err = assert_json_error(r, 429, "rate_limited")
        assert "key-a" not in orjson.dumps(err).decode()
        assert "retry-after" in r.headers
        other = await request(gw, "POST", "/chat/stream", json=Q, headers={"authorization": "Bearer key-b"})
        assert other.status == 200
        await held.events()
    assert_released(gw, llm)


async def test_cors_is_off_by_default() -> None:
    gw, _ = make_gateway()
    r = await request(gw, "GET", "/healthz", headers={"origin": "https://app.example"})
    assert "access-control-allow-origin" not in r.headers


async def test_cors_allowlist_and_preflight() -> None:
    gw, _ = make_gateway(cors_origins=("https://app.example",), api_keys=frozenset({KEY}))
    pre = await request(
        gw,
        "OPTIONS",
        "/chat/stream",
        headers={"origin": "https://app.example", "access-control-request-method": "POST"},
    )
    assert pre.status == 204
    assert pre.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "Authorization" in pre.headers["access-control-allow-headers"]
    r = await request(gw, "GET", "/healthz", headers={"origin": "https://app.example"})
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert "X-Request-ID" in r.headers["access-control-expose-headers"]
    bad = {"origin": "https://evil.example", "access-control-request-method": "POST"}
    pre = await request(gw, "OPTIONS", "/chat", headers=bad)
    assert "access-control-allow-origin" not in pre.headers
    assert "access-control-allow-methods" not in pre.headers
    r = await request(gw, "GET", "/healthz", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


async def test_batch_json_results_in_input_order(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.1, itl=0.1, tokens=4))
    r = await request(
        gw, "POST", "/chat/batch",
        json={"requests": [{"question": "a"}, {"question": "b", "max_tokens": 1}]},
    )
    assert r.status == 200
    results = r.json()["results"]
    assert [(x["index"], x["status"]) for x in results] == [(0, "ok"), (1, "ok")]
    assert results[1]["content"] == "t0 "
    assert_released(gw, llm)


async def test_batch_json_timeouts_and_errors_are_explicit(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.1, itl=1.0, tokens=50), request_timeout=3.0)
    r = await request(
        gw, "POST", "/chat/batch",
        json={"requests": [{"question": "a", "max_tokens": 1}, {"question": "b"}]},
    )
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["ok", "timeout"]
    assert results[1]["error"]["code"] in ("timeout", "item_timeout")
    assert_released(gw, llm)


async def test_batch_item_cap_is_413_and_fields_are_named() -> None:
    gw, llm = make_gateway(max_batch_items=2)
    r = await request(gw, "POST", "/chat/batch", json={"questions": ["a", "b", "c"]})
    assert_json_error(r, 413, "invalid_request")
    r = await request(gw, "POST", "/chat/batch", json={"requests": [{"question": "a"}, {"question": 1}]})
    assert assert_json_error(r, 422, "invalid_request")["field"] == "requests.1.question"
    r = await request(gw, "POST", "/chat/batch", json={"questions": []})
    assert assert_json_error(r, 422, "invalid_request")["field"] == "questions"
    assert llm.started == 0


async def test_openai_non_streamed_completion(autojump_clock: trio.testing.MockClock) -> None:
    gw, llm = make_gateway(MockLLMConfig(ttft=0.1, itl=0.1, tokens=2))
    r = await request(
        gw, "POST", "/v1/chat/completions",
        json={"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]},
    )
    body = r.json()
    assert r.status == 200
    assert body["object"] == "chat.completion" and body["model"] == "mock-llm"  # the backend's answer
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "t0 t1 "}
    assert body["usage"]["completion_tokens"] == 2
    assert_released(gw, llm)


async def test_models_health_ready_and_metrics(autojump_clock: trio.testing.MockClock) -> None:
    gw, _ = make_gateway(MockLLMConfig(ttft=0.1, itl=0.1, tokens=2))
    models = await request(gw, "GET", "/v1/models")
    assert models.json()["data"][0]["id"] == "mock-llm"
    assert (await request(gw, "GET", "/healthz")).json() == {"status": "ok"}
    assert (await request(gw, "GET", "/readyz")).status == 200
    await request(gw, "POST", "/chat/stream", json=Q)
    m = await request(gw, "GET", "/metrics")
    assert m.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = m.body.decode()
    for line in (
        "trio_agent_in_flight 0",
        "trio_agent_admitted_total 1",
        'trio_agent_shed_total{reason="queue_full"} 0',
        "trio_agent_tokens_streamed_total 2",
        'trio_agent_responses_total{route="/chat/stream",status="200"} 1',
        'trio_agent_ttft_seconds_bucket{le="0.1"} 1',
        "trio_agent_request_seconds_count 1",
    ):
        assert line in text.splitlines(), line
    gw.drain.start()
    ready = await request(gw, "GET", "/readyz")
    assert ready.status == 503 and ready.json() == {"status": "shutting_down"}
    assert (await request(gw, "GET", "/healthz")).status == 200
    r = await request(gw, "POST", "/chat", json=Q)
    assert_json_error(r, 503, "shutting_down")
    r = await request(gw, "POST", "/chat/batch", json={"questions": ["a"]})
    assert_json_error(r, 503, "shutting_down")


async def test_access_log_is_one_json_line_per_request(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_agent.access")
    gw, _ = make_gateway(MockLLMConfig(ttft=0.1, itl=0.1, tokens=1))
    await request(gw, "POST", "/chat/stream", json=Q, headers={"x-request-id": "r-1"})
    await request(gw, "GET", "/nope", headers={"x-request-id": "r-2"})
    lines = [orjson.loads(rec.getMessage()) for rec in caplog.records if rec.name == "trio_agent.access"]
    assert [(x["request_id"], x["path"], x["status"], x["outcome"]) for x in lines] == [
        ("r-1", "/chat/stream", 200, "done"),
        ("r-2", "/nope", 404, "not_found"),
    ]
    assert lines[0]["method"] == "POST" and lines[0]["duration_ms"] == 100.0


async def test_access_log_can_be_turned_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_agent.access")
    gw, _ = make_gateway(access_log=False)
    await request(gw, "GET", "/healthz")
    assert not [r for r in caplog.records if r.name == "trio_agent.access"]


async def test_unexpected_backend_error_is_a_500_without_details(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    gw, llm = make_gateway()

    async def boom() -> list[str]:
        raise RuntimeError("secret internals")

    llm.list_models = boom  # type: ignore[method-assign]
    caplog.set_level(logging.CRITICAL)
    r = await request(gw, "GET", "/v1/models")
    assert r.status == 500
    assert b"secret" not in r.body and r.json()["error"]["code"] == "internal_error"


@pytest.mark.parametrize("path", ["/chat/stream", "/chat"])
async def test_a_dribbled_body_gets_the_request_deadline(
    autojump_clock: trio.testing.MockClock, path: str
) -> None:
    gw, llm = make_gateway(request_timeout=3.0)
    r = await request(
        gw, "POST", path, chunks=[b'{"quest'], hold_body=True,
        headers={"content-type": "application/json"},
    )
    assert trio.current_time() == 3.0
    assert_json_error(r, 408, "body_timeout")
    assert llm.started == 0
