"""The in-process mock LLM: a deterministic, trio-clocked stream of text deltas and tool calls.

Every chunk carries ``raw``, its ``chat.completion.chunk`` JSON as OpenAI
writes it, so the mock's answers take the same relay path as a real upstream's.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import orjson
import trio

from ..config import MockLLMConfig
from ..errors import UpstreamStatusError, UpstreamStreamError
from ._mock_relay import open_mock_relay
from ._mock_script import ScriptTurn, load_script
from ._mock_tools import (
    argument_fragments,
    json_reply,
    plan_tool_calls,
    response_format_schema,
    tool_results_reply,
)
from ._pacer import Pacer
from ._types import (
    ChatChunk,
    ChatCompletion,
    ChatRequest,
    Relay,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from ._wire import chunk_from_object

__all__ = ["MockLLM", "MockLLMStatistics", "chat_completion_json", "usage_json"]

_PIECE = re.compile(r"\s*\S+")

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


class _Frames:
    """The JSON of one stream's ``chat.completion.chunk`` objects, as OpenAI writes them.

    A text token costs one ``orjson.dumps`` of the text and two concatenations:
    the envelope around it is built once per stream.
    """

    __slots__ = ("_prefix", "_suffix", "_token_head", "_token_tail")

    def __init__(self, *, cid: str, created: int, model: str, include_usage: bool) -> None:
        self._prefix = (
            b'{"id":"' + cid.encode() + b'","object":"chat.completion.chunk","created":'
            + str(created).encode() + b',"model":' + orjson.dumps(model)
            + b',"system_fingerprint":null,"choices":'
        )
        # OpenAI sends "usage": null on every chunk when usage was asked for, and no key otherwise.
        self._suffix = (b',"usage":null' if include_usage else b"") + b"}"
        self._token_head = self._prefix + b'[{"index":0,"delta":{"content":'
        self._token_tail = b'},"logprobs":null,"finish_reason":null}]' + self._suffix

    def token(self, text: str) -> bytes:
        return self._token_head + orjson.dumps(text) + self._token_tail

    def choice(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._prefix + orjson.dumps([choice]) + self._suffix

    def usage(self, usage: Usage) -> bytes:
        return self._prefix + b'[],"usage":' + usage_json(usage) + b"}"


def usage_json(usage: Usage) -> bytes:
    """OpenAI's ``usage`` object for ``usage``."""
    return orjson.dumps(
        {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
    )


def chat_completion_json(
    *,
    cid: str,
    created: int,
    model: str,
    content: str | None,
    tool_calls: Sequence[ToolCall],
    finish_reason: str,
    usage: Usage,
) -> bytes:
    """A whole ``chat.completion`` object, as OpenAI answers a non-streamed call."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in tool_calls
        ]
    doc = {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
    }
    return orjson.dumps(doc)


def _text_pieces(text: str) -> list[str]:
    """``text`` as tokens that join back to it: each word with the spaces before it."""
    return _PIECE.findall(text) or [text]


def _include_usage(request: ChatRequest) -> bool:
    body = request.openai_body
    if body is None:
        return False
    options = body.get("stream_options")
    return isinstance(options, Mapping) and options.get("include_usage") is True


class _MockStream:
    """Async iterator of one reply; paces each unit against an absolute deadline.

    A reply is a sequence of paced *units* (a text token, a piece of a tool
    call, a scripted chunk): unit ``i`` is due at ``start + ttft + i * itl``.
    The chunks around them (the role chunk before the first text token, the
    finish and usage chunks after the last unit) come with their neighbour, unpaced.
    """

    __slots__ = (
        "_cfg",
        "_done",
        "_due_at",
        "_due_index",
        "_exact",
        "_failed",
        "_finish",
        "_frames",
        "_i",
        "_limit",
        "_llm",
        "_natural",
        "_pieces",
        "_prompt_tokens",
        "_ready",
        "_rng",
        "_start",
        "_units",
        "_words",
        "cid",
        "content",
        "tool_calls",
    )

    def __init__(self, llm: MockLLM, request: ChatRequest, rng: random.Random) -> None:
        cfg = llm.config
        self._llm = llm
        self._cfg = cfg
        self._rng = rng
        prompt = next((m.content or "" for m in reversed(request.messages) if m.role == "user"), "")
        self._prompt_tokens = max(1, len(prompt.split()))
        self.cid = f"chatcmpl-mock{llm._started + 1:012x}"
        self._frames = _Frames(
            cid=self.cid,
            created=int(time.time()),
            model=request.model or cfg.model,
            include_usage=_include_usage(request),
        )
        self._words: list[str] = []  # filler or echo: token i is word i (cycling)
        self._pieces: list[str] | None = None  # an exact text, token by token
        self._units: list[ChatChunk] | None = None  # prebuilt chunks (tool calls, scripts)
        self._ready: list[ChatChunk] = []  # unpaced chunks to hand out first
        #: What the reply says, once whole: its tool calls (empty for a text reply).
        self.tool_calls: tuple[ToolCall, ...] = ()
        #: ... and its text, for a reply that is not filler (None: join the deltas).
        self.content: str | None = None
        self._finish = "stop"
        self._exact = False
        self._plan(request, rng)
        self._start = trio.current_time()
        self._i = 0
        self._due_index = -1
        self._due_at = 0.0
        self._done = False
        self._failed = False

    def _plan(self, request: ChatRequest, rng: random.Random) -> None:
        cfg, llm = self._cfg, self._llm
        limit = cfg.tokens if request.max_tokens is None else min(cfg.tokens, request.max_tokens)
        self._natural = cfg.tokens
        if llm._script:
            turn = llm._script[llm._script_next % len(llm._script)]
            llm._script_next += 1
            self._plan_turn(turn, request)
            return
        calls = plan_tool_calls(request, cfg.tool_calls, rng, rounds=cfg.tool_rounds)
        if calls:
            self._plan_tool_calls("", calls, frozenset(), None)
            return
        text: str | None = None
        if request.messages and request.messages[-1].role == "tool":
            text = tool_results_reply(request.messages)
        else:
            schema = response_format_schema(request.openai_body)
            if schema is not None:
                text = json_reply(schema, rng)
        if text is not None:
            self._pieces = _text_pieces(text)
            self._natural = len(self._pieces)
            self.content = text
            limit = self._natural if request.max_tokens is None else min(self._natural, request.max_tokens)
        elif cfg.content == "echo":
            self._words = prompt_words(request) or ["echo"]
        else:
            offset = rng.randrange(len(_FILLER))
            self._words = _FILLER[offset:] + _FILLER[:offset]
        self._limit = limit

    def _plan_turn(self, turn: ScriptTurn, request: ChatRequest) -> None:
        if turn.chunks is not None:  # exact: every chunk paced, nothing added
            self._units = [chunk_from_object(obj, raw) for obj, raw in turn.chunks]
            self._exact = True
            self._limit = self._natural = len(self._units)
            self.tool_calls = turn.tool_calls
            self.content = turn.content
            self._finish = turn.finish_reason or "stop"
            return
        if turn.tool_calls:
            self._plan_tool_calls(turn.content, turn.tool_calls, turn.quirks, turn.finish_reason)
            return
        self._pieces = _text_pieces(turn.content)
        self.content = turn.content
        self._limit = self._natural = len(self._pieces)
        self._finish = turn.finish_reason or "stop"

    def _plan_tool_calls(
        self, content: str, calls: Sequence[ToolCall], quirks: frozenset[str], finish: str | None
    ) -> None:
        """Units as OpenAI streams tool calls: per call, a first delta (index, id, type, name,
        empty arguments), then argument fragments by index; ``quirks`` as real servers differ."""
        frames = self._frames
        units: list[ChatChunk] = []
        if content:
            pieces = _text_pieces(content)
            first = {"role": "assistant", "content": pieces[0]}
            units.append(ChatChunk(delta=pieces[0], raw=frames.choice(first)))
            units.extend(ChatChunk(delta=p, raw=frames.token(p)) for p in pieces[1:])
        for k, call in enumerate(calls):
            index = 0 if "index-zero" in quirks else k
            whole = "one-delta" in quirks
            head_args = call.arguments if whole else ""
            head: dict[str, Any] = {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": head_args},
                    }
                ]
            }
            if not units:
                head = {"role": "assistant", "content": None, **head, "refusal": None}
            units.append(
                ChatChunk(
                    tool_calls=(ToolCallDelta(index=index, id=call.id, name=call.name, arguments=head_args),),
                    raw=frames.choice(head),
                )
            )
            if whole:
                continue
            for fragment in argument_fragments(call.arguments):
                delta = {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
                units.append(
                    ChatChunk(
                        tool_calls=(ToolCallDelta(index=index, arguments=fragment),),
                        raw=frames.choice(delta),
                    )
                )
        self._units = units
        self._limit = self._natural = len(units)
        self.tool_calls = tuple(calls)
        self.content = content or None
        self._finish = finish or "tool_calls"

    def __aiter__(self) -> _MockStream:
        return self

    def _due(self, i: int) -> float:
        if i != self._due_index:  # one jitter draw per unit, however often it is asked
            cfg = self._cfg
            jitter = self._rng.uniform(-cfg.jitter, cfg.jitter) if cfg.jitter else 0.0
            self._due_index = i
            self._due_at = self._start + cfg.ttft + i * cfg.itl + jitter
        return self._due_at

    def _unit(self, i: int) -> ChatChunk:
        self._i = i + 1
        self._llm._tokens += 1
        units = self._units
        if units is not None:
            return units[i]
        pieces = self._pieces
        if pieces is not None:
            text = pieces[i]
        else:
            words = self._words
            text = " " + words[i % len(words)] if i else words[0]
        chunk = ChatChunk(delta=text, raw=self._frames.token(text))
        if i == 0:  # OpenAI's first chunk names the role, with no text; the first token follows
            self._ready.append(chunk)
            return ChatChunk(raw=self._frames.choice({"role": "assistant", "content": ""}))
        return chunk

    def _end(self) -> ChatChunk:
        """The chunks after the last unit: finish reason, then usage (none for an exact script)."""
        self._done = True
        finish = "length" if self._limit < self._natural else self._finish
        usage = Usage(prompt_tokens=self._prompt_tokens, completion_tokens=self._limit)
        frames = self._frames
        if self._i == 0 and self._units is None:  # nothing was said: the role still comes first
            self._ready.append(ChatChunk(raw=frames.choice({"role": "assistant", "content": ""})))
        self._ready.append(ChatChunk(finish_reason=finish, raw=frames.choice({}, finish)))
        self._ready.append(ChatChunk(usage=usage, raw=frames.usage(usage)))
        return self._ready.pop(0)

    def receive_nowait(self) -> ChatChunk:
        """The next chunk if it is already due (the caller fell behind, or the first token
        comes at once), else ``trio.WouldBlock``.

        Ends and faults are left to ``__anext__``.
        """
        chunk = self.ready_nowait()
        if chunk is None:
            raise trio.WouldBlock
        return chunk

    def ready_nowait(self) -> ChatChunk | None:
        """:meth:`receive_nowait` answering None instead of raising: asked after every
        token, and nearly always with nothing due, so no exception on that path."""
        if self._ready:
            return self._ready.pop(0)
        cfg, i = self._cfg, self._i
        if (
            self._done
            or (i == 0 and cfg.fail_before_first)
            or i >= self._limit
            or i == cfg.fail_after_tokens
            or i == cfg.stall_after_tokens
            or self._due(i) > trio.current_time()
        ):
            return None
        return self._unit(i)

    def _pushable(self, i: int) -> bool:
        """Unit ``i`` is a plain paced unit :meth:`push` may hand over (not the first, which
        brings the role chunk; not the end; not a fault)."""
        cfg = self._cfg
        return (
            not self._ready
            and not self._done
            and 0 < i < self._limit
            and i != cfg.fail_after_tokens
            and i != cfg.stall_after_tokens
        )

    async def push(self, offer: Callable[[ChatChunk, Callable[[], ChatChunk | None]], bool]) -> None:
        """Hand the next units over as they come due, by calling ``offer(chunk, ready_nowait)``
        from the shared clock's pass (:meth:`Pacer.run_ticks`), with no task switch per unit.

        Returns (a checkpoint, cancellable) at the first unit that is not plain (the first,
        the end, a fault: ``__anext__`` takes those), or once ``offer`` answers False (the
        consumer is full and must wait); the caller then goes on with ``__anext__`` or
        pushes again. The units, their times and their chunks are those ``__anext__``
        would give.
        """
        if not self._pushable(self._i):
            await trio.lowlevel.checkpoint()
            return

        def tick(now: float) -> float | None:
            chunk = self._unit(self._i)
            i = self._i
            # The next unit is nearly always not due yet: then nothing can be ready with it.
            behind = not self._pushable(i) or self._due(i) <= now
            if not offer(chunk, self.ready_nowait if behind else _nothing_ready):
                return None
            i = self._i
            return self._due(i) if self._pushable(i) else None

        await self._llm._pacer.run_ticks(self._due(self._i), tick)

    async def __anext__(self) -> ChatChunk:
        if self._ready:
            return self._ready.pop(0)
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
            if self._exact:  # a scripted turn ends as written
                self._done = True
                raise StopAsyncIteration
            return self._end()
        if cfg.fail_after_tokens is not None and i == cfg.fail_after_tokens:
            self._done = self._failed = True
            raise UpstreamStreamError(f"mock LLM: injected failure after {i} tokens")
        if cfg.stall_after_tokens is not None and i == cfg.stall_after_tokens:
            await trio.sleep_forever()
        await self._llm._pacer.sleep_until(self._due(i))
        return self._unit(i)


def _nothing_ready() -> None:
    return None


def prompt_words(request: ChatRequest) -> list[str]:
    """The words of the last user message (what ``content="echo"`` repeats)."""
    prompt = next((m.content or "" for m in reversed(request.messages) if m.role == "user"), "")
    return prompt.split()


class MockLLM:
    """An LLM backend that needs no key and no network, for demos, tests and benchmarks.

    The first token comes ``ttft`` seconds after the call, token ``i`` at
    ``ttft + i * itl`` (plus seeded jitter): pacing is against absolute
    deadlines on trio's clock, so delays never accumulate under load and tests
    on ``MockClock`` see exact times. Content echoes the last user message or
    is seeded filler text; ``max_tokens`` caps the length (finish reason
    ``"length"``). Faults from :class:`~trio_agent.MockLLMConfig` raise typed
    :class:`~trio_agent.UpstreamError` subclasses.

    A request that offers function tools is answered with ``tool_calls``
    calls (see :mod:`._mock_tools`), streamed as OpenAI streams them; one whose
    last message is a tool result gets a text that quotes the results; one
    that asks for JSON (``response_format``) gets JSON valid for its schema.
    With ``script`` set, the turns of that file answer instead, in order
    (see :mod:`._mock_script`). :meth:`open_relay` serves embeddings,
    completions and the Responses API the same way::

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
        # Read once, at start: a bad script fails the server's start, not a request.
        self._script: list[ScriptTurn] = load_script(self.config.script) if self.config.script else []
        self._script_next = 0

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
        """The whole reply at once (after the same simulated generation time); ``raw`` is its
        ``chat.completion`` JSON."""
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
            stream: _MockStream = chunks  # type: ignore[assignment]
        tool_calls = stream.tool_calls
        content = "".join(parts)
        model = request.model or self.model
        raw = chat_completion_json(
            cid=stream.cid,
            created=int(time.time()),
            model=model,
            content=content if content or not tool_calls else None,
            tool_calls=tool_calls,
            finish_reason=finish,
            usage=usage,
        )
        return ChatCompletion(
            content=content,
            finish_reason=finish,
            usage=usage,
            model=model,
            tool_calls=tool_calls,
            raw=raw,
        )

    @asynccontextmanager
    async def open_relay(self, path: str, body: bytes, *, stream: bool) -> AsyncIterator[Relay]:
        """Answer a non-chat OpenAI call (``/embeddings``, ``/completions``, ``/responses``)
        the way an OpenAI upstream would, paced like chat (see :mod:`._mock_relay`)."""
        async with open_mock_relay(self, path, body, stream=stream) as relay:
            yield relay

    async def list_models(self) -> list[str]:
        """The one model the mock serves."""
        await trio.lowlevel.checkpoint()
        return [self.model]
