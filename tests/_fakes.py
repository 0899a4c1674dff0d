"""A scripted in-process backend for server tests (the shape of trio_agent's MockLLM)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from trio_agent.config import MockLLMConfig, ServerConfig
from trio_agent.errors import UpstreamStatusError
from trio_agent.llm import ChatChunk, ChatCompletion, ChatRequest, Usage
from trio_agent.server import Gateway, create_app


@dataclass(frozen=True)
class FakeStatistics:
    active: int
    started: int
    finished: int
    cancelled: int
    failed: int
    tokens: int


class FakeLLM:
    """Tokens "t0 ", "t1 ", ... after ``ttft``, one every ``itl`` seconds."""

    def __init__(
        self, config: MockLLMConfig | None = None, *, bug_after_first: Exception | None = None
    ) -> None:
        self.config = config or MockLLMConfig(ttft=0.1, itl=0.01, tokens=5)
        # Raised (as a backend bug would be) right after the first token.
        self.bug_after_first = bug_after_first
        self.active = self.started = self.finished = self.cancelled = self.failed = self.tokens = 0
        self.max_active = 0

    @property
    def model(self) -> str:
        return self.config.model

    def statistics(self) -> FakeStatistics:
        return FakeStatistics(
            self.active, self.started, self.finished, self.cancelled, self.failed, self.tokens
        )

    async def _chunks(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        cfg = self.config
        limit = cfg.tokens if request.max_tokens is None else min(cfg.tokens, request.max_tokens)
        await trio.sleep(cfg.ttft)
        if cfg.fail_before_first:
            raise UpstreamStatusError("upstream said 503", upstream_status=503)
        for i in range(limit):
            if cfg.fail_after_tokens is not None and i == cfg.fail_after_tokens:
                raise UpstreamStatusError("upstream broke mid-stream", upstream_status=500)
            if cfg.stall_after_tokens is not None and i == cfg.stall_after_tokens:
                await trio.sleep_forever()
            if i:
                await trio.sleep(cfg.itl)
            self.tokens += 1
            yield ChatChunk(delta=f"t{i} ")
            if self.bug_after_first is not None:
                raise self.bug_after_first
        yield ChatChunk(
            finish_reason="length" if limit < cfg.tokens else "stop",
            usage=Usage(prompt_tokens=3, completion_tokens=limit),
        )

    @asynccontextmanager
    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.started += 1
        gen = self._chunks(request)
        try:
            yield gen
        except trio.Cancelled:
            self.cancelled += 1
            raise
        except BaseException:
            self.failed += 1
            raise
        else:
            self.finished += 1
        finally:
            self.active -= 1
            await gen.aclose()

    async def complete_chat(self, request: ChatRequest) -> ChatCompletion:
        parts = []
        usage = Usage(prompt_tokens=0, completion_tokens=0)
        async with self.stream_chat(request) as chunks:
            async for c in chunks:
                parts.append(c.delta)
                usage = c.usage or usage
        return ChatCompletion(content="".join(parts), finish_reason="stop", usage=usage, model=self.model)

    async def list_models(self) -> list[str]:
        return [self.model]


def make_gateway(
    mock: MockLLMConfig | None = None, **server: Any
) -> tuple[Gateway, FakeLLM]:
    """A gateway over a FakeLLM; ``server`` overrides ServerConfig fields."""
    backend = FakeLLM(mock)
    return create_app(ServerConfig(**server), backend=backend), backend


def assert_released(gw: Gateway, backend: FakeLLM) -> None:
    """Capacity is back to zero: no lease, no waiter, no upstream call, no registered request."""
    stats = gw.limits.statistics()
    assert (stats.in_flight, stats.queued, stats.keys_in_flight) == (0, 0, 0)
    assert backend.active == 0
    assert gw.drain.active == 0


def drain_ready(chunks: object) -> list[ChatChunk]:
    """Every chunk a backend stream's ``receive_nowait()`` hands over before ``WouldBlock``."""
    ready: list[ChatChunk] = []
    while True:
        try:
            ready.append(chunks.receive_nowait())  # type: ignore[attr-defined]
        except trio.WouldBlock:
            return ready
