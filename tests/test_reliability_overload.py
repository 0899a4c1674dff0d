"""Overload: open-loop Poisson load at about 5x capacity against a real Hypercorn on port 0.

Every request must end as a complete stream with exactly one ``done``, or as an explicit
503/429 with ``Retry-After`` and a JSON error body, on time and without a reset; the upstream
is called exactly once per admitted request; the queue never exceeds its bound; afterwards
every counter of capacity is back to zero and an unloaded request is as fast as before.

Figures print with ``pytest -s -m e2e tests/test_reliability_overload.py``.
"""

from __future__ import annotations

import random
import statistics

import orjson
import pytest
import trio

from tests._reliability import RawResponse, percentile, raw_request, running_gateway
from trio_agent.config import MockLLMConfig, ServerConfig
from trio_agent.llm import MockLLM

MAX_CONCURRENCY = 8
MAX_QUEUED = 8
MAX_QUEUE_WAIT = 0.1
REQUEST_TIMEOUT = 3.0
TTFT, ITL, TOKENS = 0.05, 0.01, 20
REQUESTS = 300
# One request holds its slot for about ttft + (tokens - 1) * itl.
CAPACITY = MAX_CONCURRENCY / (TTFT + (TOKENS - 1) * ITL)
RATE = 5 * CAPACITY
BODY = orjson.dumps({"question": "overload"})


async def _ttft(port: int) -> float:
    r = await raw_request(port, "POST", "/chat/stream", BODY)
    assert r.status == 200 and r.kinds[-1] == "done" and r.first_token_at is not None
    return r.first_token_at - r.sent_at


async def _unloaded_ttft(port: int) -> float:
    return statistics.median([await _ttft(port) for _ in range(3)])


def _check_outcome(i: int, r: RawResponse) -> str:
    """'done' or 'shed'; anything else fails the test with the request's index."""
    assert not r.reset, f"request {i}: connection reset"
    assert r.complete, f"request {i}: response not complete ({r.status}, {r.body[:200]!r})"
    if r.status == 200:
        kinds = r.kinds
        terminal = [k for k in kinds if k in ("done", "error")]
        assert terminal == ["done"], f"request {i}: terminal events {terminal}"
        assert kinds[0] == "thinking" and kinds[-1] == "done", f"request {i}: {kinds}"
        assert kinds.count("token") >= 1
        return "done"
    assert r.status in (503, 429), f"request {i}: status {r.status}"
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] in ("overloaded", "rate_limited") and err["retryable"] is True
    assert err["retry_after"] >= 1
    return "shed"


@pytest.mark.e2e
async def test_open_loop_overload_at_5x_capacity() -> None:
    with trio.fail_after(30):
        llm = MockLLM(MockLLMConfig(ttft=TTFT, itl=ITL, tokens=TOKENS))
        config = ServerConfig(
            port=0,
            access_log=False,
            max_concurrency=MAX_CONCURRENCY,
            max_queued=MAX_QUEUED,
            max_queue_wait=MAX_QUEUE_WAIT,
            request_timeout=REQUEST_TIMEOUT,
            # The load generator shares this trio run: its own work would count as the
            # server's scheduler lag. This test is about the admission cap and the queue.
            max_loop_lag=0,
        )
        async with running_gateway(config, backend=llm) as srv:
            gw, port = srv.gw, srv.port
            before = await _unloaded_ttft(port)
            admitted_before = gw.limits.statistics().admitted
            started_before = llm.statistics().started

            results: list[RawResponse | None] = [None] * REQUESTS
            late: list[int] = []
            peak = {"queued": 0, "in_flight": 0, "active": 0}
            sampling = trio.CancelScope()

            async def sample() -> None:
                with sampling:
                    while True:
                        s = gw.limits.statistics()
                        peak["queued"] = max(peak["queued"], s.queued)
                        peak["in_flight"] = max(peak["in_flight"], s.in_flight)
                        peak["active"] = max(peak["active"], llm.statistics().active)
                        await trio.sleep(0.001)

            async def one(i: int) -> None:
                with trio.move_on_after(REQUEST_TIMEOUT + 1.0) as scope:
                    results[i] = await raw_request(port, "POST", "/chat/stream", BODY)
                if scope.cancelled_caught:
                    late.append(i)

            rng = random.Random(20261125)
            t0 = trio.current_time()
            async with trio.open_nursery() as sampler:
                sampler.start_soon(sample)
                async with trio.open_nursery() as clients:
                    due = t0
                    for i in range(REQUESTS):  # open loop: arrivals never wait for answers
                        due += rng.expovariate(RATE)
                        await trio.sleep_until(due)
                        clients.start_soon(one, i)
                    sent_for = trio.current_time() - t0
                sampling.cancel()
            elapsed = trio.current_time() - t0

            assert late == [], f"requests past their deadline + 1 s: {late}"
            outcomes = [_check_outcome(i, r) for i, r in enumerate(results) if r is not None]
            assert len(outcomes) == REQUESTS
            done = outcomes.count("done")
            shed = outcomes.count("shed")
            stats = gw.limits.statistics()
            admitted = stats.admitted - admitted_before
            upstream_calls = llm.statistics().started - started_before
            ok_latency = [r.ended_at - r.sent_at for r in results if r is not None and r.status == 200]
            shed_latency = [r.ended_at - r.sent_at for r in results if r is not None and r.status != 200]

            after = await _unloaded_ttft(port)
            print(
                f"\noverload: {REQUESTS} requests at {RATE:.0f}/s (5x capacity {CAPACITY:.1f}/s) "
                f"sent in {sent_for:.2f}s, all ended in {elapsed:.2f}s\n"
                f"  done {done}, shed {shed} (queue_full {stats.shed_full}, "
                f"queue_timeout {stats.shed_timeout}), resets 0, late 0\n"
                f"  admitted {admitted} = upstream calls {upstream_calls}; peak queued "
                f"{peak['queued']}/{MAX_QUEUED}, peak in flight {peak['in_flight']}/{MAX_CONCURRENCY}, "
                f"peak upstream active {peak['active']}\n"
                f"  stream total p50 {percentile(ok_latency, 50) * 1000:.0f} ms p99 "
                f"{percentile(ok_latency, 99) * 1000:.0f} ms; 503 p50 "
                f"{percentile(shed_latency, 50) * 1000:.1f} ms p99 {percentile(shed_latency, 99) * 1000:.1f} ms\n"
                f"  unloaded TTFT before {before * 1000:.1f} ms, after {after * 1000:.1f} ms"
            )

            # It really was overload: a large share refused, and the cap was reached.
            assert shed >= REQUESTS // 3
            assert done >= MAX_CONCURRENCY
            assert peak["in_flight"] == MAX_CONCURRENCY
            # Bounds held.
            assert peak["queued"] <= MAX_QUEUED
            assert peak["active"] <= MAX_CONCURRENCY
            assert upstream_calls == admitted == done
            # A refusal is decided at once, or after at most max_queue_wait.
            assert percentile(shed_latency, 99) < MAX_QUEUE_WAIT + 0.5
            # Everything is released.
            assert (stats.in_flight, stats.queued, stats.keys_in_flight) == (0, 0, 0)
            assert llm.statistics().active == 0
            assert gw.drain.active == 0
            # Recovery: unloaded TTFT is back to its unloaded level.
            assert after <= before * 1.5 + 0.02
