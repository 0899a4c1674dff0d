"""Refusals answered from the request head (Gateway.early_refusal via LeanTCPServer), without the app."""

from __future__ import annotations

import orjson
import pytest
import trio
import trio.lowlevel

from tests._fakes import make_gateway
from tests._reliability import running_gateway
from trio_agent.config import MockLLMConfig, ServerConfig
from trio_agent.llm import MockLLM

BODY = orjson.dumps({"messages": [{"role": "user", "content": "hi"}]})
OA_BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True})


def head(path: str, body: bytes, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [
        (b"host", b"x"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]


async def _hold_the_only_slot(
    gw: object, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    async with gw.limits.lease():  # type: ignore[attr-defined]
        task_status.started()
        await trio.sleep_forever()


async def test_early_refusal_answers_only_what_the_app_would_refuse() -> None:
    gw, _ = make_gateway(max_concurrency=1, max_queued=0, api_keys=frozenset({"sekret"}))
    auth = (b"authorization", b"Bearer sekret")
    async with trio.open_nursery() as nursery:
        # A free slot: nothing to refuse.
        assert gw.early_refusal(b"POST", b"/chat/stream", head("/chat/stream", BODY, auth)) is None
        await nursery.start(_hold_the_only_slot, gw)
        answer = gw.early_refusal(
            b"POST", b"/chat/stream?x=1", head("/chat/stream", BODY, auth, (b"x-request-id", b"rid-1"))
        )
        assert answer is not None
        status, headers, body = answer
        h = dict(headers)
        assert status == 503 and h[b"retry-after"] == b"1" and h[b"x-request-id"] == b"rid-1"
        assert int(h[b"content-length"]) == len(body)
        err = orjson.loads(body)["error"]
        assert err["code"] == "overloaded" and err["request_id"] == "rid-1" and err["retryable"]
        status, _, body = gw.early_refusal(  # type: ignore[misc]
            b"POST", b"/v1/chat/completions", head("/v1", OA_BODY, auth)
        )
        assert status == 503 and orjson.loads(body)["error"]["type"] == "server_error"
        # Everything else goes to the app, which answers it (401, 405, 413, 431, 400 ...).
        for method, target, hdrs in (
            (b"GET", b"/chat/stream", head("", b"", auth)),
            (b"POST", b"/chat", head("", BODY, auth)),
            (b"POST", b"/healthz", head("", BODY, auth)),
            (b"POST", b"/chat/stream", head("", BODY)),  # no key: the app's 401
            (b"POST", b"/chat/stream", head("", BODY, (b"authorization", b"Bearer wrong"))),
            (b"POST", b"/chat/stream", [(b"transfer-encoding", b"chunked"), auth]),
            (b"POST", b"/chat/stream", [(b"content-length", b"99999999"), auth]),
            (b"POST", b"/chat/stream", [(b"content-length", b"12"), (b"x-big", b"a" * 20000), auth]),
        ):
            assert gw.early_refusal(method, target, hdrs) is None, (method, target)
        gw.drain.start()
        assert gw.early_refusal(b"POST", b"/chat/stream", head("", BODY, auth)) is None
        nursery.cancel_scope.cancel()
    assert gw.limits.statistics().shed_full == 2
    assert gw.metrics.responses == {("/chat/stream", 503): 1, ("/v1/chat/completions", 503): 1}


async def _read_response(stream: trio.SocketStream, buf: bytearray) -> tuple[int, dict[bytes, bytes], bytes]:
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        assert data, "connection closed"
        buf.extend(data)
    head_bytes, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head_bytes.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    length = int(headers[b"content-length"])
    while len(rest) < length:
        data = await stream.receive_some(65536)
        assert data, "connection closed"
        rest += data
    del buf[:]
    buf.extend(rest[length:])
    return status, headers, rest[:length]


def _request(path: str, body: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        path.encode(), len(body), body,
    )  # fmt: skip


@pytest.mark.e2e
async def test_refusals_from_the_head_keep_the_connection_and_the_admitted_stream() -> None:
    llm = MockLLM(MockLLMConfig(ttft=0.05, itl=0.05, tokens=10))
    config = ServerConfig(port=0, access_log=False, max_concurrency=1, max_queued=0, keep_alive_timeout=0.5)
    with trio.fail_after(20):
        async with running_gateway(config, backend=llm) as srv:
            held = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await held.send_all(_request("/chat/stream", BODY))
            first = await held.receive_some(65536)
            assert first.startswith(b"HTTP/1.1 200")
            # The refusals below are answered from their heads: the app never runs for them.
            before = srv.gw.metrics.early_refusals
            conn = await trio.open_tcp_stream("127.0.0.1", srv.port)
            buf = bytearray()
            # Pipelined: three refusals in one write, then a health check on the same connection.
            await conn.send_all(
                _request("/chat/stream", BODY) + _request("/v1/chat/completions", OA_BODY)
                + _request("/chat/stream", BODY)
                + b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
            )  # fmt: skip
            for _ in range(3):
                status, headers, body = await _read_response(conn, buf)
                assert status == 503 and headers[b"retry-after"] == b"1"
                assert orjson.loads(body)["error"]["code"] == "overloaded"
            status, _, body = await _read_response(conn, buf)
            assert status == 200 and orjson.loads(body)["status"] == "ok"
            assert srv.gw.metrics.early_refusals - before == 3
            assert srv.gw.connections.opened == 2
            # A body that never ends: answered at once, then the idle timer closes the connection.
            await conn.send_all(
                b"POST /chat/stream HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"mess"
            )
            status, _, _ = await _read_response(conn, buf)
            assert status == 503
            with trio.fail_after(5):
                while await conn.receive_some(65536):
                    pass
            # The admitted stream was not disturbed.
            rest = first
            while b"event: done" not in rest:
                data = await held.receive_some(65536)
                assert data
                rest += data
            await held.aclose()
            await conn.aclose()
            assert srv.gw.limits.statistics().shed_full == 4
            assert srv.gw.metrics.responses[("/chat/stream", 503)] == 3
