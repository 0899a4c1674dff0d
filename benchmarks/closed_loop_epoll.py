"""A closed loop of SSE chat streams from one epoll loop: first tokens at saturation (issue 20).

``trio-agent bench`` runs on trio, and at 1,000 streams its own scheduler's
passes would add to the times it measures. This generator is a plain
``select.epoll`` loop, cheap enough that one core drives 1,000 streams of
either server with room to spare (its own CPU is reported). Each of
``--streams`` keep-alive connections sends ``POST /chat/stream``, reads the
chunked SSE answer to its end and sends the next request at once; a 503 is
counted and its request sent again at once, as a closed-loop client does.

Over the window (after ``--warmup`` seconds, ``--duration`` long) it reports
the requests completed ``ok``, the TTFT (from sending to the first
``event: token`` bytes) of the requests sent in the window, the 503s, the
server's CPU (``/proc/PID/stat``, with ``--server-pid``) and its own. One
JSON line on stdout. Bounded: it stops ``--grace`` seconds after the window.
Linux only (epoll, /proc)::

    taskset -c 0 trio-agent serve --port 8020 --mock-ttft 0 --mock-itl 0.01 --mock-tokens 64 \\
        --no-access-log --max-concurrency 5000 --max-queued 5000 &
    taskset -c 1 python benchmarks/closed_loop_epoll.py --port 8020 --streams 1000 --server-pid $!
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import select
import socket
import time

TOKEN = b"event: token"
_END = b"\r\n0\r\n\r\n"  # the last chunk of a chunked body, after the previous chunk's CRLF


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Conn:
    """One keep-alive connection and the request it has in flight."""

    __slots__ = ("chunked", "error", "events", "fd", "head", "in_body", "remaining", "sock",
                 "status", "t_first", "t_send", "tail")  # fmt: skip

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.reset()

    def reset(self) -> None:
        self.head = b""
        self.in_body = False
        self.chunked = False
        self.remaining = 0
        self.status = 0
        self.t_send = 0.0
        self.t_first = 0.0
        self.tail = b""
        self.events = 0
        self.error = False


def percentile(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))]


def run(args: argparse.Namespace) -> dict[str, object]:
    body = b'{"question": "hello there"}'
    request = (
        f"POST /chat/stream HTTP/1.1\r\nhost: {args.host}:{args.port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    ep = select.epoll()
    conns: dict[int, Conn] = {}
    now = time.monotonic

    def connect() -> Conn:
        s = socket.create_connection((args.host, args.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        c = Conn(s)
        conns[c.fd] = c
        ep.register(c.fd, select.EPOLLIN)
        return c

    def send(c: Conn) -> None:
        c.reset()
        c.t_send = now()
        c.sock.send(request)  # a few hundred bytes to a socket with nothing in flight

    t0 = now()
    w0 = t0 + args.warmup
    w1 = w0 + args.duration
    stop = w1 + args.grace
    done: list[tuple[float, int, bool, int]] = []  # (end, status, error, token events)
    ttft: list[float] = []
    reconnects = 0
    for _ in range(args.streams):
        send(connect())
    ru0 = ru1 = None
    srv0 = srv1 = 0.0
    while (t := now()) < stop:
        if ru0 is None and t >= w0:
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            srv0 = proc_cpu(args.server_pid) if args.server_pid else 0.0
        if ru1 is None and t >= w1:
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            srv1 = proc_cpu(args.server_pid) if args.server_pid else 0.0
        for fd, _ in ep.poll(0.05):
            c = conns.get(fd)
            if c is None:
                continue
            try:
                data = c.sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.ECONNRESET, errno.EPIPE):
                    raise
                data = b""
            t = now()
            if not data:  # the server closed it: an error if a request was in flight
                if c.t_send:
                    done.append((t, c.status or -1, True, c.events))
                ep.unregister(fd)
                del conns[fd]
                c.sock.close()
                reconnects += 1
                send(connect())
                continue
            if not c.in_body:
                buf = c.head + data
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    c.head = buf
                    continue
                head = buf[:i].decode("latin-1").lower()
                c.status = int(head[9:12])
                c.in_body = True
                c.chunked = "transfer-encoding: chunked" in head
                if not c.chunked:
                    for line in head.split("\r\n"):
                        if line.startswith("content-length:"):
                            c.remaining = int(line.split(":", 1)[1])
                data = buf[i + 4 :]
            if c.chunked:
                joined = c.tail + data
                if not c.t_first and TOKEN in joined:
                    c.t_first = t
                    if w0 <= c.t_send < w1 and c.status == 200:
                        ttft.append((t - c.t_send) * 1000)
                c.events += data.count(TOKEN)
                c.error = c.error or b"event: error" in joined
                c.tail = joined[-16:]
                finished = joined.endswith(_END) or joined == _END[2:]
            else:
                c.remaining -= len(data)
                finished = c.remaining <= 0
            if finished:
                done.append((t, c.status, c.error, c.events))
                send(c)
    for c in conns.values():
        c.sock.close()
    ep.close()
    window = [d for d in done if w0 <= d[0] < w1]
    ok = [d for d in window if d[1] == 200 and not d[2]]
    gen = srv = 0.0
    if ru0 is not None and ru1 is not None:
        gen = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        srv = srv1 - srv0

    def ms(p: float) -> float | None:
        v = percentile(ttft, p)
        return None if v is None else round(v, 1)

    return {
        "label": args.label,
        "streams": args.streams,
        "window_s": args.duration,
        "ok_req_s": round(len(ok) / args.duration, 1),
        "ttft_p50_ms": ms(50),
        "ttft_p90_ms": ms(90),
        "ttft_p99_ms": ms(99),
        "ttft_n": len(ttft),
        "refused_503": sum(1 for d in window if d[1] == 503),
        "errors": sum(1 for d in window if d[1] not in (200, 503) or d[2]),
        "reconnects": reconnects,
        "token_events_per_request": round(sum(d[3] for d in ok) / len(ok), 1) if ok else None,
        "server_cpu_pct": round(100 * srv / args.duration, 1) if args.server_pid else None,
        "server_cpu_us_per_request": round(1e6 * srv / len(ok)) if ok and args.server_pid else None,
        "generator_cpu_pct": round(100 * gen / args.duration, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--grace", type=float, default=2.0, help="seconds after the window")
    ap.add_argument("--server-pid", type=int, default=0)
    ap.add_argument("--label", default="")
    print(json.dumps(run(ap.parse_args())))


if __name__ == "__main__":
    main()
