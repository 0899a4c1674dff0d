"""A scripted chat backend for agent tests: each model call replays one turn, on trio's clock.

A turn is a list of steps: a number sleeps that many seconds, a ``ChatChunk``
is sent, an exception is raised. The backend records each request, the time of
each chunk it sent, and how many streams are open (zero after every test).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
import trio

from trio_agent.llm import ChatChunk, ChatCompletion, ChatRequest, ToolCallDelta, Usage

Step = float | int | ChatChunk | BaseException
Turn = Sequence[Step]


def text(s: str) -> ChatChunk:
    return ChatChunk(delta=s)


def finish(reason: str = "stop", prompt_tokens: int = 10, completion_tokens: int = 5) -> ChatChunk:
    return ChatChunk(finish_reason=reason, usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))


def call_start(index: int, call_id: str, name: str, arguments: str = "") -> ChatChunk:
    return ChatChunk(tool_calls=(ToolCallDelta(index=index, id=call_id, name=name, arguments=arguments),))


def call_args(index: int, fragment: str) -> ChatChunk:
    return ChatChunk(tool_calls=(ToolCallDelta(index=index, arguments=fragment),))


def one_call(index: int, call_id: str, name: str, arguments: dict[str, Any], gap: float = 0.0) -> list[Step]:
    """A call streamed as OpenAI does: a first piece with id and name, then two argument fragments."""
    body = orjson.dumps(arguments).decode()
    half = len(body) // 2
    steps: list[Step] = [call_start(index, call_id, name)]
    for fragment in (body[:half], body[half:]):
        if gap:
            steps.append(gap)
        steps.append(call_args(index, fragment))
    return steps


class ScriptedLLM:
    """Replays ``turns`` in order (or asks ``script(request)`` for each turn)."""

    def __init__(self, turns: Sequence[Turn] | Callable[[ChatRequest], Turn]) -> None:
        self._turns = turns
        self.requests: list[ChatRequest] = []
        self.chunk_times: list[list[float]] = []
        self.open_streams = 0
        self.closed_early = 0

    @property
    def model(self) -> str:
        return "scripted"

    def _turn(self, request: ChatRequest) -> Turn:
        if callable(self._turns):
            return self._turns(request)
        index = len(self.requests) - 1
        assert index < len(self._turns), f"the script has {len(self._turns)} turns; call {index + 1} asked"
        return self._turns[index]

    @asynccontextmanager
    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[AsyncIterator[ChatChunk]]:
        self.requests.append(request)
        times: list[float] = []
        self.chunk_times.append(times)
        chunks = _Chunks(list(self._turn(request)), times)
        self.open_streams += 1
        try:
            yield chunks
        finally:
            self.open_streams -= 1
            if not chunks.ended:
                self.closed_early += 1

    async def complete_chat(self, request: ChatRequest) -> ChatCompletion:
        raise NotImplementedError

    async def list_models(self) -> list[str]:
        return [self.model]


class _Chunks:
    def __init__(self, steps: list[Step], times: list[float]) -> None:
        self._steps = steps
        self._times = times
        self.ended = False

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> ChatChunk:
        while self._steps:
            step = self._steps.pop(0)
            if isinstance(step, BaseException):
                raise step
            if isinstance(step, int | float):
                await trio.sleep(step)
                continue
            await trio.lowlevel.checkpoint()
            self._times.append(trio.current_time())
            return step
        self.ended = True
        raise StopAsyncIteration
