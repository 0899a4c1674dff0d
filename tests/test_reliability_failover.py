"""Several upstreams, end to end: a gateway over two and three ``trio-agent mock-llm`` processes.

One is killed mid-run: its streams in flight end with one clean ``error`` event, new requests
go to the others with no error, and it is ejected; brought back on the same port, it rejoins
after one probe. All killed: requests fail fast with 503 ``upstream_unavailable`` and a
``Retry-After``, and ``/readyz`` says so when asked to. The OpenAI routes and the agent
routes (``/agent/stream`` and the library's ``open_agent``) use the same routing.

Figures print with ``pytest -s -m e2e tests/test_reliability_failover.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from tests._reliability import RawResponse, raw_request, running_gateway
from trio_agent.agent import Done, open_agent, tool
from trio_agent.config import ServerConfig, UpstreamConfig, UpstreamTarget
from trio_agent.llm import RouterBackend, open_router_backend

ROOT = Path(__file__).resolve().parent.parent
Q = {"question": "hello", "max_tokens": 3}


class MockProcess:
    """One ``trio-agent mock-llm`` process; ``start(port)`` again after ``kill()`` brings it back."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.port = 0
        self.proc: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_agent", "mock-llm", "--port", str(self.port), *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ},
        )
        assert proc.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = await proc.stdout.receive_some(1)
            assert chunk, "mock-llm exited before printing its URL"
            line += chunk
        self.port = int(line.decode().rsplit(":", 1)[1])
        self.proc = proc

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@asynccontextmanager
async def mock_processes(n: int, *args: str) -> AsyncIterator[list[MockProcess]]:
    mocks = [MockProcess(*args) for _ in range(n)]
    try:
        for m in mocks:
            await m.start()
        yield mocks
    finally:
        with trio.CancelScope(shield=True):
            for m in mocks:
                await m.kill()


def upstream_config(mocks: list[MockProcess], **overrides: Any) -> UpstreamConfig:
    values: dict[str, Any] = {
        "base_url": mocks[0].url,
        "targets": tuple(UpstreamTarget(url=m.url) for m in mocks),
        "first_token_timeout": 5.0,
        "idle_timeout": 2.0,
        "connect_timeout": 2.0,
        "eject_delay": 1.0,
        "eject_max_delay": 4.0,
        "seed": 1,
        **overrides,
    }
    return UpstreamConfig(**values)


def gateway_config(mocks: list[MockProcess], **upstream: Any) -> ServerConfig:
    return ServerConfig(
        port=0, access_log=False, request_timeout=20.0, ready_requires_upstream=True,
        upstream=upstream_config(mocks, **upstream),
    )


def terminal(r: RawResponse) -> tuple[str, dict[str, Any]]:
    """The one terminal event of a stream (asserts there is exactly one, and it is last)."""
    assert r.status == 200 and r.complete and not r.reset, (r.status, r.body[:300])
    ends = [i for i, k in enumerate(r.kinds) if k in ("done", "error")]
    assert ends == [len(r.kinds) - 1], r.kinds
    return r.kinds[-1], orjson.loads(r.events[-1].data)


def router_of(gw: Any) -> RouterBackend:
    backend = gw.backend
    assert isinstance(backend, RouterBackend)
    return backend


@pytest.mark.e2e
async def test_one_of_two_killed_mid_run_then_brought_back() -> None:
    with trio.fail_after(60):
        async with mock_processes(2, "--ttft", "0.05", "--itl", "0.05", "--tokens", "40") as mocks:
            async with running_gateway(gateway_config(mocks)) as srv:
                router = router_of(srv.gw)
                results: list[RawResponse] = []

                async def one(body: dict[str, Any]) -> None:
                    results.append(await raw_request(srv.port, "POST", "/chat/stream", json=body))

                async with trio.open_nursery() as nursery:
                    for _ in range(4):  # two on each upstream (least in flight)
                        nursery.start_soon(one, {"question": "long"})
                    await trio.sleep(0.5)  # every stream has tokens out
                    assert [u.in_flight for u in router.statistics().upstreams] == [2, 2]
                    await mocks[0].kill()
                kinds = [terminal(r)[0] for r in results]
                assert sorted(kinds) == ["done", "done", "error", "error"], kinds
                for r in results:
                    kind, data = terminal(r)
                    if kind == "error":  # one clean error event after the tokens it had
                        assert "token" in r.kinds and data["code"].startswith("upstream_"), data
                errors_mid_stream = {terminal(r)[1]["code"] for r in results if terminal(r)[0] == "error"}

                # New requests: all served by the other one, with no error; the dead one is ejected.
                t0 = trio.current_time()
                for _ in range(10):
                    r = await raw_request(srv.port, "POST", "/chat", json=Q)
                    assert r.status == 200, r.body
                took = trio.current_time() - t0
                s = router.statistics()
                assert s.upstreams[0].state == "ejected" and s.upstreams[1].state == "up"
                assert s.upstreams[0].errors.get("upstream_unavailable", 0) >= 3
                print(
                    f"\nkilled mid-run: streams on it ended with {errors_mid_stream}; 10 new requests "
                    f"in {took:.2f}s, {s.failovers} failed over at once, dead upstream ejected"
                )
                metrics = (await raw_request(srv.port, "GET", "/metrics")).body.decode()
                assert f'trio_agent_upstream_state{{upstream="{mocks[0].url}",state="ejected"}} 1' in metrics

                # Brought back on its port: after its ejection delay, one probe, then traffic again.
                await mocks[0].start()
                await trio.sleep(router.statistics().upstreams[0].ejected_for)
                r = await raw_request(srv.port, "POST", "/chat", json=Q)
                assert r.status == 200
                s = router.statistics()
                assert s.upstreams[0].state == "up", s.upstreams[0]
                before = s.upstreams[0].attempts
                for _ in range(4):
                    assert (await raw_request(srv.port, "POST", "/chat", json=Q)).status == 200
                assert router.statistics().upstreams[0].attempts == before + 2  # its share again
                assert router.statistics().in_flight == 0


