"""The gateway over the upstream router (fake upstreams, over ASGI): every route routes the same way,
all upstreams ejected is a fast 503 with Retry-After (streamed routes and agent runs too, before
their head),
an unserved model is 404 model_not_found, /readyz with ready_requires_upstream, per-upstream /metrics.
"""

from __future__ import annotations

import trio
import trio.testing

from tests._asgi import data, request
from tests._fake_upstreams import FakeUpstream, refused, router
from trio_agent.config import ServerConfig
from trio_agent.server import create_app

Q = {"question": "hello"}
OA = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def test_all_upstreams_ejected_is_a_fast_503_on_every_route(autojump_clock: trio.testing.MockClock) -> None:
    a, b = FakeUpstream("a"), FakeUpstream("b")
    backend = router(a, b, eject_after_failures=1, eject_delay=7.0, max_attempts=1)
    gw = create_app(ServerConfig(ready_requires_upstream=True), backend=backend)
    r = await request(gw, "GET", "/readyz")
    assert r.status == 200
    a.down = b.down = refused()
    for _ in range(2):  # one call each: both ejected
        r = await request(gw, "POST", "/chat", json=Q)
        assert r.status == 502 and r.json()["error"]["code"] == "upstream_unavailable"
    t0 = trio.current_time()
    for method, path, body in (
        ("POST", "/chat", Q),
        ("POST", "/chat/stream", Q),
        ("POST", "/v1/chat/completions", OA),
        ("POST", "/v1/chat/completions", {**OA, "stream": True}),
        ("POST", "/v1/embeddings", {"model": "m", "input": "x"}),
        ("POST", "/agent/stream", Q),
        ("POST", "/agent", Q),
    ):
        r = await request(gw, method, path, json=body)
        assert r.status == 503, (path, r.status, r.body)
        assert r.headers["retry-after"] == "7", path
        err = r.json()["error"]
        assert err["code"] == "upstream_unavailable", path
    assert trio.current_time() == t0  # nothing waited for a connect timeout
    r = await request(gw, "GET", "/readyz")
    assert r.status == 503 and r.json()["status"] == "upstream_unavailable"
    assert r.headers["retry-after"] == "7"
    metrics = (await request(gw, "GET", "/metrics")).body.decode()
    assert 'trio_agent_upstream_state{upstream="a",state="ejected"} 1' in metrics
    assert 'trio_agent_upstream_ejections_total{upstream="b"} 1' in metrics
    assert 'trio_agent_upstream_attempt_errors_total{upstream="a",kind="upstream_unavailable"} 1' in metrics
    # The non-streamed calls reached the router; the streamed ones were refused before their head.
    assert "trio_agent_upstream_fast_failures_total 3" in metrics
    # Due again: the next request probes, the upstream answers, and it is ready again.
    a.down = b.down = None
    await trio.sleep(7.0)
    r = await request(gw, "POST", "/chat/stream", json=Q)
    assert r.status == 200 and r.events[-1].event == "done"
    r = await request(gw, "POST", "/agent/stream", json=Q)  # the agent's model calls: routed too
    assert r.status == 200 and r.events[-1].event == "done", r.events[-1]
    r = await request(gw, "GET", "/readyz")
    assert r.status == 200
    assert gw.limits.statistics().in_flight == 0 and backend.statistics().in_flight == 0


async def test_without_ready_requires_upstream_the_gateway_stays_ready(autojump_clock: trio.testing.MockClock) -> None:
    a = FakeUpstream("a")
    backend = router(a, eject_after_failures=1, max_attempts=1)
    gw = create_app(ServerConfig(), backend=backend)
    a.down = refused()
    await request(gw, "POST", "/chat", json=Q)
    assert backend.unavailable() is not None
    r = await request(gw, "GET", "/readyz")
    assert r.status == 200


async def test_an_unserved_model_is_model_not_found(autojump_clock: trio.testing.MockClock) -> None:
    backend = router(FakeUpstream("a"), models=[("m",)], model="m")
    gw = create_app(ServerConfig(), backend=backend)
    r = await request(gw, "POST", "/v1/chat/completions", json={**OA, "model": "other"})
    assert r.status == 404
    assert r.json()["error"]["code"] == "model_not_found"
    r = await request(gw, "POST", "/chat", json={**Q, "model": "other"})
    assert r.status == 404 and r.json()["error"]["code"] == "model_not_found"
    r = await request(gw, "POST", "/chat/stream", json={**Q, "model": "other"})
    assert data(r.events[-1])["code"] == "model_not_found"  # the head went first: the one error event
    r = await request(gw, "POST", "/v1/chat/completions", json=OA)
    assert r.status == 200
