"""Idle connections and active streams: what they cost the gateway, and whether normal
requests still get through.

    .venv/bin/python benchmarks/idle_connections.py [--idle 5000] [--streams 1000]

1. Starts ``trio-agent serve`` (built-in mock, 8 tokens, no delays, ``--keep-alive-timeout
   300`` so idle connections stay), sends a warm-up, reads its RSS; opens ``--idle``
   keep-alive connections, each after one ``GET /healthz``; reads the RSS again (memory per
   idle connection = the difference / connections); then runs ``--clients`` closed-loop
   clients of streamed ``POST /chat/stream`` for ``--seconds`` while the idle connections stay
   open, recording each request's time to first byte (the requirement: under 1 s).
2. Starts a second server whose streams last (``--mock-itl 0.05 --mock-tokens 400``), opens
   ``--streams`` streams and waits for each one's first event, and reads the RSS (memory per
   active stream = the difference from the same server's RSS after warm-up / streams).

Every phase is bounded (``trio.fail_after``). Prints a markdown table; ``--json`` writes one.
Needs about idle + 100 descriptors in this process and in the server (raised to the hard
limit by both).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from trio_agent.http import raise_fd_limit

ROOT = Path(__file__).resolve().parent.parent
BODY = b'{"question": "hello"}'
STREAM = (
    b"POST /chat/stream HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY)
) + BODY
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start_server(*extra: str) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", "trio_agent", "serve", "--port", "0", "--no-access-log",
           "--keep-alive-timeout", "300", "--max-loop-lag", "0", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, int(m.group(1))


async def read_head(stream: trio.SocketStream) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise EOFError(buf)
        buf += chunk
    return buf


async def until_done(stream: trio.SocketStream, buf: bytes) -> None:
    """Read a streamed (chunked) reply to its last chunk."""
    while not buf.endswith(b"0\r\n\r\n"):
        chunk = await stream.receive_some(65536)
        if not chunk:
            return
        buf += chunk


async def open_idle(port: int, n: int, conns: list[trio.SocketStream]) -> None:
    async def one() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(HEALTH)
        await read_head(stream)  # /healthz's small body comes with its head
        conns.append(stream)

    for start in range(0, n, 200):
        async with trio.open_nursery() as nursery:
            for _ in range(min(200, n - start)):
                nursery.start_soon(one)


async def normal_traffic(port: int, clients: int, seconds: float) -> list[float]:
    ttfb: list[float] = []
    end = trio.current_time() + seconds

    async def client() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            while trio.current_time() < end:
                t0 = trio.current_time()
                await stream.send_all(STREAM)
                first = await stream.receive_some(65536)
                ttfb.append(trio.current_time() - t0)
                await until_done(stream, first)
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)
    return ttfb


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"command": " ".join(sys.argv), "idle": args.idle, "streams": args.streams}
    proc, port = start_server("--mock-ttft", "0", "--mock-itl", "0", "--mock-tokens", "8")
    conns: list[trio.SocketStream] = []
    try:
        with trio.fail_after(600):
            await normal_traffic(port, 10, 2.0)  # warm-up
            await trio.sleep(1)
            base = rss_kib(proc.pid)
            t0 = time.monotonic()
            await open_idle(port, args.idle, conns)
            out["idle_open_s"] = round(time.monotonic() - t0, 1)
            await trio.sleep(1)
            with_idle = rss_kib(proc.pid)
            ttfb = await normal_traffic(port, args.clients, args.seconds)
            alive = 0
            for stream in conns:  # still ESTABLISHED (TCP_INFO's first byte): not closed by the server
                info = stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
                alive += info[0] == 1
        out.update(
            rss_base_kib=base,
            rss_with_idle_kib=with_idle,
            kib_per_idle=round((with_idle - base) / max(1, len(conns)), 2),
            idle_opened=len(conns),
            idle_still_open=alive,
            requests_during_idle=len(ttfb),
            ttfb_p50_ms=round(pct(ttfb, 50) * 1000, 1),
            ttfb_p99_ms=round(pct(ttfb, 99) * 1000, 1),
            ttfb_max_ms=round(max(ttfb) * 1000, 1),
        )
    finally:
        for stream in conns:
            await stream.aclose()
        proc.terminate()
        proc.wait(timeout=30)

    proc, port = start_server(
        "--mock-ttft", "0", "--mock-itl", "0.05", "--mock-tokens", "400",
        "--max-concurrency", str(args.streams), "--max-queued", "100",
    )  # fmt: skip
    streams: list[trio.SocketStream] = []
    warm: list[trio.SocketStream] = []
    try:
        with trio.fail_after(300):
            await open_idle(port, 10, warm)  # the server's first requests, then its base
            await trio.sleep(1)
            base = rss_kib(proc.pid)

            async def one() -> None:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(STREAM)
                buf = await read_head(stream)
                while b"data:" not in buf:  # the first event
                    buf += await stream.receive_some(65536)
                streams.append(stream)

            async with trio.open_nursery() as nursery:
                for _ in range(args.streams):
                    nursery.start_soon(one)
            await trio.sleep(1)
            active = rss_kib(proc.pid)
        out.update(
            rss_stream_base_kib=base,
            rss_with_streams_kib=active,
            streams_open=len(streams),
            kib_per_stream=round((active - base) / max(1, len(streams)), 2),
        )
    finally:
        for stream in (*warm, *streams):
            await stream.aclose()
        proc.terminate()
        proc.wait(timeout=30)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=int, default=5000)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=20, help="normal-traffic clients")
    ap.add_argument("--seconds", type=float, default=10.0, help="normal traffic, seconds")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    limit = raise_fd_limit()
    if limit.soft < a.idle + 200:
        sys.exit(f"need {a.idle + 200} descriptors, have {limit}")
    r = trio.run(main, a)
    print(f"`{r['command']}`\n")
    print("| idle connections | RSS before | RSS with them | per idle connection | normal requests meanwhile | TTFB p50 | p99 | max | idle still open |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {r['idle_opened']:,} | {r['rss_base_kib'] / 1024:.1f} MiB | {r['rss_with_idle_kib'] / 1024:.1f} MiB "
          f"| {r['kib_per_idle']:.1f} KiB | {r['requests_during_idle']:,} | {r['ttfb_p50_ms']} ms "
          f"| {r['ttfb_p99_ms']} ms | {r['ttfb_max_ms']} ms | {r['idle_still_open']:,} |")
    print()
    print("| active streams | RSS before | RSS with them | per active stream |")
    print("|---|---|---|---|")
    print(f"| {r['streams_open']:,} | {r['rss_stream_base_kib'] / 1024:.1f} MiB "
          f"| {r['rss_with_streams_kib'] / 1024:.1f} MiB | {r['kib_per_stream']:.1f} KiB |")
    if a.json:
        a.json.write_text(json.dumps(r, indent=1) + "\n")
