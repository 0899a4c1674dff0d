"""Upstream faults: the gateway proxies to a scripted fault-injecting HTTP/1.1 upstream.

Retryable statuses before the first token are retried within budget; every fault after the
first token ends the stream with exactly one ``error`` event and no retry (the upstream's
request count says so); a 100 % outage costs the upstream at most 1.1x the incoming requests.

Figures print with ``pytest -s -m e2e tests/test_reliability_upstream.py``.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from tests._reliability import (
    Fault,
    FaultUpstream,
    RawResponse,
    mid_stream,
    ok_stream,
    open_fault_upstream,
    raw_request,
    running_gateway,
    slow_first_token,
    status_fault,
)
from trio_agent.config import ServerConfig, UpstreamConfig
from trio_agent.server import Gateway

Q = {"question": "hello"}


def gateway_config(upstream: FaultUpstream, **overrides: Any) -> ServerConfig:
    up: dict[str, Any] = {
        "base_url": upstream.base_url,
        "api_key": "sk-upstream-test",
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "first_token_timeout": 2.0,
        "idle_timeout": 0.3,
        "total_timeout": 5.0,
        "seed": 1,
        # These tests are about retries on one upstream; ejection (which would turn the
        # later requests of an outage into fast 503s) is tested in test_reliability_failover.py.
        "eject_after_failures": 1000,
    }
    server: dict[str, Any] = {"port": 0, "access_log": False, "request_timeout": 5.0}
    for key, value in overrides.items():
        if key in up or key.startswith(("retry_", "eject_")) or key == "max_attempts":
            up[key] = value
        else:
            server[key] = value
    return ServerConfig(upstream=UpstreamConfig(**up), **server)


def terminal(r: RawResponse) -> tuple[str, dict[str, Any]]:
    """The one terminal event of a stream (asserts there is exactly one, and it is last)."""
    assert r.status == 200 and r.complete and not r.reset, (r.status, r.body[:300])
    kinds = r.kinds
    ends = [i for i, k in enumerate(kinds) if k in ("done", "error")]
    assert ends == [len(kinds) - 1], kinds
    assert kinds[0] == "thinking"
    return kinds[-1], orjson.loads(r.events[-1].data)


def released(gw: Gateway) -> None:
    s = gw.limits.statistics()
    assert (s.in_flight, s.queued) == (0, 0)
    assert gw.drain.active == 0
    assert gw.backend.statistics().in_flight == 0  # type: ignore[attr-defined]


def script(*faults: Fault) -> Any:
    """The n-th request gets the n-th fault; the last one repeats."""
    return lambda n: faults[min(n, len(faults)) - 1]


@pytest.mark.e2e
async def test_retryable_statuses_before_the_first_token_are_retried() -> None:
    with trio.fail_after(10):
        faults = script(
            status_fault(503), status_fault(429, headers={"Retry-After": "0"}), ok_stream(3)
        )
        async with open_fault_upstream(faults) as up, running_gateway(gateway_config(up)) as srv:
            r = await raw_request(srv.port, "POST", "/chat/stream", json=Q)
            kind, _ = terminal(r)
            assert kind == "done"
            tokens = "".join(orjson.loads(e.data)["content"] for e in r.events if e.event == "token")
            assert tokens == "w0 w1 w2 "
            assert up.requests == 3
            assert srv.gw.backend.statistics().retries == 2  # type: ignore[attr-defined]
            released(srv.gw)


@pytest.mark.e2e
@pytest.mark.parametrize("code", [429, 500, 503])
async def test_retries_run_out_then_one_clean_error(code: int) -> None:
    with trio.fail_after(10):
        async with open_fault_upstream(script(status_fault(code))) as up, running_gateway(
            gateway_config(up, max_attempts=3, retry_budget_min=10)
        ) as srv:
            r = await raw_request(srv.port, "POST", "/chat/stream", json=Q)
            kind, data = terminal(r)
            assert kind == "error"
            assert data["code"] == "upstream_status" and data["upstream_status"] == code
            assert r.kinds == ["thinking", "error"]
            assert up.requests == 3
            # The same through the JSON endpoint: a 502 with our error body.
            j = await raw_request(srv.port, "POST", "/chat", json=Q)
            assert j.status == 502 and j.json()["error"]["code"] == "upstream_status"
            assert up.requests == 6
            released(srv.gw)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("stall", "upstream_idle_timeout"),
        ("drop", "upstream_unavailable"),
        ("error", "upstream_stream_error"),
    ],
)
async def test_a_fault_after_the_first_token_is_one_error_event_and_never_retried(
    fault: str, code: str
) -> None:
    with trio.fail_after(10):
        async with open_fault_upstream(script(mid_stream(fault))) as up, running_gateway(
            gateway_config(up, idle_timeout=0.3)
        ) as srv:
            t0 = trio.current_time()
            r = await raw_request(srv.port, "POST", "/chat/stream", json=Q)
            took = trio.current_time() - t0
            kind, data = terminal(r)
            assert kind == "error" and data["code"] == code, data
            text = "".join(orjson.loads(e.data)["content"] for e in r.events if e.event == "token")
            assert text == "w0 w1 w2 "
            print(f"\nmid-stream {fault}: error event {data['code']} after {took * 1000:.0f} ms")
            await trio.sleep(0.05)  # lets a (wrong) retry reach the upstream
            assert up.requests == 1
            if fault == "stall":
                assert 0.3 <= took < 3.0
                assert up.closed_by_peer == 1  # the gateway closed the stalled connection
            released(srv.gw)


@pytest.mark.e2e
async def test_first_token_beyond_its_deadline() -> None:
    with trio.fail_after(10):
        async with open_fault_upstream(script(slow_first_token(5.0))) as up, running_gateway(
            gateway_config(up, first_token_timeout=0.4, idle_timeout=2.0)
        ) as srv:
            t0 = trio.current_time()
            r = await raw_request(srv.port, "POST", "/chat/stream", json=Q)
            took = trio.current_time() - t0
            kind, data = terminal(r)
            assert kind == "error" and data["code"] == "upstream_first_token_timeout"
            assert 0.4 <= took < 4.0
            assert up.requests == 1
            with trio.fail_after(1):
                while up.closed_by_peer < 1:  # noqa: ASYNC110  (closed, not leaked)
                    await trio.sleep(0.01)
            released(srv.gw)
        # The gateway's own request deadline is tighter than the upstream's.
        async with open_fault_upstream(script(slow_first_token(5.0))) as up, running_gateway(
            gateway_config(up, first_token_timeout=3.0, idle_timeout=3.0, request_timeout=0.4)
        ) as srv:
            t0 = trio.current_time()
            r = await raw_request(srv.port, "POST", "/chat/stream", json=Q)
            took = trio.current_time() - t0
            kind, data = terminal(r)
            assert kind == "error" and data["code"] == "timeout"
            assert 0.4 <= took < 4.0
            released(srv.gw)


@pytest.mark.e2e
async def test_a_first_token_within_first_token_timeout_but_past_idle_timeout_arrives() -> None:
    with trio.fail_after(10):
        async with open_fault_upstream(script(slow_first_token(0.6))) as up, running_gateway(
            gateway_config(up, first_token_timeout=2.0, idle_timeout=0.3)
        ) as srv:
            r = await raw_request(srv.port, "POST", "/chat/stream", json=Q)
            kind, data = terminal(r)
            assert up.requests == 1
            assert kind == "done", data


@pytest.mark.e2e
async def test_outage_costs_the_upstream_at_most_1_1x_the_incoming_requests() -> None:
    incoming = 200
    healthy = trio.Event()

    def outage(n: int) -> Fault:
        return ok_stream(2) if healthy.is_set() else status_fault(503)

    with trio.fail_after(20):
        async with open_fault_upstream(outage) as up, running_gateway(
            gateway_config(up, max_attempts=5, retry_budget_min=0, max_concurrency=64)
        ) as srv:
            results: list[RawResponse] = []

            async def one() -> None:
                results.append(await raw_request(srv.port, "POST", "/chat/stream", json=Q))

            t0 = trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(incoming):  # 200 requests over about a second
                    nursery.start_soon(one)
                    await trio.sleep(0.005)
            took = trio.current_time() - t0
            attempts = up.requests
            stats = srv.gw.backend.statistics()  # type: ignore[attr-defined]
            codes: dict[str, int] = {}
            for r in results:
                kind, data = terminal(r)
                assert kind == "error"
                codes[data["code"]] = codes.get(data["code"], 0) + 1
            print(
                f"\noutage: {incoming} incoming requests in {took:.2f}s -> {attempts} upstream "
                f"attempts ({attempts / incoming:.3f}x), retries {stats.retries}; "
                f"client errors {codes}"
            )
            assert attempts <= 1.1 * incoming
            assert stats.retries == attempts - incoming
            assert set(codes) <= {"upstream_status"}  # a refused retry is not another code
            # The upstream recovers: the next request streams normally.
            healthy.set()
            kind, _ = terminal(await raw_request(srv.port, "POST", "/chat/stream", json=Q))
            assert kind == "done"
            released(srv.gw)
