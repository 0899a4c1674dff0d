"""The connection limit and descriptor exhaustion, end to end (real servers, real time)."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

import orjson
import pytest
import trio

from tests._reliability import running_gateway
from trio_agent.config import MockLLMConfig, ServerConfig

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
CHAT = orjson.dumps({"question": "hello"})


def _post(path: str, body: bytes = CHAT) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


GET_HEALTH = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


async def _head(stream: trio.SocketStream) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and what followed the head (read until the head is whole)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        assert chunk, f"EOF before a whole head: {buf!r}"
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


async def _get_health(stream: trio.SocketStream) -> int:
    """One keep-alive GET /healthz on ``stream``; its status (the body read whole)."""
    await stream.send_all(GET_HEALTH)
    status, headers, rest = await _head(stream)
    while len(rest) < int(headers["content-length"]):
        rest += await stream.receive_some(65536)
    return status


async def _until_eof(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def test_past_max_connections_a_new_connection_gets_503_and_is_closed() -> None:
    config = ServerConfig(
        max_connections=3, access_log=False, drain_timeout=0.5,
        mock=MockLLMConfig(ttft=30.0, tokens=1),
    )  # fmt: skip
    with trio.fail_after(15):
        async with running_gateway(config) as srv:
            busy = [await trio.open_tcp_stream("127.0.0.1", srv.port) for _ in range(3)]
            for stream in busy:  # three streams waiting for their first token: none idle
                await stream.send_all(_post("/chat/stream"))
                status, _, _ = await _head(stream)
                assert status == 200
            extra = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await extra.send_all(GET_HEALTH)
            answer = await _until_eof(extra)  # the server closes it after the 503
            head, body = answer.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 503 ")
            assert b"retry-after: 1" in head.lower() and b"connection: close" in head.lower()
            assert orjson.loads(body)["error"]["code"] == "too_many_connections"
            stats = srv.gw.connections.statistics()
            assert (stats.limit, stats.refused, stats.idle_closed) == (3, 1, 0)
            for stream in (*busy, extra):
                await stream.aclose()


async def test_idle_keep_alive_connections_make_room_oldest_first() -> None:
    config = ServerConfig(max_connections=3, access_log=False, keep_alive_timeout=30.0)
    with trio.fail_after(15):
        async with running_gateway(config) as srv:
            conns = []
            for _ in range(3):
                stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
                assert await _get_health(stream) == 200  # then idle, kept alive
                conns.append(stream)
            newcomer = await trio.open_tcp_stream("127.0.0.1", srv.port)
            assert await _get_health(newcomer) == 200
            assert await conns[0].receive_some(65536) == b""  # the oldest idle one was closed
            assert await _get_health(conns[2]) == 200  # the newer ones were not
            # conns[2] is now the newest idle; the next newcomer closes conns[1].
            another = await trio.open_tcp_stream("127.0.0.1", srv.port)
            assert await _get_health(another) == 200
            assert await conns[1].receive_some(65536) == b""
            stats = srv.gw.connections.statistics()
            assert (stats.refused, stats.idle_closed) == (0, 2)
            for stream in (*conns, newcomer, another):
                await stream.aclose()


def _log_file(path: Path) -> BinaryIO:
    return open(path, "wb")  # closed by the caller's with


def _low_nofile(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


@pytest.mark.parametrize(
    "max_connections",
    [None, 1000],
    ids=["default-limit-from-descriptors", "limit-above-descriptors"],
)
async def test_with_few_descriptors_and_many_idle_connections_a_request_is_answered(
    tmp_path: Path, max_connections: int | None
) -> None:
    """``ulimit -n 256`` and 400 idle connections: a normal request is answered (never a hang),
    and the log has no traceback, at most one warning pair per exhaustion episode."""
    log = tmp_path / "serve.log"
    args = [sys.executable, "-m", "trio_agent", "serve", "--port", "0", "--no-access-log",
            "--mock-ttft", "0", "--mock-itl", "0", "--mock-tokens", "4", "--keep-alive-timeout", "60"]
    if max_connections is not None:
        args += ["--max-connections", str(max_connections)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_AGENT_")}
    with _log_file(log) as err, trio.fail_after(40):
        proc = await trio.lowlevel.open_process(
            args, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=env,
            preexec_fn=lambda: _low_nofile(256),
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = b""
            while b"\n" not in line:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, log.read_text()
                line += chunk
            port = int(re.search(rb"http://127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]
            idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(400)]
            statuses = []
            for _ in range(3):
                with trio.fail_after(10):
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    await stream.send_all(_post("/chat"))
                    status, _, _ = await _head(stream)
                    statuses.append(status)
                    await stream.aclose()
            assert all(s in (200, 503) for s in statuses), statuses
            assert 200 in statuses, statuses
            for stream in idle:
                await stream.aclose()
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
    text = log.read_text()
    assert "Traceback" not in text, text
    assert re.search(r"^256 file descriptors, hard limit 256; at most \d+ client connections$", text, re.M), text
    started = text.count("out of file descriptors")
    ended = text.count("accept caught up after")
    if max_connections is None:  # the limit keeps the server below its descriptors
        assert started == 0, text
    else:
        assert started >= 1, text
        assert ended in (started, started - 1), text
        failed = sum(int(n) for n in re.findall(r"\((\d+) accepts failed\)", text))
        assert failed >= ended, text
