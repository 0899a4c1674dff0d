"""Scripted fake upstreams for the router's tests (unit, on the autojump clock, and over ASGI).

Each fake answers after ``ttft`` seconds with ``tokens`` chunks, or fails as its ``script``
says (one entry per call: None = answer, else the error raised before the first byte), or
as ``down`` says (every call, while set).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from trio_agent.config import UpstreamConfig
from trio_agent.errors import UpstreamConnectError, UpstreamError
from trio_agent.llm import (
    ChatChunk,
    ChatCompletion,
    ChatRequest,
    Relay,
    RouterBackend,
    Upstream,
    Usage,
)


def refused() -> UpstreamError:
    return UpstreamConnectError("could not connect to the upstream (ConnectError)")


class FakeUpstream:
    """One upstream: ``calls`` records each call's start time; ``script`` decides each call."""

    def __init__(self, name: str, *, ttft: float = 0.1, tokens: int = 3, script: Iterable[Any] = ()) -> None:
        self.name = name
        self.ttft = ttft
        self.tokens = tokens
        self.script: deque[Any] = deque(script)
        self.down: UpstreamError | None = None  # every call fails so while set
        self.mid_stream: UpstreamError | None = None
        self.calls: list[float] = []
        self.open = 0

    def _next_failure(self) -> UpstreamError | None:
        self.calls.append(trio.current_time())
        if self.down is not None:
            return self.down
        return self.script.popleft() if self.script else None

    @asynccontextmanager
    async def stream_chat(
        self, request: ChatRequest, *, started_at: float | None = None
    ) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        failure = self._next_failure()
        if failure is not None:
            raise failure
        await trio.sleep(self.ttft)
        self.open += 1
        try:
            yield self._chunks()
        finally:
            self.open -= 1

    async def _chunks(self) -> AsyncIterator[ChatChunk]:
        for i in range(self.tokens):
            if i and self.mid_stream is not None:
                raise self.mid_stream
            yield ChatChunk(delta=f"{self.name}{i} ")
            await trio.sleep(0.01)

    async def complete_chat(self, request: ChatRequest, *, started_at: float | None = None) -> ChatCompletion:
        failure = self._next_failure()
        if failure is not None:
            raise failure
        await trio.sleep(self.ttft)
        return ChatCompletion(content=self.name, finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=1), model="m")

    @asynccontextmanager
    async def open_relay(
        self, path: str, body: bytes, *, stream: bool, started_at: float | None = None
    ) -> AsyncIterator[Relay]:
        failure = self._next_failure()
        if failure is not None:
            raise failure
        await trio.sleep(self.ttft)
        yield Relay(status=200, content_type="application/json", body=self.name.encode())

    async def list_models(self) -> list[str]:
        return [f"{self.name}-model"]


def router(
    *fakes: FakeUpstream,
    weights: Iterable[float] | None = None,
    models: Iterable[tuple[str, ...]] | None = None,
    caps: Iterable[int | None] | None = None,
    **config: Any,
) -> RouterBackend:
    n = len(fakes)
    ups = [
        Upstream(name=f.name, backend=f, weight=w, models=m, max_concurrency=c)
        for f, w, m, c in zip(
            fakes, weights or [1.0] * n, models or [()] * n, caps or [None] * n, strict=True
        )
    ]
    cfg = UpstreamConfig(base_url="http://unused/v1", seed=1, **config)
    return RouterBackend(cfg, ups)  # type: ignore[arg-type]
