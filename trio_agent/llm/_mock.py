"""The in-process mock LLM: a deterministic, trio-clocked stream of text deltas."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import trio

from ..config import MockLLMConfig
from ..errors import UpstreamStatusError, UpstreamStreamError
from ._pacer import Pacer
from ._types import ChatChunk, ChatCompletion, ChatRequest, Usage

__all__ = ["MockLLM", "MockLLMStatistics"]

_FILLER = (
    "the quick brown fox jumps over a lazy dog while structured concurrency keeps every "
    "task inside its nursery and each deadline lives on a cancel scope so nothing leaks "
    "and nothing hangs when a client walks away from the stream"
).split()


@dataclass(frozen=True, kw_only=True, slots=True)
class MockLLMStatistics:
    """Counts of :class:`MockLLM` streams: ``active`` now, ``peak_active`` the most at once;
    the rest only grow.

    ``cancelled`` counts streams whose consumer left before the end (closed the
    block early or was cancelled); ``failed`` counts injected faults.
    """

    active: int
    peak_active: int
    started: int
    finished: int
    cancelled: int
    failed: int
    tokens: int


class _MockStream:
    """Async iterator of one reply; paces each token against an absolute deadline."""

    __slots__ = (
        "_cfg",
        "_done",
        "_due_at",
        "_due_index",
        "_failed",
        "_i",
        "_limit",
        "_llm",
        "_prompt_tokens",
        "_rng",
        "_start",
        "_words",
    )

    def __init__(self, llm: MockLLM, request: ChatRequest, rng: random.Random) -> None:
        cfg = llm.config
        self._llm = llm
        self._cfg = cfg
        self._rng = rng
        self._limit = (
            cfg.tokens if request.max_tokens is None else min(cfg.tokens, request.max_tokens)
        )
        prompt = next((m.content or "" for m in reversed(request.messages) if m.role == "user"), "")
        self._prompt_tokens = max(1, len(prompt.split()))
        if cfg.content == "echo":
            self._words = prompt.split() or ["echo"]
        else:
            offset = rng.randrange(len(_FILLER))
            self._words = _FILLER[offset:] + _FILLER[:offset]
        self._start = trio.current_time()
        self._i = 0
        self._due_index = -1
        self._due_at = 0.0
        self._done = False
        self._failed = False

    def __aiter__(self) -> _MockStream:
        return self

    def _due(self, i: int) -> float:
        if i != self._due_index:  # one jitter draw per token, however often it is asked
            cfg = self._cfg
            jitter = self._rng.uniform(-cfg.jitter, cfg.jitter) if cfg.jitter else 0.0
            self._due_index = i
            self._due_at = self._start + cfg.ttft + i * cfg.itl + jitter
        return self._due_at

    def _token(self, i: int) -> ChatChunk:
        self._i = i + 1
        self._llm._tokens += 1
        return ChatChunk(delta=" " + self._words[i % len(self._words)] if i else self._words[0])

    def receive_nowait(self) -> ChatChunk:
        """The next token if it is already due (the caller fell behind), else ``trio.WouldBlock``.

        Ends, faults and the first token are left to ``__anext__``.
        """
        cfg, i = self._cfg, self._i
        if (
            self._done
            or i == 0
            or i >= self._limit
            or i == cfg.fail_after_tokens
            or i == cfg.stall_after_tokens
            or self._due(i) > trio.current_time()
        ):
            raise trio.WouldBlock
        return self._token(i)

    async def __anext__(self) -> ChatChunk:
        if self._done:
            raise StopAsyncIteration
        cfg, i = self._cfg, self._i
        if i == 0 and cfg.fail_before_first:
            await self._llm._pacer.sleep_until(self._start + cfg.ttft)
            self._done = self._failed = True
            raise UpstreamStatusError(
                "mock LLM: injected failure before the first token", upstream_status=503
            )
        if i == self._limit:
            self._done = True
            return ChatChunk(
                finish_reason="length" if self._limit < cfg.tokens else "stop",
                usage=Usage(prompt_tokens=self._prompt_tokens, completion_tokens=self._limit),
            )
        if cfg.fail_after_tokens is not None and i == cfg.fail_after_tokens:
            self._done = self._failed = True
            raise UpstreamStreamError(f"mock LLM: injected failure after {i} tokens")
        if cfg.stall_after_tokens is not None and i == cfg.stall_after_tokens:
            await trio.sleep_forever()
        await self._llm._pacer.sleep_until(self._due(i))
        return self._token(i)


class MockLLM:
    """An LLM backend that needs no key and no network, for demos, tests and benchmarks.

    The first token comes ``ttft`` seconds after the call, token ``i`` at
    ``ttft + i * itl`` (plus seeded jitter): pacing is against absolute
    deadlines on trio's clock, so delays never accumulate under load and tests
    on ``MockClock`` see exact times. Content echoes the last user message or
    is seeded filler text; ``max_tokens`` caps the length (finish reason
    ``"length"``). Faults from :class:`~trio_agent.MockLLMConfig` raise typed
    :class:`~trio_agent.UpstreamError` subclasses::

        llm = MockLLM(ttft=0.2, itl=0.02, tokens=16)
        async with llm.stream_chat(ChatRequest.from_question("hi")) as chunks:
            async for chunk in chunks:
                print(chunk.delta, end="")
    """

    def __init__(self, config: MockLLMConfig | None = None, **overrides: Any) -> None:
        base = config or MockLLMConfig()
        self.config = replace(base, **overrides) if overrides else base
        self._active = self._peak_active = self._started = self._finished = self._cancelled = 0
        self._failed = self._tokens = 0
        self._pacer = Pacer(resolution=self.config.pacing_resolution)

    @property
    def model(self) -> str:
        """The model name the mock reports."""
        return self.config.model

    def statistics(self) -> MockLLMStatistics:
        """A snapshot of stream counts."""
        return MockLLMStatistics(
            active=self._active,
            peak_active=self._peak_active,
            started=self._started,
            finished=self._finished,
            cancelled=self._cancelled,
            failed=self._failed,
            tokens=self._tokens,
        )

    def __repr__(self) -> str:
        return (
            f"<MockLLM active={self._active} finished={self._finished} "
            f"cancelled={self._cancelled} ttft={self.config.ttft} itl={self.config.itl}>"
        )

    @asynccontextmanager
    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        """Stream a reply; leaving the block early counts the stream as cancelled."""
        rng = random.Random(self.config.seed * 1_000_003 + self._started)
        stream = _MockStream(self, request, rng)
        self._started += 1
        self._active += 1
        self._peak_active = max(self._peak_active, self._active)
        try:
            yield stream
        finally:
            self._active -= 1
            if stream._failed:
                self._failed += 1
            elif stream._done:
                self._finished += 1
            else:
                self._cancelled += 1

    async def complete_chat(self, request: ChatRequest) -> ChatCompletion:
        """The whole reply at once (after the same simulated generation time)."""
        parts: list[str] = []
        usage = Usage(prompt_tokens=0, completion_tokens=0)
        finish = "stop"
        async with self.stream_chat(request) as chunks:
            async for chunk in chunks:
                parts.append(chunk.delta)
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.finish_reason is not None:
                    finish = chunk.finish_reason
        return ChatCompletion(
            content="".join(parts), finish_reason=finish, usage=usage, model=self.model
        )

    async def list_models(self) -> list[str]:
        """The one model the mock serves."""
        await trio.lowlevel.checkpoint()
        return [self.model]
