"""The mock's answers to the OpenAI routes beside chat: embeddings, completions, the Responses API.

Served through :meth:`MockLLM.open_relay` as OpenAI-shaped bytes (a
:class:`Relay`), so the mock LLM server and the gateway's in-process mock
relay them exactly as they would relay a real upstream:

- ``/embeddings``: one vector per input, seeded by the input's text
  (the same text always gives the same unit vector), ``dimensions`` long
  (1536 by default), as floats or ``encoding_format: "base64"`` float32.
- ``/completions``: the mock's text for ``prompt``, streamed as
  ``text_completion`` chunks (usage when ``stream_options.include_usage``)
  then ``[DONE]``, or whole.
- ``/responses``: the mock's chat answer to ``input`` (text, or function
  calls when function tools are offered; tool outputs answered with a text
  that quotes them), streamed as named events (``response.created``,
  ``response.output_item.added``, ``response.output_text.delta``,
  ``response.function_call_arguments.delta``, ..., ``response.completed``), or whole.

The text and the tool calls come from the chat stream of the same mock (one
pacing, one set of statistics and faults). A body that is not what the
route takes is answered 400 in OpenAI's error shape; an unknown path 404.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import random
import struct
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import orjson
import trio

from ..config import MockLLMConfig
from ._types import ChatChunk, ChatMessage, ChatRequest, Relay, ToolCall, Usage


class _Mock(Protocol):
    """What the routes need of the :class:`MockLLM` serving them (which imports this module)."""

    config: MockLLMConfig

    @property
    def model(self) -> str: ...

    def stream_chat(self, request: ChatRequest) -> AbstractAsyncContextManager[AsyncIterator[ChatChunk]]: ...

__all__ = ["embedding_vector", "open_mock_relay"]

_JSON = "application/json"
_SSE = "text/event-stream; charset=utf-8"
_DEFAULT_DIMENSIONS = 1536
_MAX_DIMENSIONS = 16384
_ids = itertools.count(1)


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> Relay:
    body = orjson.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    )
    return Relay(status=status, content_type=_JSON, body=body)


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A unit vector of ``dimensions`` floats determined by ``text`` alone."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    values = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _max_tokens(body: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if type(value) is not int or value < 1:
            raise _BadRequest(f"'{name}' must be an integer >= 1", name)
        return value
    return None


def _stream_flag(body: Mapping[str, Any]) -> bool:
    value = body.get("stream", False)
    if value is not None and not isinstance(value, bool):
        raise _BadRequest("'stream' must be a boolean", "stream")
    return bool(value)


@asynccontextmanager
async def open_mock_relay(llm: _Mock, path: str, body: bytes, *, stream: bool) -> AsyncIterator[Relay]:
    """``llm``'s answer to ``POST {path}`` with ``body`` (see the module)."""
    route = "/" + path.strip("/")
    if route.startswith("/v1/"):
        route = route[3:]
    handlers = {"/embeddings": _embeddings, "/completions": _completions, "/responses": _responses}
    handler = handlers.get(route)
    if handler is None:
        yield _error(404, f"Invalid URL (POST {path})", code="unknown_url")
        return
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        yield _error(400, "We could not parse the JSON body of your request.")
        return
    if not isinstance(doc, dict):
        yield _error(400, "The request body must be a JSON object.")
        return
    source: AsyncIterator[bytes] | None = None
    try:
        relay, source = await handler(llm, doc, stream)
    except _BadRequest as exc:
        yield _error(400, exc.message, exc.param)
        return
    try:
        await relay.prime()
        yield relay
    finally:
        if source is not None:
            await source.aclose()  # type: ignore[attr-defined]


# -- embeddings -------------------------------------------------------------------------


