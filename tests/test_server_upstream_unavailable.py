"""An upstream that refuses connections is ``upstream_unavailable`` (502) on every request.

Whether the backend retried or the retry budget refused the retry, the client
sees the same code; the budget is a detail of the message.
"""

from __future__ import annotations

import socket

import trio

from tests._asgi import data, request
from trio_agent.config import ServerConfig, UpstreamConfig
from trio_agent.llm import open_openai_backend
from trio_agent.server import create_app

Q = {"question": "hello"}
OA = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_closed_upstream_port_is_upstream_unavailable_on_every_request() -> None:
    upstream = UpstreamConfig(
        base_url=f"http://127.0.0.1:{closed_port()}/v1",
        backoff_base=0.001,
        backoff_max=0.001,
        connect_timeout=2.0,
        # A small budget: after the first requests every retry is refused by it.
        retry_budget_min=1,
        retry_budget_ratio=0.0,
    )
    with trio.fail_after(20):
        async with open_openai_backend(upstream) as backend:
            gw = create_app(ServerConfig(), backend=backend)
            messages = []
            for _ in range(4):
                r = await request(gw, "POST", "/chat", json=Q)
                assert r.status == 502, r.body
                err = r.json()["error"]
                assert (err["code"], err["retryable"]) == ("upstream_unavailable", True)
                messages.append(err["message"])
            # Streamed: the head went out before the upstream call, so the same code
            # arrives as the one terminal error event.
            r = await request(gw, "POST", "/chat/stream", json=Q)
            assert r.status == 200 and r.events[-1].event == "error"
            assert data(r.events[-1])["code"] == "upstream_unavailable"
            # /v1 relays the upstream's chunks: its head waits for the first one, so a failure
            # before it is a plain JSON error, as the upstream itself would answer.
            r = await request(gw, "POST", "/v1/chat/completions", json={**OA, "stream": True})
            assert r.status == 502 and r.json()["error"]["code"] == "upstream_unavailable"
            r = await request(gw, "POST", "/v1/chat/completions", json=OA)
            assert r.status == 502 and r.json()["error"]["code"] == "upstream_unavailable"
    assert any("retry budget" in m for m in messages[1:]), messages
    assert gw.limits.statistics().in_flight == 0


async def test_batch_items_carry_the_same_code() -> None:
    upstream = UpstreamConfig(base_url=f"http://127.0.0.1:{closed_port()}/v1", max_attempts=1)
    with trio.fail_after(20):
        async with open_openai_backend(upstream) as backend:
            gw = create_app(ServerConfig(), backend=backend)
            r = await request(gw, "POST", "/chat/batch", json={"questions": ["a", "b"]},
                              headers={"accept": "text/event-stream"})
    assert r.status == 200
    results = [data(e) for e in r.events if e.event == "result"]
    assert [x["status"] for x in results] == ["error", "error"]
    assert {x["error"]["code"] for x in results} == {"upstream_unavailable"}
