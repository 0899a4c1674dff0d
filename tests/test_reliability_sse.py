"""SSE injection: model output holding CR, LF, CRLF, NUL, ``data:`` lines and blank lines
cannot forge, split or merge events. Each token reaches an SSEDecoder client through a real
Hypercorn as the same text, one token event per token.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._reliability import raw_request, running_gateway
from trio_agent.config import ServerConfig
from trio_agent.llm import ChatChunk, ChatCompletion, ChatRequest, Usage
from trio_agent.sse import SSEDecoder, encode_event

HOSTILE = [
    "a\rb",
    "c\nd",
    "e\r\nf",
    "g\x00h",
    "data: forged",
    "\n\nevent: done\ndata: {\"type\": \"done\"}\n\n",
    "\r\n\r\n",
    "id: 999\nretry: 1\n",
    ": not a comment\n",
    "event: error\r\rdata: x",
    "\u2028\u2029\ufeff",
    "\\n\\r\"quoted\"",
]


class HostileLLM:
    """Streams HOSTILE, one token every 20 ms (so no two are coalesced into one event)."""

    model = "hostile"

    async def _chunks(self) -> AsyncIterator[ChatChunk]:
        for token in HOSTILE:
            await trio.sleep(0.02)
            yield ChatChunk(delta=token)
        yield ChatChunk(finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=len(HOSTILE)))

    @asynccontextmanager
    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        gen = self._chunks()
        try:
            yield gen
        finally:
            await gen.aclose()

    async def complete_chat(self, request: ChatRequest) -> ChatCompletion:
        return ChatCompletion(content="".join(HOSTILE), finish_reason="stop",
                              usage=Usage(prompt_tokens=1, completion_tokens=len(HOSTILE)), model=self.model)

    async def list_models(self) -> list[str]:
        return [self.model]


@pytest.mark.e2e
async def test_hostile_tokens_arrive_intact_one_event_each() -> None:
    config = ServerConfig(port=0, access_log=False)
    with trio.fail_after(10):
        async with running_gateway(config, backend=HostileLLM()) as srv:  # type: ignore[arg-type]
            r = await raw_request(srv.port, "POST", "/chat/stream", json={"question": "x"})
            assert r.status == 200 and r.complete
            assert r.kinds == ["thinking"] + ["token"] * len(HOSTILE) + ["done"]
            assert [e.id for e in r.events] == [str(i) for i in range(1, len(HOSTILE) + 3)]
            tokens = [orjson.loads(e.data)["content"] for e in r.events if e.event == "token"]
            assert tokens == HOSTILE  # JSON data: the exact text, even CR and NUL
            # The OpenAI-compatible stream: one chunk per token as the backend gave it (this
            # one keeps no wire bytes: the gateway frames them), then [DONE].
            v1 = await raw_request(
                srv.port,
                "POST",
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "x"}], "stream": True},
            )
            assert v1.status == 200 and v1.complete
            datas = [e.data for e in v1.events]
            assert datas[-1] == "[DONE]"
            chunks = [orjson.loads(d) for d in datas[:-1]]
            deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
            assert deltas[-1] is None
            assert deltas[:-1] == HOSTILE


# The raw layer: text put into ``data`` without JSON comes back with every line break as LF
# and in exactly one event, however the bytes are cut.
texts = st.lists(
    st.sampled_from(["\r", "\n", "\r\n", "\x00", "data: ", "event: x", ": c", "id: 1", "a", "é", "\u2028"]),
    max_size=12,
).map("".join) | st.text(max_size=40)


@settings(max_examples=300, deadline=None)
@given(items=st.lists(texts, min_size=1, max_size=4), cut=st.integers(1, 7))
def test_encoded_text_decodes_to_the_same_text_in_the_same_number_of_events(
    items: list[str], cut: int
) -> None:
    wire = b"".join(encode_event(t, event="token", id=str(i)) for i, t in enumerate(items))
    decoder = SSEDecoder()
    events = [ev for i in range(0, len(wire), cut) for ev in decoder.feed(wire[i : i + cut])]
    assert len(events) == len(items)
    assert [e.data for e in events] == [re.sub("\r\n|\r", "\n", t) for t in items]
    assert all(e.event == "token" for e in events)
