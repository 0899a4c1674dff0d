"""trio_agent.sse: the encoder, and the decoder against the WHATWG event-stream rules."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_agent.errors import SSEError, SSEEventTooLargeError, SSEFieldError
from trio_agent.sse import ServerSentEvent, SSEDecoder, encode_comment, encode_event


def decode_all(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    events += decoder.close()
    return events


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def reference_parse(stream: bytes) -> list[ServerSentEvent]:
    """A literal, character-at-a-time reading of the standard, for comparison."""
    text = stream.decode("utf-8", errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    events = []
    data_buf, type_buf, id_buf, last_id = "", "", "", ""
    block_retry: int | None = None
    line = ""
    i = 0
    while i < len(text):
        ch = text[i]
        i += 1
        if ch not in "\r\n":
            line += ch
            continue
        if ch == "\r" and i < len(text) and text[i] == "\n":
            i += 1
        if line == "":
            last_id = id_buf
            if data_buf:
                events.append(
                    ServerSentEvent(
                        data=data_buf[:-1] if data_buf.endswith("\n") else data_buf,
                        event=type_buf or "message",
                        id=last_id or None,
                        retry=block_retry,
                    )
                )
            data_buf, type_buf, block_retry = "", "", None
        elif not line.startswith(":"):
            if ":" in line:
                name, value = line.split(":", 1)
                if value.startswith(" "):
                    value = value[1:]
            else:
                name, value = line, ""
            if name == "data":
                data_buf += value + "\n"
            elif name == "event":
                type_buf = value
            elif name == "id" and "\0" not in value:
                id_buf = value
            elif name == "retry" and value and all(c in "0123456789" for c in value):
                block_retry = int(value)
        line = ""
    return events


# -- encoder ------------------------------------------------------------------------


def test_encode_single_line_fast_path() -> None:
    assert encode_event("hello") == b"data: hello\n\n"
    assert encode_event("") == b"data: \n\n"
    assert encode_event("h\u00e9 \U0001f600") == "data: h\u00e9 \U0001f600\n\n".encode()


def test_encode_splits_every_kind_of_line_break() -> None:
    assert encode_event("a\nb\r\nc\rd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"
    assert encode_event("a\n") == b"data: a\ndata: \n\n"
    assert encode_event("\r\n\r\n") == b"data: \ndata: \ndata: \n\n"


def test_encode_all_fields() -> None:
    assert encode_event("x", event="delta", id="7", retry=1500) == (
        b"event: delta\nid: 7\nretry: 1500\ndata: x\n\n"
    )
    assert encode_event("x", id="") == b"id: \ndata: x\n\n"


def test_encode_keeps_leading_spaces_and_colons_in_data() -> None:
    raw = encode_event("  data: x\n: not a comment")
    [event] = decode_all(raw)
    assert event.data == "  data: x\n: not a comment"


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\n", "\0", "x\0y"])
@pytest.mark.parametrize("field", ["event", "id"])
def test_encode_refuses_line_breaks_and_nul_in_event_and_id(field: str, bad: str) -> None:
    with pytest.raises(SSEFieldError) as info:
        encode_event("x", **{field: bad})  # type: ignore[arg-type]
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, SSEError)


@pytest.mark.parametrize("bad", [-1, True, 1.5, "10"])
def test_encode_refuses_bad_retry(bad: object) -> None:
    with pytest.raises(SSEFieldError) as info:
        encode_event("x", retry=bad)  # type: ignore[arg-type]
    assert info.value.field == "retry"


def test_encode_retry_zero_is_valid() -> None:
    assert encode_event("x", retry=0) == b"retry: 0\ndata: x\n\n"


def test_encode_nul_in_data_passes_through() -> None:
    [event] = decode_all(encode_event("a\0b"))
    assert event.data == "a\0b"


def test_encode_comment() -> None:
    assert encode_comment() == b":\n\n"
    assert encode_comment("keepalive") == b": keepalive\n\n"
    assert decode_all(encode_comment("ping") + encode_event("x") + encode_comment()) == [
        ServerSentEvent(data="x")
    ]


@pytest.mark.parametrize("bad", ["a\nb", "a\r", "\r\n"])
def test_encode_comment_refuses_line_breaks(bad: str) -> None:
    with pytest.raises(SSEFieldError) as info:
        encode_comment(bad)
    assert info.value.field == "comment"


# -- decoder: the rules one by one ----------------------------------------------------


def test_decode_simple_event() -> None:
    assert decode_all(b"data: hello\n\n") == [ServerSentEvent(data="hello")]


def test_decode_strips_one_leading_bom_only() -> None:
    bom = "\ufeff".encode()
    assert decode_all(bom + b"data: x\n\n") == [ServerSentEvent(data="x")]
    # A second BOM is part of the first field name, so that line is an unknown field.
    assert decode_all(bom + bom + b"data: x\n\ndata: y\n\n") == [ServerSentEvent(data="y")]
    # The BOM split across chunks is still recognised.
    assert decode_all(*bytewise(bom + b"data: x\n\n")) == [ServerSentEvent(data="x")]
    # Only at stream start: later, U+FEFF is ordinary text.
    assert decode_all(b"data: a\n\n" + bom + b"data: b\n\n") == [ServerSentEvent(data="a")]


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_decode_each_line_ending(eol: bytes) -> None:
    stream = b"event: e" + eol + b"data: a" + eol + b"data: b" + eol + eol
    assert decode_all(stream) == [ServerSentEvent(event="e", data="a\nb")]


def test_decode_mixed_line_endings() -> None:
    stream = b"data: a\r\ndata: b\rdata: c\n\r\n" + b"data: d\r\r"
    assert decode_all(stream) == [ServerSentEvent(data="a\nb\nc"), ServerSentEvent(data="d")]


def test_decode_crlf_split_across_chunks_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # If this LF were a second line end, the event would be dispatched here.
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r") == [ServerSentEvent(data="a\nb")]
    assert decoder.feed(b"\n") == []  # the LF of the CRLF blank line: nothing more
    assert decoder.feed(b"data: c\n\n") == [ServerSentEvent(data="c")]


def test_decode_cr_at_chunk_end_then_other_text_is_a_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == [ServerSentEvent(data="a")]


def test_decode_cr_survives_an_empty_decode_between_chunks() -> None:
    # An empty chunk, or half of a multi-byte character, decodes to no text: the
    # pending CR must still swallow the LF that follows.
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []  # completes the CRLF
    assert decoder.feed(b"data: \xc3") == []
    assert decoder.feed(b"\xa9\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []  # completes the CRLF
    assert decoder.feed(b"\n") == [ServerSentEvent(data="a\n\u00e9")]


def test_decode_multibyte_character_split_at_every_offset() -> None:
    raw = "data: \u00e9\u20ac\U0001f600\n\n".encode()
    for cut in range(len(raw) + 1):
        assert decode_all(raw[:cut], raw[cut:]) == [ServerSentEvent(data="\u00e9\u20ac\U0001f600")]
    assert decode_all(*bytewise(raw)) == [ServerSentEvent(data="\u00e9\u20ac\U0001f600")]


def test_decode_invalid_utf8_becomes_replacement_character() -> None:
    assert decode_all(b"data: a\xffb\n\n") == [ServerSentEvent(data="a\ufffdb")]


def test_decode_comments_are_ignored() -> None:
    stream = b": hello\n:\ndata: x\n: between\ndata: y\n\n"
    assert decode_all(stream) == [ServerSentEvent(data="x\ny")]


def test_decode_field_without_colon_has_empty_value() -> None:
    # "data" alone appends an empty line; "event" alone sets an empty type (-> message).
    assert decode_all(b"data\ndata\n\n") == [ServerSentEvent(data="\n")]
    assert decode_all(b"event: a\nevent\ndata\n\n") == [ServerSentEvent(data="")]


def test_decode_removes_exactly_one_leading_space() -> None:
    assert decode_all(b"data:x\n\n") == [ServerSentEvent(data="x")]
    assert decode_all(b"data: x\n\n") == [ServerSentEvent(data="x")]
    assert decode_all(b"data:  x \n\n") == [ServerSentEvent(data=" x ")]
    assert decode_all(b"data:\tx\n\n") == [ServerSentEvent(data="\tx")]
    assert decode_all(b"data: a: b\n\n") == [ServerSentEvent(data="a: b")]


def test_decode_field_names_are_exact() -> None:
    assert decode_all(b"Data: x\ndata : y\n data: z\n\n") == []


def test_decode_multiple_data_lines_join_with_lf() -> None:
    assert decode_all(b"data: a\ndata:\ndata: c\n\n") == [ServerSentEvent(data="a\n\nc")]


def test_decode_empty_data_line_dispatches_empty_event() -> None:
    assert decode_all(b"data:\n\n") == [ServerSentEvent(data="")]


def test_decode_block_without_data_is_not_dispatched() -> None:
    assert decode_all(b"event: x\n\n\n\ndata: y\n\n") == [ServerSentEvent(data="y")]


def test_decode_event_type_resets_after_each_blank_line() -> None:
    stream = b"event: a\ndata: 1\n\ndata: 2\n\nevent: b\n\ndata: 3\n\n"
    assert decode_all(stream) == [
        ServerSentEvent(event="a", data="1"),
        ServerSentEvent(data="2"),
        ServerSentEvent(data="3"),
    ]


def test_decode_id_persists_across_events_and_through_dataless_blocks() -> None:
    decoder = SSEDecoder()
    assert decoder.last_event_id is None
    assert decoder.feed(b"id: 1\ndata: a\n\ndata: b\n\n") == [
        ServerSentEvent(id="1", data="a"),
        ServerSentEvent(id="1", data="b"),
    ]
    assert decoder.feed(b"id: 2\n\n") == []  # not dispatched, but the id is kept
    assert decoder.last_event_id == "2"
    assert decoder.feed(b"data: c\n\n") == [ServerSentEvent(id="2", data="c")]
    # An empty id resets it.
    assert decoder.feed(b"id\ndata: d\n\n") == [ServerSentEvent(data="d")]
    assert decoder.last_event_id is None


def test_decode_last_event_id_updates_only_at_blank_line() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"id: 5\ndata: x\n")
    assert decoder.last_event_id is None
    decoder.feed(b"\n")
    assert decoder.last_event_id == "5"


def test_decode_id_with_nul_is_ignored() -> None:
    assert decode_all(b"id: 1\n\nid: a\x00b\ndata: x\n\n") == [ServerSentEvent(id="1", data="x")]


def test_decode_retry_only_ascii_digits() -> None:
    decoder = SSEDecoder()
    assert decoder.retry is None
    events = decoder.feed(
        b"retry: 1000\ndata: a\n\n"
        b"retry: 12x\ndata: b\n\n"
        b"retry: -5\nretry: 1.5\nretry:\nretry:  7\n"
        + "retry: \u0663\n".encode()  # ARABIC-INDIC DIGIT THREE: a digit, but not ASCII
        + b"data: c\n\n"
    )
    assert events == [
        ServerSentEvent(data="a", retry=1000),
        ServerSentEvent(data="b"),
        ServerSentEvent(data="c"),
    ]
    assert decoder.retry == 1000
    assert decoder.feed(b"retry: 0\n\n") == []
    assert decoder.retry == 0


def test_decode_retry_with_absurdly_many_digits_is_ignored() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"retry: " + b"9" * 5000 + b"\ndata: x\n\n") == [ServerSentEvent(data="x")]
    assert decoder.retry is None


def test_decode_unknown_fields_are_ignored() -> None:
    assert decode_all(b"foo: bar\nbaz\ndata: x\n\n") == [ServerSentEvent(data="x")]


def test_decode_nul_in_data_and_event_is_kept() -> None:
    assert decode_all(b"event: a\x00\ndata: b\x00\n\n") == [
        ServerSentEvent(event="a\0", data="b\0")
    ]


def test_decode_incomplete_event_at_close_is_discarded() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\n") == [ServerSentEvent(data="a")]
    assert decoder.close() == []
    # The next stream starts clean: the half-built "b" is gone.
    assert decoder.feed(b"data: c\n\n") == [ServerSentEvent(data="c")]


def test_close_discards_an_incomplete_utf8_character_and_unfinished_line() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: \xe2\x82")
    assert decoder.close() == []
    assert decoder.feed(b"data: x\n\n") == [ServerSentEvent(data="x")]


def test_close_keeps_last_event_id_and_retry_for_the_next_stream() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"id: 9\nretry: 250\ndata: a\n\n")
    decoder.close()
    assert decoder.last_event_id == "9"
    assert decoder.retry == 250
    # A BOM is allowed again at the start of the new stream. Per the standard the
    # new stream's last event ID buffer starts empty, so its first blank line
    # clears the last event ID unless the server sends an id again.
    assert decoder.feed("\ufeffid: 10\ndata: b\n\n".encode()) == [ServerSentEvent(id="10", data="b")]
    decoder.close()
    assert decoder.last_event_id == "10"
    assert decoder.feed(b"data: c\n\n") == [ServerSentEvent(data="c")]
    assert decoder.last_event_id is None


def test_decode_whole_events_in_one_chunk() -> None:
    stream = b"".join(encode_event(f"token {i}", id=str(i)) for i in range(100))
    events = SSEDecoder().feed(stream)
    assert [e.data for e in events] == [f"token {i}" for i in range(100)]
    assert [e.id for e in events] == [str(i) for i in range(100)]


def test_decode_line_split_over_many_chunks() -> None:
    decoder = SSEDecoder()
    for piece in (b"da", b"ta", b": ", b"hel", b"lo"):
        assert decoder.feed(piece) == []
    assert decoder.feed(b"\n\n") == [ServerSentEvent(data="hello")]


def test_decoder_bounds_an_endless_line() -> None:
    decoder = SSEDecoder(max_event_chars=100)
    decoder.feed(b"data: " + b"x" * 90)
    with pytest.raises(SSEEventTooLargeError) as info:
        decoder.feed(b"x" * 20)
    assert info.value.limit == 100


def test_decoder_bounds_an_event_with_endless_data_lines() -> None:
    decoder = SSEDecoder(max_event_chars=100)
    with pytest.raises(SSEEventTooLargeError):
        for _ in range(100):
            decoder.feed(b"data: 0123456789\n")


def test_decoder_limit_is_per_event() -> None:
    decoder = SSEDecoder(max_event_chars=100)
    for i in range(100):
        assert decoder.feed(encode_event("0123456789" * 5)) == [
            ServerSentEvent(data="0123456789" * 5)
        ], i


@pytest.mark.parametrize("bad", [0, -1, 1.0])
def test_decoder_refuses_bad_limit(bad: object) -> None:
    with pytest.raises(ValueError, match="max_event_chars"):
        SSEDecoder(max_event_chars=bad)  # type: ignore[arg-type]


def test_decoder_repr_shows_state() -> None:
    decoder = SSEDecoder(max_event_chars=1000)
    decoder.feed(b"id: 3\nretry: 10\ndata: a\n\ndata: bc\nda")
    assert repr(decoder) == (
        "<SSEDecoder last_event_id='3' retry=10 buffered_chars=5 max_event_chars=1000>"
    )


def test_server_sent_event_is_frozen_with_defaults() -> None:
    event = ServerSentEvent(data="x")
    assert (event.event, event.id, event.retry) == ("message", None, None)
    with pytest.raises(AttributeError):
        event.data = "y"  # type: ignore[misc]


# -- properties -----------------------------------------------------------------------

# Text that stresses the codec: line breaks of every kind, NUL, field-like and
# comment-like prefixes, BOMs, multi-byte characters, and surrogates' neighbours.
_tricky = st.sampled_from(
    ["\r", "\n", "\r\n", "\0", "data:", "data: ", ":", " ", "id:", "event:", "retry: 1",
     "\ufeff", "\u00e9", "\u20ac", "\U0001f600", "\u2028", "\x85", "\x0b"]
)
_text = st.lists(st.one_of(_tricky, st.text(max_size=5)), max_size=8).map("".join)
_field = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\0", blacklist_categories=["Cs"]),
    max_size=8,
)
_event_spec = st.tuples(_text, st.none() | _field, st.none() | _field, st.none() | st.integers(0, 10**6))


def _cut(data: bytes, offsets: list[int]) -> list[bytes]:
    points = sorted({min(o, len(data)) for o in offsets})
    chunks, start = [], 0
    for point in [*points, len(data)]:
        chunks.append(data[start:point])
        start = point
    return chunks


@settings(max_examples=300, deadline=None)
@given(
    specs=st.lists(_event_spec, min_size=1, max_size=5),
    offsets=st.lists(st.integers(0, 400), max_size=12),
    keepalives=st.booleans(),
)
def test_roundtrip_any_events_any_chunking(
    specs: list[tuple[str, str | None, str | None, int | None]],
    offsets: list[int],
    keepalives: bool,
) -> None:
    stream = b""
    expected = []
    last_id: str | None = None
    for data, event, id_, retry in specs:
        if keepalives:
            stream += encode_comment("keepalive")
        stream += encode_event(data, event=event, id=id_, retry=retry)
        if id_ is not None:
            last_id = id_ or None
        expected.append(
            ServerSentEvent(
                data=re.sub(r"\r\n|\r", "\n", data),
                event=event or "message",
                id=last_id,
                retry=retry,
            )
        )
    chunks = _cut(stream, offsets)
    assert b"".join(chunks) == stream
    assert decode_all(*chunks) == expected


_raw_piece = st.one_of(
    st.sampled_from(
        [b"\r", b"\n", b"\r\n", b"\0", b"data", b":", b" ", b"id", b"event", b"retry",
         b"123", b"\xef\xbb\xbf", b"\xc3", b"\xa9", b"\xf0\x9f\x98", b"\x80", b"\xff",
         b"data: a", b"data:", b"event: e", b"id: 7", b"retry: 5", b": c"]
    ),
    st.binary(max_size=4),
)
_raw_stream = st.lists(_raw_piece, max_size=30).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(stream=_raw_stream, offsets=st.lists(st.integers(0, 200), max_size=15))
def test_any_chunking_of_any_bytes_decodes_like_one_chunk(
    stream: bytes, offsets: list[int]
) -> None:
    whole = SSEDecoder()
    expected = whole.feed(stream) + whole.close()
    chunked = SSEDecoder()
    got = []
    for chunk in _cut(stream, offsets):
        got += chunked.feed(chunk)
    got += chunked.close()
    assert got == expected
    assert (chunked.last_event_id, chunked.retry) == (whole.last_event_id, whole.retry)
    assert expected == reference_parse(stream)


@settings(max_examples=150, deadline=None)
@given(stream=_raw_stream)
def test_every_single_cut_and_byte_at_a_time_decode_like_one_chunk(stream: bytes) -> None:
    expected = decode_all(stream)
    assert expected == reference_parse(stream)
    for cut in range(1, len(stream)):
        assert decode_all(stream[:cut], stream[cut:]) == expected, cut
    assert decode_all(*bytewise(stream)) == expected