@pytest.mark.e2e
async def test_three_upstreams_all_down_fail_fast_with_retry_after() -> None:
    with trio.fail_after(60):
        async with mock_processes(3, "--ttft", "0.01", "--itl", "0.001", "--tokens", "5") as mocks:
            async with running_gateway(gateway_config(mocks, eject_after_failures=2, eject_delay=4.0)) as srv:
                router = router_of(srv.gw)
                for _ in range(6):  # spread over all three
                    assert (await raw_request(srv.port, "POST", "/chat", json=Q)).status == 200
                assert [u.attempts for u in router.statistics().upstreams] == [2, 2, 2]
                assert (await raw_request(srv.port, "GET", "/readyz")).status == 200
                for m in mocks:
                    await m.kill()
                # Until each has failed twice, requests try them all (and get 502).
                statuses = []
                for _ in range(4):
                    statuses.append((await raw_request(srv.port, "POST", "/chat", json=Q)).status)
                    if all(u.state == "ejected" for u in router.statistics().upstreams):
                        break
                assert set(statuses) == {502}, statuses
                assert [u.state for u in router.statistics().upstreams] == ["ejected"] * 3
                # Then every route fails fast: 503 upstream_unavailable with Retry-After.
                worst = 0.0
                for path, body in (
                    ("/chat", Q),
                    ("/chat/stream", Q),
                    ("/v1/chat/completions", {"model": "mock-llm", "messages": [{"role": "user", "content": "x"}]}),
                    ("/v1/embeddings", {"model": "mock-llm", "input": "x"}),
                ):
                    r = await raw_request(srv.port, "POST", path, json=body)
                    worst = max(worst, r.ended_at - r.sent_at)
                    assert r.status == 503, (path, r.status, r.body)
                    assert 1 <= int(r.headers["retry-after"]) <= 4
                    code = r.json()["error"]["code"]
                    assert code == "upstream_unavailable", (path, code)
                assert worst < 1.0  # not a connect timeout (2 s) each
                r = await raw_request(srv.port, "GET", "/readyz")
                assert r.status == 503 and r.json()["status"] == "upstream_unavailable"
                print(f"\nall three down: fast 503s, slowest {worst * 1000:.1f} ms, Retry-After {r.headers['retry-after']}")
                # One comes back: after its delay a request probes it, and the gateway is ready again.
                await mocks[1].start()
                await trio.sleep(max(u.ejected_for for u in router.statistics().upstreams))
                for _ in range(3):  # a probe that lands on a dead one fails over to the next due one
                    r = await raw_request(srv.port, "POST", "/chat", json=Q)
                    if r.status == 200:
                        break
                assert r.status == 200, r.body
                assert router.statistics().upstreams[1].state == "up"
                assert (await raw_request(srv.port, "GET", "/readyz")).status == 200


@tool
async def lookup(city: str) -> str:
    """Look a city up.

    Args:
        city: The city's name.
    """
    return f"{city}: sunny"


@pytest.mark.e2e
async def test_the_openai_routes_and_the_agent_use_the_same_routing() -> None:
    with trio.fail_after(60):
        async with mock_processes(3, "--ttft", "0.01", "--itl", "0.001", "--tokens", "5") as mocks:
            async with running_gateway(gateway_config(mocks)) as srv:
                router = router_of(srv.gw)
                chat = {"model": "mock-llm", "messages": [{"role": "user", "content": "x"}]}
                for path, body in (
                    ("/v1/chat/completions", chat),
                    ("/v1/chat/completions", {**chat, "stream": True}),
                    ("/v1/embeddings", {"model": "mock-llm", "input": "x"}),
                ):
                    for _ in range(3):
                        r = await raw_request(srv.port, "POST", path, json=body)
                        assert r.status == 200, (path, r.body)
                assert [u.attempts for u in router.statistics().upstreams] == [3, 3, 3]
                await mocks[2].kill()
                for _ in range(9):  # a third of them try the dead one first, and fail over
                    r = await raw_request(srv.port, "POST", "/v1/embeddings", json={"model": "mock-llm", "input": "x"})
                    assert r.status == 200
                s = router.statistics()
                assert s.upstreams[2].state == "ejected" and s.failovers == 3
                # The agent route's model calls take the same routing: the dead one is skipped.
                before = [u.attempts for u in router.statistics().upstreams]
                for _ in range(2):
                    r = await raw_request(srv.port, "POST", "/agent/stream", json={"question": "Weather in Paris?"})
                    assert terminal(r)[0] == "done", r.kinds
                after = [u.attempts for u in router.statistics().upstreams]
                assert after[2] == before[2] and sum(after) - sum(before) >= 4  # two steps per run at least
            # The agent library over the same router: every model call routed, the dead one skipped.
            async with AsyncExitStack() as stack:
                backend = await stack.enter_async_context(open_router_backend(upstream_config(mocks)))
                agent = await stack.enter_async_context(open_agent(backend, tools=[lookup]))
                for _ in range(3):
                    async with agent.run("Weather in Paris?", max_steps=2) as events:
                        kinds = [e async for e in events]
                    assert isinstance(kinds[-1], Done)
                ups = backend.statistics().upstreams
                assert ups[0].attempts > 0 and ups[1].attempts > 0
                assert ups[2].errors.get("upstream_unavailable", 0) == ups[2].attempts
                assert backend.statistics().in_flight == 0
