"""What the shared (Redis) limits cost per request against the local trio ones.

    .venv/bin/python benchmarks/limits_cost.py [--requests 2000] [--concurrency 1]

Starts a redis-server on a free loopback port, then times lease acquire + release
round trips, uncontended, with the in-process Admission and with SharedLimits. Reports
wall time and this process's CPU per request. Bounded by --requests.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import time

import trio

from trio_agent.config import ServerConfig
from trio_agent.server import Admission
from trio_agent.server._shared_limits import open_shared_limits


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _measure(limits: object, n: int, concurrency: int) -> tuple[float, float]:
    lease = limits.lease  # type: ignore[attr-defined]

    async def worker(count: int) -> None:
        for _ in range(count):
            async with lease("bench-key"):
                pass

    wall, cpu = time.perf_counter(), time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker, n // concurrency)
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


async def main(n: int, concurrency: int, url: str) -> None:
    local = Admission(max_concurrency=64, max_queued=64, max_queue_wait=5.0)
    wall, cpu = await _measure(local, n, concurrency)
    print(f"local Admission : {wall * 1e6:8.1f} µs wall, {cpu * 1e6:8.1f} µs CPU per request")
    cfg = ServerConfig(redis_url=url, max_concurrency=64, max_queued=64, per_key_max_concurrency=64)
    async with open_shared_limits(cfg) as shared:
        await _measure(shared, 100, 1)  # warm-up: scripts loaded, connections open
        wall, cpu = await _measure(shared, n, concurrency)
    print(f"Redis SharedLimits: {wall * 1e6:8.1f} µs wall, {cpu * 1e6:8.1f} µs CPU per request")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=1)
    args = ap.parse_args()
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        trio.run(main, args.requests, args.concurrency, f"redis://127.0.0.1:{port}/0")
    finally:
        proc.terminate()
        proc.wait()
