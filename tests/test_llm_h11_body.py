"""H11Body: a streamed HTTP/1.1 body read below httpx, on h11's own connection state."""

from __future__ import annotations

import h11
import httpx
import pytest
import trio
import trio.testing

from trio_agent import UpstreamConnectError
from trio_agent.llm._h11_body import H11Body, h11_body

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def body_after_head() -> tuple[H11Body, trio.testing.MemorySendStream, h11.Connection]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/v1/chat/completions", headers=[("Host", "u"), ("Content-Length", "0")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(HEAD)
    assert isinstance(conn.next_event(), h11.Response)
    send, receive = trio.testing.memory_stream_one_way_pair()
    return H11Body(conn, receive), send, conn


async def test_every_chunk_one_read_brought_comes_back_at_once_then_the_end() -> None:
    body, send, conn = body_after_head()
    with trio.fail_after(5):
        await send.send_all(chunk(b"data: a\n\n") + chunk(b"data: b\n\n") + chunk(b"data: c\n\n"))
        assert await body.read() == b"data: a\n\ndata: b\n\ndata: c\n\n"
        await send.send_all(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        assert await body.read() == b"data: [DONE]\n\n"
        assert await body.read() == b""
    assert body.done
    # h11 saw the whole response, so httpcore can hand the connection to the next request.
    assert conn.their_state is h11.DONE


async def test_a_read_waits_for_the_socket_only_when_nothing_is_parsed() -> None:
    body, send, _ = body_after_head()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            got: list[bytes] = []

            async def reader() -> None:
                got.append(await body.read())

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # parked on the socket
            await send.send_all(chunk(b"x"))
    assert got == [b"x"]


@pytest.mark.parametrize(
    ("wire", "kind"),
    [
        (b"zz\r\nnot a chunk size\r\n", "RemoteProtocolError"),
        (chunk(b"data: a\n\n")[:-4], "RemoteProtocolError"),  # then the connection closes
    ],
)
async def test_a_broken_body_is_an_upstream_connect_error(wire: bytes, kind: str) -> None:
    body, send, _ = body_after_head()
    with trio.fail_after(5):
        await send.send_all(wire)
        await send.aclose()
        with pytest.raises(UpstreamConnectError, match=f"mid-stream \\({kind}\\)"):
            while True:
                await body.read()


async def test_responses_of_another_shape_read_through_httpx() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"data: x\n\n"))
    async with httpx.AsyncClient(transport=transport) as client:
        async with client.stream("GET", "http://u.test/") as response:
            assert h11_body(response) is None
