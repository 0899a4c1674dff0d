"""Auth and secrets: a wrong or missing key never reaches the upstream; a client key and an
upstream key (canaries) never appear in logs, error bodies, SSE events, headers or /metrics,
even when the upstream echoes its key in its errors; a disallowed CORS origin gets no grant.
"""

from __future__ import annotations

import logging

import pytest
import trio

from tests._reliability import (
    RawResponse,
    mid_stream,
    ok_stream,
    open_fault_upstream,
    raw_request,
    running_gateway,
    status_fault,
)
from trio_agent.config import ServerConfig, UpstreamConfig

CLIENT_KEY = "sk-client-canary-7f3a9c1e55"
UPSTREAM_KEY = "sk-upstream-canary-b81d2e4f09"
GOOD_ORIGIN = "https://app.example"
Q = {"question": "hello"}


def wire(r: RawResponse) -> str:
    return "\n".join(f"{k}: {v}" for k, v in r.headers.items()) + "\n" + r.body.decode("utf-8", "replace")


@pytest.mark.e2e
async def test_keys_gate_the_upstream_and_never_leak(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = f"invalid api key {UPSTREAM_KEY} (you sent Bearer {UPSTREAM_KEY})"
    faults = {
        1: ok_stream(3),
        2: status_fault(401, message=echo),  # not retried, becomes our error
        3: mid_stream("error", message=echo),  # an error frame after the first token
    }
    with trio.fail_after(15):
        async with open_fault_upstream(lambda n: faults.get(n, ok_stream(1))) as up:
            config = ServerConfig(
                port=0,
                access_log=True,
                api_keys=frozenset({CLIENT_KEY}),
                cors_origins=(GOOD_ORIGIN,),
                upstream=UpstreamConfig(base_url=up.base_url, api_key=UPSTREAM_KEY, max_attempts=1),
            )
            async with running_gateway(config) as srv:
                port = srv.port
                seen: list[RawResponse] = []
                refused = [
                    {},
                    {"Authorization": "Bearer wrong"},
                    {"Authorization": f"Bearer {CLIENT_KEY}x"},
                    {"Authorization": f"Basic {CLIENT_KEY}"},
                    {"Authorization": f"Bearer {UPSTREAM_KEY}"},
                    {"Authorization": "Bearer"},
                    {"X-API-Key": CLIENT_KEY},
                ]
                for path in ("/chat/stream", "/chat", "/chat/batch", "/v1/chat/completions", "/v1/models"):
                    for headers in refused:
                        method = "GET" if path == "/v1/models" else "POST"
                        body = {"questions": ["a"]} if path == "/chat/batch" else Q
                        if path == "/v1/chat/completions":
                            body = {"messages": [{"role": "user", "content": "hi"}]}
                        r = await raw_request(
                            port, method, path, None if method == "GET" else b"", headers,
                            json=None if method == "GET" else body,
                        )
                        seen.append(r)
                        assert r.status == 401, (path, headers, r.status)
                        assert r.headers["www-authenticate"].startswith("Bearer")
                        code = r.json()["error"]["code"]
                        assert code == "unauthorized"
                assert up.requests == 0  # nothing refused reached the upstream
                assert srv.gw.limits.statistics().admitted == 0

                auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
                ok = await raw_request(port, "POST", "/chat/stream", json=Q, headers=auth)
                assert ok.kinds[-1] == "done"
                failed = await raw_request(port, "POST", "/chat", json=Q, headers=auth)
                assert failed.status == 502
                assert failed.json()["error"]["upstream_status"] == 401
                mid = await raw_request(port, "POST", "/chat/stream", json=Q, headers=auth)
                assert mid.kinds[-1] == "error"
                assert up.requests == 3
                assert up.auth == [f"Bearer {UPSTREAM_KEY}"] * 3  # the canary was on the wire
                metrics = await raw_request(port, "GET", "/metrics")
                assert metrics.status == 200
                seen += [ok, failed, mid, metrics]

                # CORS: a disallowed origin gets no grant, on a request or a preflight.
                evil = {"Origin": "https://evil.example"}
                for r in (
                    await raw_request(port, "POST", "/chat", json=Q, headers={**auth, **evil}),
                    await raw_request(port, "OPTIONS", "/chat", None, {
                        **evil, "Access-Control-Request-Method": "POST",
                        "Access-Control-Request-Headers": "authorization"}),
                ):
                    assert "access-control-allow-origin" not in r.headers
                    assert "access-control-allow-methods" not in r.headers
                    assert "access-control-allow-credentials" not in r.headers
                good = await raw_request(port, "OPTIONS", "/chat", None, {
                    "Origin": GOOD_ORIGIN, "Access-Control-Request-Method": "POST"})
                assert good.headers["access-control-allow-origin"] == GOOD_ORIGIN
                assert srv.gw.limits.statistics().admitted == up.requests == 4

    logs = caplog.text + "\n".join(
        str(rec.args) + str(rec.exc_info) for rec in caplog.records
    )
    assert "trio_agent.access" in {rec.name for rec in caplog.records}  # logging was on
    assert sum(rec.name == "trio_agent.access" for rec in caplog.records) >= 35
    for text in [logs, *(wire(r) for r in seen), *(e.data for r in seen for e in r.events)]:
        assert CLIENT_KEY not in text
        assert UPSTREAM_KEY not in text
        assert "canary" not in text  # no fragment of either key either