async def _embeddings(llm: _Mock, doc: dict[str, Any], stream: bool) -> tuple[Relay, None]:
    raw = doc.get("input")
    inputs: list[str]
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        inputs = list(raw)
    elif isinstance(raw, list) and raw and all(type(x) is int for x in raw):
        inputs = [" ".join(map(str, raw))]  # one input given as token ids
    elif isinstance(raw, list) and raw and all(isinstance(x, list) for x in raw):
        inputs = [" ".join(map(str, x)) for x in raw]
    else:
        raise _BadRequest("'input' must be a string, an array of strings or token arrays", "input")
    dimensions = doc.get("dimensions", _DEFAULT_DIMENSIONS)
    if type(dimensions) is not int or not 1 <= dimensions <= _MAX_DIMENSIONS:
        raise _BadRequest(f"'dimensions' must be an integer in [1, {_MAX_DIMENSIONS}]", "dimensions")
    encoding = doc.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise _BadRequest("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    model = doc.get("model") or llm.model
    await trio.sleep(llm.config.ttft)  # the time a model takes to read the input
    data = []
    tokens = 0
    for i, text in enumerate(inputs):
        vector = embedding_vector(text, dimensions)
        tokens += max(1, len(text.split()))
        value: Any = vector
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    answer = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Relay(status=200, content_type=_JSON, body=orjson.dumps(answer)), None


# -- completions ------------------------------------------------------------------------


async def _completions(
    llm: _Mock, doc: dict[str, Any], stream: bool
) -> tuple[Relay, AsyncIterator[bytes] | None]:
    prompt = doc.get("prompt", "")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _BadRequest("'prompt' must be a string or an array of strings", "prompt")
    request = ChatRequest.from_question(prompt, max_tokens=_max_tokens(doc, "max_tokens"))
    model = str(doc.get("model") or llm.model)
    streamed = _stream_flag(doc) or stream
    options = doc.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    cid = f"cmpl-mock{next(_ids):012x}"
    created = int(time.time())
    envelope = (
        b'{"id":"' + cid.encode() + b'","object":"text_completion","created":' + str(created).encode()
        + b',"model":' + orjson.dumps(model) + b',"system_fingerprint":null,"choices":'
    )

    def choice(text: str, finish: str | None) -> bytes:
        part = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return b"data: " + envelope + orjson.dumps([part]) + b"}\n\n"

    if not streamed:
        parts: list[str] = []
        finish, usage = "stop", Usage(prompt_tokens=0, completion_tokens=0)
        async with llm.stream_chat(request) as chunks:
            async for chunk in chunks:
                parts.append(chunk.delta)
                finish = chunk.finish_reason or finish
                usage = chunk.usage or usage
        part = {"text": "".join(parts), "index": 0, "logprobs": None, "finish_reason": finish}
        body = envelope + orjson.dumps([part]) + b',"usage":' + _chat_usage(usage) + b"}"
        return Relay(status=200, content_type=_JSON, body=body), None

    async def events() -> AsyncIterator[bytes]:
        async with llm.stream_chat(request) as chunks:
            async for chunk in chunks:
                if chunk.delta:
                    yield choice(chunk.delta, None)
                elif chunk.finish_reason is not None:
                    yield choice("", chunk.finish_reason)
                elif chunk.usage is not None and include_usage:
                    yield b"data: " + envelope + b'[],"usage":' + _chat_usage(chunk.usage) + b"}\n\n"
        yield b"data: [DONE]\n\n"

    source = events()
    return Relay(status=200, content_type=_SSE, source=source), source


def _chat_usage(usage: Usage) -> bytes:
    return orjson.dumps(
        {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
    )


# -- the Responses API ------------------------------------------------------------------


def _input_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and isinstance(p.get("text", ""), str)
        )
    raise _BadRequest("input content must be a string or a list of content parts", "input")


def _responses_messages(doc: Mapping[str, Any]) -> tuple[ChatMessage, ...]:
    messages: list[ChatMessage] = []
    instructions = doc.get("instructions")
    if isinstance(instructions, str):
        messages.append(ChatMessage(role="system", content=instructions))
    raw = doc.get("input")
    if isinstance(raw, str):
        messages.append(ChatMessage(role="user", content=raw))
    elif isinstance(raw, list):
        for item in raw:
            if not isinstance(item, dict):
                raise _BadRequest("'input' items must be objects", "input")
            kind = item.get("type", "message")
            if kind == "function_call_output":
                output = item.get("output")
                messages.append(
                    ChatMessage(
                        role="tool",
                        content=output if isinstance(output, str) else orjson.dumps(output).decode(),
                        tool_call_id=str(item.get("call_id") or ""),
                    )
                )
            elif kind == "function_call":
                call = ToolCall(
                    id=str(item.get("call_id") or ""),
                    name=str(item.get("name") or ""),
                    arguments=str(item.get("arguments") or ""),
                )
                messages.append(ChatMessage(role="assistant", content=None, tool_calls=(call,)))
            elif kind == "message":
                role = item.get("role")
                if not isinstance(role, str):
                    raise _BadRequest("an input message needs a string 'role'", "input")
                messages.append(ChatMessage(role=role, content=_input_text(item.get("content"))))
            # Other item kinds (reasoning, web search results, ...) are context the mock ignores.
    else:
        raise _BadRequest("'input' must be a string or an array of input items", "input")
    if not messages:
        raise _BadRequest("'input' must not be empty", "input")
    return tuple(messages)


def _responses_usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


class _ResponseBuilder:
    """The Responses API objects and events of one answer, built as chat chunks arrive."""

    def __init__(self, doc: Mapping[str, Any], model: str) -> None:
        n = next(_ids)
        self.rid = f"resp_mock{n:012x}"
        self.mid = f"msg_mock{n:012x}"
        self.doc = doc
        self.model = model
        self.created = int(time.time())
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.text: list[str] | None = None  # the open message's text, when one is open
        self.calls: dict[int, dict[str, Any]] = {}  # open function calls by their chunk index
        self.usage = Usage(prompt_tokens=0, completion_tokens=0)

    def response(self, status: str, usage: Usage | None) -> dict[str, Any]:
        doc = self.doc
        return {
            "id": self.rid,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": doc.get("instructions"),
            "max_output_tokens": doc.get("max_output_tokens"),
            "model": self.model,
            "output": self.output if status != "in_progress" else [],
            "parallel_tool_calls": doc.get("parallel_tool_calls", True),
            "previous_response_id": doc.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": doc.get("store", True),
            "temperature": doc.get("temperature", 1.0),
            "text": doc.get("text", {"format": {"type": "text"}}),
            "tool_choice": doc.get("tool_choice", "auto"),
            "tools": doc.get("tools", []),
            "top_p": doc.get("top_p", 1.0),
            "truncation": doc.get("truncation", "disabled"),
            "usage": _responses_usage(usage) if usage is not None else None,
            "user": doc.get("user"),
            "metadata": doc.get("metadata", {}),
        }

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def start(self) -> list[bytes]:
        created = self.response("in_progress", None)
        return [
            self.event("response.created", response=created),
            self.event("response.in_progress", response=created),
        ]

    def text_delta(self, delta: str) -> list[bytes]:
        out = []
        if self.text is None:
            self.text = []
            item = {"id": self.mid, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
            self.output.append(item)
            index = len(self.output) - 1
            out.append(self.event("response.output_item.added", output_index=index, item=dict(item)))
            part = {"type": "output_text", "text": "", "annotations": []}
            out.append(
                self.event(
                    "response.content_part.added",
                    item_id=self.mid, output_index=index, content_index=0, part=part,
                )
            )
        self.text.append(delta)
        out.append(
            self.event(
                "response.output_text.delta",
                item_id=self.mid, output_index=self._message_index(), content_index=0, delta=delta, logprobs=[],
            )
        )
        return out

    def _message_index(self) -> int:
        return next(i for i, item in enumerate(self.output) if item["id"] == self.mid)

    def close_text(self) -> list[bytes]:
        if self.text is None:
            return []
        text = "".join(self.text)
        self.text = None
        index = self._message_index()
        part = {"type": "output_text", "text": text, "annotations": []}
        item = self.output[index]
        item.update(status="completed", content=[part])
        return [
            self.event(
                "response.output_text.done",
                item_id=self.mid, output_index=index, content_index=0, text=text, logprobs=[],
            ),
            self.event("response.content_part.done", item_id=self.mid, output_index=index, content_index=0, part=part),
            self.event("response.output_item.done", output_index=index, item=item),
        ]

    def call_delta(self, index: int, call_id: str | None, name: str | None, arguments: str) -> list[bytes]:
        out: list[bytes] = []
        call = self.calls.get(index)
        if call is None or (call_id is not None and call_id != call["call_id"]):
            out.extend(self.close_calls())
            out.extend(self.close_text())
            item = {
                "id": "fc_" + (call_id or "mock").removeprefix("call_"),
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": call_id or "",
                "name": name or "",
            }
            self.output.append(item)
            call = self.calls[index] = item
            out.append(self.event("response.output_item.added", output_index=len(self.output) - 1, item=dict(item)))
        if arguments:
            call["arguments"] += arguments
            out.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=call["id"], output_index=self.output.index(call), delta=arguments,
                )
            )
        return out

    def close_calls(self) -> list[bytes]:
        out = []
        for call in self.calls.values():
            index = self.output.index(call)
            call["status"] = "completed"
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=call["id"], output_index=index, arguments=call["arguments"],
                )
            )
            out.append(self.event("response.output_item.done", output_index=index, item=call))
        self.calls.clear()
        return out

    def finish(self, usage: Usage) -> list[bytes]:
        self.usage = usage
        out = [*self.close_text(), *self.close_calls()]
        out.append(self.event("response.completed", response=self.response("completed", usage)))
        return out


