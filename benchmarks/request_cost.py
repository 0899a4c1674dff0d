"""Server CPU per plain (non-streamed) request: a closed loop of keep-alive requests.

    python -m benchmarks.request_cost --port PORT --pid PID [--method POST --path /chat/stream]

``--conns`` connections each send a request, read the whole response
(``Content-Length`` framed) and send the next, for ``--seconds``; the
server's CPU (user + system, from ``/proc/PID/stat``) over that time, divided
by the responses, is the figure. A connection the server closes (Hypercorn
recycles one after 1000 requests) is reopened. The generator shares the
machine's cores with the server, so figures move by about 20 %.

Used for the per-request figures in docs/decisions/002-lean-connection-server.md
(a refusal, a bare ASGI app under Hypercorn and uvicorn).
"""

from __future__ import annotations

import argparse
import os
import time

import trio

_BODY = b'{"messages":[{"role":"user","content":"hi"}]}'


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _request(method: str, path: str) -> bytes:
    body = _BODY if method == "POST" else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _loop(port: int, request: bytes, end: float, statuses: dict[str, int]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buf = b""
    while trio.current_time() < end:
        await stream.send_all(request)
        while True:
            i = buf.find(b"\r\n\r\n")
            if i >= 0:
                head = buf[:i].decode("latin-1")
                length = 0
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                if len(buf) >= i + 4 + length:
                    status = head.split(" ")[1]
                    statuses[status] = statuses.get(status, 0) + 1
                    buf = buf[i + 4 + length :]
                    break
            data = await stream.receive_some(65536)
            if not data:  # closed by the server: reopen and ask again
                await stream.aclose()
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                buf = b""
                break
            buf += data
    await stream.aclose()


async def _main(args: argparse.Namespace) -> None:
    request = _request(args.method, args.path)
    statuses: dict[str, int] = {}
    cpu0, t0 = _cpu_seconds(args.pid), time.perf_counter()
    end = trio.current_time() + args.seconds
    async with trio.open_nursery() as nursery:
        for _ in range(args.conns):
            nursery.start_soon(_loop, args.port, request, end, statuses)
    elapsed, cpu = time.perf_counter() - t0, _cpu_seconds(args.pid) - cpu0
    done = sum(statuses.values())
    print(
        f"{args.method} {args.path}: {done / elapsed:.0f} req/s, server CPU {cpu / elapsed:.0%} of a core, "
        f"{cpu / done * 1e6 if done else float('nan'):.0f} us per request, statuses {statuses}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True, help="the server's process id")
    p.add_argument("--method", default="GET")
    p.add_argument("--path", default="/healthz")
    p.add_argument("--conns", type=int, default=10)
    p.add_argument("--seconds", type=float, default=3.0)
    trio.run(_main, p.parse_args())


if __name__ == "__main__":
    main()
