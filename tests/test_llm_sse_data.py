"""SSEDataSplitter: each event's data as bytes, however the stream is cut, agreeing with SSEDecoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_agent.errors import UpstreamProtocolError
from trio_agent.llm._sse_data import SSEDataSplitter
from trio_agent.sse import SSEDecoder

_VALUE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    events = []
    for _ in range(draw(st.integers(0, 6))):
        lines = []
        if draw(st.booleans()):
            lines.append(": keepalive comment")
        if draw(st.booleans()):
            lines.append("event: " + draw(st.sampled_from(["message", "response.created", "error"])))
        for value in draw(st.lists(_VALUE, min_size=1, max_size=3)):
            lines.append(("data: " if draw(st.booleans()) else "data:") + value)
        events.append(newline.join(lines) + newline + newline)
    bom = "\ufeff" if draw(st.booleans()) else ""
    return (bom + "".join(events)).encode()


@settings(max_examples=1000, deadline=None)
@given(stream=streams(), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_any_cut_gives_the_data_sse_decoder_gives(stream: bytes, cuts: list[int]) -> None:
    expected = [e.data.encode() for e in SSEDecoder().feed(stream)]
    splitter = SSEDataSplitter()
    got: list[bytes] = []
    at = 0
    for cut in sorted(c for c in cuts if c <= len(stream)):
        got.extend(splitter.feed(stream[at:cut]))
        at = cut
    got.extend(splitter.feed(stream[at:]))
    assert got == expected


def test_a_crlf_cut_by_reads_and_an_empty_read_is_one_line_end() -> None:
    splitter = SSEDataSplitter()
    assert splitter.feed(b"data: a\r") == []
    assert splitter.feed(b"") == []
    assert splitter.feed(b"\ndata: b\r\n\r\n") == [b"a\nb"]


def test_the_usual_event_is_a_slice_of_what_arrived() -> None:
    splitter = SSEDataSplitter()
    raw = b'{"a": "\\u00e9 \xc3\xa9", "b":1}'
    assert splitter.feed(b"data: " + raw[:10]) == []
    assert splitter.feed(raw[10:] + b"\n\ndata: [DONE]\n\n") == [raw, b"[DONE]"]


def test_an_event_past_the_limit_is_a_protocol_error() -> None:
    splitter = SSEDataSplitter(max_event_bytes=64)
    splitter.feed(b"data: " + b"x" * 50)
    with pytest.raises(UpstreamProtocolError):
        splitter.feed(b"x" * 50)
