"""Tokens per second one mock LLM server process streams, and its CPU.

    trio-agent mock-llm --port 8100 --ttft 0 --itl 0 --tokens 2000 &
    python -m benchmarks.mock_llm_tokens http://127.0.0.1:8100 --streams 50 --duration 10 --server-pid $!

N keep-alive connections each request a stream and drain it with plain trio sockets (no HTTP
library: the client must cost far less than the server), back to back, for ``--duration``
seconds (then the open streams are cut). Tokens come from the server's own ``GET /mock/stats`` (before/after);
CPU from ``/proc/PID/stat`` of ``--server-pid``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from urllib.parse import urlsplit

import trio


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _get_json(host: str, port: int, method: str, path: str) -> dict[str, int]:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(
            f"{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\n"
            "connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])  # type: ignore[no-any-return]


async def _worker(host: str, port: int, request: bytes, done: list[int]) -> None:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        while True:
            await stream.send_all(request)
            tail = b""
            while True:
                chunk = await stream.receive_some(262144)
                if not chunk:
                    return
                tail = chunk[-32:] if len(chunk) >= 32 else (tail + chunk)[-32:]
                if tail.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"):
                    break
            done[0] += 1


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--server-pid", type=int)
    args = parser.parse_args()
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = b'{"model":"mock-llm","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    await _get_json(host, port, "POST", "/mock/reset")
    cpu0 = _cpu_seconds(args.server_pid) if args.server_pid else None
    t0 = time.monotonic()
    own0 = time.process_time()
    done = [0]
    with trio.move_on_after(args.duration):  # streams still open at the end are cut
        async with trio.open_nursery() as nursery:
            for _ in range(args.streams):
                nursery.start_soon(_worker, host, port, request, done)
    elapsed = time.monotonic() - t0
    own = time.process_time() - own0
    cpu = _cpu_seconds(args.server_pid) - cpu0 if args.server_pid and cpu0 is not None else None
    stats = await _get_json(host, port, "GET", "/mock/stats")
    line = (
        f"{args.streams} streams, {elapsed:.1f} s: {stats['tokens'] / elapsed:,.0f} tokens/s, "
        f"{done[0]} streams completed"
    )
    if cpu is not None:
        line += (
            f", server CPU {cpu / elapsed:.0%} of a core, "
            f"{cpu / max(1, stats['tokens']) * 1e6:.1f} us CPU per token"
        )
    print(line + f"; this client {own / elapsed:.0%} of a core")


if __name__ == "__main__":
    trio.run(main)
