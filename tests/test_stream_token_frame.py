"""The native format's token event, built from a template on the hot path, is byte for byte
the generic event: what a conforming SSE client reads back is the token's text exactly."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from trio_agent.server._stream import NativeFormat
from trio_agent.sse import SSEDecoder

# orjson refuses lone surrogates (str that is not valid UTF-8); the generic path does too.
TEXT = st.text(st.characters(exclude_categories=("Cs",)))


@given(st.lists(TEXT, min_size=1, max_size=5))
def test_token_event_is_the_generic_event_and_decodes_back(contents: list[str]) -> None:
    fast, generic = NativeFormat("req"), NativeFormat("req")
    fast.begin(None, "m")
    generic.begin(None, "m")
    wire = b""
    for content in contents:
        frame = fast.token(content)
        assert frame == generic.event("token", {"content": content})
        wire += frame
    events = SSEDecoder().feed(wire)
    assert [e.event for e in events] == ["token"] * len(contents)
    assert [e.id for e in events] == [str(i) for i in range(2, len(contents) + 2)]
    assert [orjson.loads(e.data) for e in events] == [
        {"type": "token", "content": c} for c in contents
    ]


def test_a_backend_with_only_receive_nowait_still_has_its_ready_chunks_merged() -> None:
    import trio

    from trio_agent.llm import ChatChunk
    from trio_agent.server._stream import _none_if_blocked

    queue = [ChatChunk(delta="a"), ChatChunk(delta="b")]

    def receive_nowait() -> ChatChunk:
        if not queue:
            raise trio.WouldBlock
        return queue.pop(0)

    ready = _none_if_blocked(receive_nowait)
    assert [ready(), ready(), ready()] == [ChatChunk(delta="a"), ChatChunk(delta="b"), None]
