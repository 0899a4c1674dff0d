"""Shared limits through a real Redis (Debian's redis-server, started per test on a free port).

Two SharedLimits instances in one trio run stand for two gateway processes: each has its
own client, pub/sub subscription and renewal task, and they share only Redis.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

from trio_agent.config import ServerConfig
from trio_agent.errors import KeyLimitError, OverloadedError
from trio_agent.server._shared_limits import SharedLimits, open_shared_limits

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self) -> None:
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (./scripts/test installs Debian's package)"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def config(redis: RedisServer, **kw: Any) -> ServerConfig:
    base: dict[str, Any] = dict(
        redis_url=redis.url,
        max_concurrency=4,
        max_queued=100,
        max_queue_wait=10.0,
        redis_lease_ttl=1.5,
        redis_poll_interval=5.0,  # long: a prompt wake must come from pub/sub
    )
    base.update(kw)
    return ServerConfig(**base)


@asynccontextmanager
async def instances(n: int, cfg: ServerConfig) -> AsyncIterator[list[SharedLimits]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_shared_limits(cfg)) for _ in range(n)]


async def test_global_cap_holds_across_two_instances_over_a_burst(redis: RedisServer) -> None:
    with trio.fail_after(30):
        async with instances(2, config(redis)) as (a, b):
            active = peak = done = 0

            async def one(limits: SharedLimits) -> None:
                nonlocal active, peak, done
                async with limits.lease():
                    active += 1
                    peak = max(peak, active)
                    await trio.sleep(0.02)
                    active -= 1
                done += 1

            async with trio.open_nursery() as nursery:
                for i in range(60):
                    nursery.start_soon(one, (a, b)[i % 2])
            print(f"60 leases over two instances, cap 4: peak {peak}")
            assert done == 60 and peak == 4
            assert a.statistics().in_flight == b.statistics().in_flight == 0
            assert a.statistics().queued == b.statistics().queued == 0


async def test_a_release_elsewhere_wakes_a_waiter_promptly(redis: RedisServer) -> None:
    with trio.fail_after(20):
        async with instances(2, config(redis, max_concurrency=1)) as (a, b):
            woke: list[float] = []
            held = trio.Event()
            release = trio.Event()

            async def holder() -> None:
                async with a.lease():
                    held.set()
                    await release.wait()

            async def waiter() -> None:
                async with b.lease():
                    woke.append(trio.current_time())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(holder)
                await held.wait()
                nursery.start_soon(waiter)
                await trio.sleep(0.3)
                assert not woke and b.statistics().queued == 1
                released_at = trio.current_time()
                release.set()
            latency = woke[0] - released_at
            print(f"wake latency after a release in another process: {latency * 1000:.1f} ms")
            assert latency < 2.5  # the poll interval is 5 s: only pub/sub can be this fast


async def test_queue_wait_runs_out_with_503(redis: RedisServer) -> None:
    with trio.fail_after(20):
        async with instances(1, config(redis, max_concurrency=1, max_queue_wait=0.3)) as (a,):
            async with a.lease():
                start = trio.current_time()
                with pytest.raises(OverloadedError) as info:
                    async with a.lease():
                        pass
                assert 0.3 <= trio.current_time() - start < 3.0
                assert info.value.retry_after is not None and info.value.retry_after >= 1
            async with instances(1, config(redis, max_concurrency=1, max_queued=0)) as (c,):
                async with c.lease():
                    with pytest.raises(OverloadedError):
                        async with a.lease():
                            pass


async def test_a_dead_process_leases_expire_within_the_ttl(redis: RedisServer) -> None:
    cfg = config(redis, max_concurrency=2, redis_lease_ttl=1.5, redis_poll_interval=0.05)
    with trio.fail_after(20):
        async with instances(1, cfg) as (survivor,):
            async with open_shared_limits(cfg) as doomed:
                # The doomed process takes both slots and dies without releasing them.
                # (Entered and never left: that is what a killed process does.)
                await doomed.lease().__aenter__()
                await doomed.lease().__aenter__()
            died_at = trio.current_time()
            async with survivor.lease():
                freed = trio.current_time() - died_at
            print(f"capacity of a dead process freed after {freed:.2f} s (lease ttl 1.5 s)")
            assert 0.5 < freed <= 1.5 + 0.5


async def test_leases_are_renewed_while_held(redis: RedisServer) -> None:
    cfg = config(redis, max_concurrency=1, redis_lease_ttl=0.6, max_queue_wait=0.1)
    with trio.fail_after(20):
        async with instances(2, cfg) as (a, b):
            async with a.lease():
                await trio.sleep(2.0)  # three times the ttl: renewal keeps it
                with pytest.raises(OverloadedError):
                    async with b.lease():
                        pass


async def test_per_key_concurrency_and_rate_hold_across_instances(redis: RedisServer) -> None:
    cfg = config(
        redis, max_concurrency=10, per_key_max_concurrency=1, per_key_rate=2.0, per_key_burst=2
    )
    with trio.fail_after(20):
        async with instances(2, cfg) as (a, b):
            async with a.lease("key-1"):
                with pytest.raises(KeyLimitError):
                    async with b.lease("key-1"):
                        pass
                async with b.lease("key-2"):
                    pass
            # key-1 has used 2 requests of its burst of 2 (one admitted, one refused by concurrency
            # after passing the rate check): the next is refused by the rate, from either instance.
            with pytest.raises(KeyLimitError) as info:
                async with b.lease("key-1"):
                    pass
            assert info.value.retry_after is not None and 0 < info.value.retry_after <= 1.0
            await trio.sleep(info.value.retry_after + 0.05)
            async with a.lease("key-1"):
                pass


async def test_redis_outage_fail_open_then_recovery(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(redis, max_concurrency=4, redis_local_share=2, max_queue_wait=0.2)
    caplog.set_level(logging.INFO, logger="trio_agent.limits")
    with trio.fail_after(30):
        async with instances(1, cfg) as (a,):
            async with a.lease():
                pass
            assert a.healthy
            redis.stop()
            for _ in range(5):
                async with a.lease():
                    pass  # served from the local share
            assert not a.healthy and a.ready and a.status()["mode"] == "local"
            # Only the local share of 2 while Redis is down.
            async with a.lease(), a.lease():
                with pytest.raises(OverloadedError):
                    async with a.lease():
                        pass
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1, "an outage is logged once, not per request"
            redis.start()
            with trio.fail_after(10):
                while not a.healthy:  # noqa: ASYNC110 (the probe's own schedule; bounded above)
                    await trio.sleep(0.05)
            async with a.lease():
                assert a.statistics().in_flight == 1
            assert a.status()["mode"] == "redis"


async def test_redis_outage_fail_closed_refuses(redis: RedisServer) -> None:
    cfg = config(redis, redis_on_error="fail_closed")
    with trio.fail_after(20):
        async with instances(1, cfg) as (a,):
            redis.stop()
            with pytest.raises(OverloadedError) as info:
                async with a.lease():
                    pass
            assert info.value.code == "limits_unavailable"
            # Once known to be down, refusals are immediate.
            with pytest.raises(OverloadedError):
                async with a.lease():
                    pass
            assert not a.ready and a.status()["mode"] == "unavailable"


# -- real gateway processes ------------------------------------------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _gateway(*args: str) -> tuple[subprocess.Popen[str], str]:
    import re
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trio_agent",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-access-log",
            *args,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, f"http://127.0.0.1:{m.group(1)}"
        if not line:
            break
    proc.kill()
    raise AssertionError("gateway did not start")


def _reap(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        if p.stdout is not None:
            p.stdout.close()


async def _metric(client: Any, base: str, name: str) -> float:
    text = (await client.get(base + "/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} missing")


async def test_two_gateway_processes_share_a_global_cap_of_4(redis: RedisServer) -> None:
    import httpx

    upstream, up_url = _gateway(
        "--mock-ttft",
        "0.05",
        "--mock-itl",
        "0.01",
        "--mock-tokens",
        "300",
        "--max-concurrency",
        "200",
        "--max-queued",
        "200",
    )
    shared = [
        "--upstream-url",
        up_url + "/v1",
        "--redis-url",
        redis.url,
        "--max-concurrency",
        "4",
        "--max-queued",
        "100",
        "--max-queue-wait",
        "30",
        "--redis-lease-ttl",
        "2",
    ]
    a, a_url = _gateway(*shared)
    b, b_url = _gateway(*shared)
    try:
        with trio.fail_after(60):
            async with httpx.AsyncClient(timeout=30) as client:
                statuses: list[int] = []

                async def ask(url: str) -> None:
                    r = await client.post(url + "/chat", json={"question": "hi", "max_tokens": 20})
                    statuses.append(r.status_code)

                async with trio.open_nursery() as nursery:
                    for i in range(50):
                        nursery.start_soon(ask, (a_url, b_url)[i % 2])
                peak = await _metric(client, up_url, "trio_agent_backend_streams_peak")
                print(
                    f"50 requests through two gateways sharing a cap of 4: upstream peak {peak:g}"
                )
                assert statuses == [200] * 50
                assert peak == 4

                # Kill one gateway while it holds all 4 slots: the other gets them back within the TTL.
                slow = {"question": "long"}  # 300 tokens, 3 s
                async with trio.open_nursery() as nursery:
                    for _ in range(4):
                        nursery.start_soon(partial_post, client, a_url, slow)
                    await trio.sleep(0.3)
                    a.kill()
                    killed_at = trio.current_time()
                    r = await client.post(b_url + "/chat", json={"question": "after", "max_tokens": 5})
                    freed = trio.current_time() - killed_at
                    nursery.cancel_scope.cancel()
                print(f"a killed gateway's slots came back after {freed:.2f} s (lease ttl 2 s)")
                assert r.status_code == 200
                assert 0.5 < freed <= 2 + 1.0
    finally:
        _reap(a, b, upstream)


async def partial_post(client: Any, url: str, body: dict[str, Any]) -> None:
    import httpx

    try:
        await client.post(url + "/chat", json=body)
    except httpx.HTTPError:
        pass  # its gateway was killed under it
