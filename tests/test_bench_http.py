"""trio_agent.bench._http: request bytes; the response parser on inputs cut anywhere."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_agent.bench import HTTPProtocolError, ResponseParser, build_request

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n"
    b"1;ext=1\r\n \r\n"
    b"A\r\n0123456789\r\n"
    b"0\r\nX-Trailer: yes\r\n\r\n"
)
BODY = b"hello 0123456789"


def parse_in_pieces(raw: bytes, cuts: list[int]) -> tuple[ResponseParser, bytes]:
    parser = ResponseParser()
    body = []
    last = 0
    for cut in [*sorted(cuts), len(raw)]:
        body.extend(parser.feed(raw[last:cut]))
        last = cut
    return parser, b"".join(body)


def test_build_request() -> None:
    raw = build_request("POST", "h:1", "/chat/stream", b'{"a":1}', keepalive=False)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"POST /chat/stream HTTP/1.1"
    assert b"Host: h:1" in head
    assert b"Content-Length: 7" in head
    assert b"Connection: close" in head
    assert body == b'{"a":1}'


def test_whole_chunked_response() -> None:
    parser, body = parse_in_pieces(CHUNKED, [])
    assert body == BODY
    assert parser.complete
    assert parser.head is not None
    assert parser.head.status_code == 200
    assert parser.head.headers["content-type"] == "text/event-stream"
    assert parser.head.keep_alive


def test_every_single_cut_point() -> None:
    for cut in range(len(CHUNKED) + 1):
        parser, body = parse_in_pieces(CHUNKED, [cut])
        assert body == BODY, cut
        assert parser.complete, cut


def test_byte_by_byte() -> None:
    parser, body = parse_in_pieces(CHUNKED, list(range(len(CHUNKED))))
    assert body == BODY
    assert parser.complete


@given(st.lists(st.integers(min_value=0, max_value=len(CHUNKED)), max_size=12))
def test_any_cuts(cuts: list[int]) -> None:
    parser, body = parse_in_pieces(CHUNKED, cuts)
    assert body == BODY
    assert parser.complete


def test_content_length_and_close_delimited_bodies() -> None:
    raw = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\nbusy"
    parser, body = parse_in_pieces(raw, [20, 60])
    assert (parser.head and parser.head.status_code, body, parser.complete) == (503, b"busy", True)
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.0 200 OK\r\n\r\nabc") == [b"abc"]
    assert parser.head is not None and not parser.head.keep_alive
    assert parser.feed(b"def") == [b"def"]
    assert not parser.complete
    parser.feed_eof()
    assert parser.complete


def test_connection_close_header() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert parser.complete
    assert parser.head is not None and not parser.head.keep_alive


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab",
        b"SPDY/3 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
    ],
)
def test_framing_errors(raw: bytes) -> None:
    with pytest.raises(HTTPProtocolError):
        ResponseParser().feed(raw)


def test_cut_short() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    with pytest.raises(HTTPProtocolError):
        parser.feed_eof()


def test_buffers_stay_bounded() -> None:
    parser = ResponseParser()
    with pytest.raises(HTTPProtocolError):
        parser.feed(b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 70_000)
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(HTTPProtocolError):
        parser.feed(b"1" * 5000)
    # A large chunk streams through without being buffered.
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n")
    assert parser.feed(b"a" * 1000) == [b"a" * 1000]
    assert "buffered=0" in repr(parser)