async def _responses(
    llm: _Mock, doc: dict[str, Any], stream: bool
) -> tuple[Relay, AsyncIterator[bytes] | None]:
    messages = _responses_messages(doc)
    tool_choice = doc.get("tool_choice")
    tools = doc.get("tools") or []
    if not isinstance(tools, list):
        raise _BadRequest("'tools' must be an array", "tools")
    request = ChatRequest(
        messages=messages,
        model=doc.get("model") if isinstance(doc.get("model"), str) else None,
        max_tokens=_max_tokens(doc, "max_output_tokens"),
        tools=tuple(t for t in tools if isinstance(t, dict)),
        tool_choice=tool_choice if isinstance(tool_choice, str | dict) else None,
        openai_body=doc,
    )
    builder = _ResponseBuilder(doc, str(doc.get("model") or llm.model))

    async def events() -> AsyncIterator[bytes]:
        yield b"".join(builder.start())
        usage = Usage(prompt_tokens=0, completion_tokens=0)
        async with llm.stream_chat(request) as chunks:
            async for chunk in chunks:
                out: list[bytes] = []
                if chunk.delta:
                    out.extend(builder.text_delta(chunk.delta))
                for d in chunk.tool_calls:
                    out.extend(builder.call_delta(d.index, d.id, d.name, d.arguments))
                if chunk.usage is not None:
                    usage = chunk.usage
                if out:
                    yield b"".join(out)
        yield b"".join(builder.finish(usage))

    if _stream_flag(doc) or stream:
        source = events()
        return Relay(status=200, content_type=_SSE, source=source), source
    async for _ in events():  # the same answer, built whole
        pass
    body = orjson.dumps(builder.response("completed", builder.usage))
    return Relay(status=200, content_type=_JSON, body=body), None
