"""One agent run: the model and its tools in one nursery, events out through a channel.

The loop, step by step (DESIGN.md, "One agent run")::

    step k: model call (inside the caller's model slot)
      stream tokens out; as each tool call's arguments complete -> start that tool now,
      in the step's nursery, while the model may still be streaming further calls
    tool task: per-MCP-server limiter -> per-tool limiter -> agent-wide limiter -> call
      inside its own deadline; result or error becomes the call's tool message
    next step once every call of this step has a result; when max_steps or the
    tool-call cap is reached, one more model call with tool_choice "none"

Only cancellation tears a step's nursery down: every way a tool fails ends in
that call's ``ToolError`` and an ``{"error": ...}`` tool message. The run's
events go out through an unbuffered memory channel that the producer task
owns; the caller iterates it inside :meth:`Agent.run`'s ``async with``, so no
generator ever yields across a nursery or cancel scope.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import trio

from ..llm import (
    ChatBackend,
    ChatMessage,
    ChatRequest,
    ToolCall,
    ToolCallAssembler,
    Usage,
    stream_chat_traced,
)
from ..llm._traced import PROVIDER, input_messages
from ..tracing import current_tracer
from ._config import AgentConfig
from ._events import (
    AgentEvent,
    Done,
    StepEnd,
    StepStart,
    Token,
    ToolCallEvent,
    ToolError,
    ToolErrorKind,
    ToolProgress,
    ToolResult,
    ToolStarted,
    UsageTotals,
)
from ._limits import ToolLimits
from ._tools import Tool, set_progress_sink, tool_output_text

if TYPE_CHECKING:
    from ..tracing._tracer import TraceSpan

__all__ = ["RunOptions"]

ModelSlot = Callable[[], AbstractAsyncContextManager[object]]


@dataclass(frozen=True, kw_only=True, slots=True)
class RunOptions:
    """One run's settings, resolved against the agent's config."""

    tools: tuple[Tool, ...]
    max_steps: int
    max_tool_calls: int
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    #: This run's upstream slot around each model call; ``None`` = the agent's.
    model_slot: ModelSlot | None = None


@dataclass(slots=True)
class _Call:
    """One tool call of a step and, once it ended, its tool message."""

    call: ToolCall
    content: str | None = None


def _usage(usage: Usage | None) -> UsageTotals:
    if usage is None:
        return UsageTotals()
    return UsageTotals(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _error_content(message: str) -> str:
    return orjson.dumps({"error": message}).decode()


def _describe(exc: Exception) -> str:
    if getattr(exc, "bare_message", False) and str(exc):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _bounded(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to ``limit`` UTF-8 bytes (on a character boundary) plus a marker, and whether it was cut."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text, False
    kept = data[:limit].decode("utf-8", errors="ignore")
    return f"{kept}\n[output truncated: {limit} of {len(data)} bytes]", True


@dataclass(frozen=True, slots=True)
class _Progress:
    """One call's progress sink (see :class:`~trio_agent.agent._tools.ProgressSink`)."""

    channel: trio.MemorySendChannel[AgentEvent]
    call_id: str

    async def send(self, progress: float, total: float | None, message: str | None) -> None:
        await self.channel.send(ToolProgress(call_id=self.call_id, progress=progress, total=total, message=message))


def _tool_attributes(call: ToolCall) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": call.name,
        "gen_ai.tool.call.id": call.id,
        "gen_ai.tool.type": "function",
    }


class AgentRun:
    """The producer of one run's events; :meth:`Agent.run` owns its task."""

    def __init__(
        self,
        *,
        backend: ChatBackend,
        config: AgentConfig,
        limits: ToolLimits,
        model_slot: ModelSlot,
        messages: Sequence[ChatMessage],
        options: RunOptions,
        send: trio.MemorySendChannel[AgentEvent],
    ) -> None:
        self._backend = backend
        self._config = config
        self._limits = limits
        self._model_slot = options.model_slot or model_slot
        self._messages = list(messages)
        self._options = options
        self._send = send
        self._offered = {t.name: t for t in options.tools}
        self._schemas = tuple(t.openai_schema() for t in options.tools)
        self._calls_made = 0
        self._tool_s = 0.0
        self._tracer = current_tracer()
        self._span: TraceSpan | None = None

    async def produce(self) -> None:
        # Closed without a checkpoint: the caller, seeing the channel end, cancels the run's
        # nursery, and a checkpoint here would let that Cancelled replace the run's error.
        with self._send:
            tracer = self._tracer
            if tracer is None:
                await self._loop()
                return
            # The run's span is current in this task: its steps, their model calls and (through
            # the context trio copies into each task it starts) the tool calls nest under it.
            with tracer.span("invoke_agent", attributes=self._agent_attributes()) as self._span:
                await self._loop()

    def _agent_attributes(self) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "trio_agent",
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": self._options.model or self._backend.model,
        }
        if self._tracer is not None and self._tracer.content:
            attributes["gen_ai.input.messages"] = input_messages(tuple(self._messages))
        return attributes

    async def _loop(self) -> None:
        options = self._options
        started_at = trio.current_time()
        usage = UsageTotals()
        model_s = 0.0
        final = False
        step = 0
        # Bounded: every step that called tools counts toward max_steps, and the step after
        # the limit is the final one, which runs no tools.
        while True:
            step += 1
            await self._send.send(StepStart(step=step))
            model_started = trio.current_time()
            if self._tracer is None:
                text, finish_reason, step_usage, calls, model_end = await self._step(step, final)
            else:
                with self._tracer.span(f"step {step}", attributes={"trio_agent.agent.step": step}) as span:
                    text, finish_reason, step_usage, calls, model_end = await self._step(step, final)
                    span.set("trio_agent.agent.tool_calls", len(calls))
            model_s += model_end - model_started
            usage = usage + step_usage
            await self._send.send(
                StepEnd(
                    step=step,
                    finish_reason=finish_reason,
                    usage=step_usage,
                    tool_calls=len(calls),
                )
            )
            if final or not calls:
                # A model that says "tool_calls" but sent none has nothing more to do: it stopped.
                done_reason = "max_steps" if final else ("stop" if finish_reason == "tool_calls" else finish_reason)
                if self._span is not None:
                    self._trace_done(self._span, done_reason, step, usage, text)
                await self._send.send(
                    Done(
                        finish_reason=done_reason,
                        answer=text,
                        steps=step,
                        tool_calls=self._calls_made,
                        usage=usage,
                        duration_ms=_ms(trio.current_time() - started_at),
                        model_ms=_ms(model_s),
                        tool_ms=_ms(self._tool_s),
                    )
                )
                return
            self._messages.append(
                ChatMessage(role="assistant", content=text or None, tool_calls=tuple(c.call for c in calls))
            )
            for c in calls:
                assert c.content is not None
                self._messages.append(
                    ChatMessage(role="tool", content=c.content, tool_call_id=c.call.id, name=c.call.name)
                )
            if step >= options.max_steps or self._calls_made >= options.max_tool_calls:
                final = True

    def _trace_done(self, span: TraceSpan, reason: str, steps: int, usage: UsageTotals, text: str) -> None:
        span.set("gen_ai.usage.input_tokens", usage.prompt_tokens)
        span.set("gen_ai.usage.output_tokens", usage.completion_tokens)
        span.set("gen_ai.response.finish_reasons", (reason,))
        span.set("trio_agent.agent.steps", steps)
        span.set("trio_agent.agent.tool_calls", self._calls_made)
        if self._tracer is not None and self._tracer.content:
            output = [{"role": "assistant", "parts": [{"type": "text", "content": text}], "finish_reason": reason}]
            span.set("gen_ai.output.messages", orjson.dumps(output).decode())

    async def _step(self, step: int, final: bool) -> tuple[str, str, UsageTotals, list[_Call], float]:
        """One model call and the tools it called; returns when every call has its tool message."""
        options = self._options
        request = ChatRequest(
            messages=tuple(self._messages),
            model=options.model,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            tools=self._schemas,
            tool_choice="none" if final and self._schemas else None,
        )
        assembler = ToolCallAssembler()
        text: list[str] = []
        finish_reason = "stop"
        usage: Usage | None = None
        calls: list[_Call] = []
        model_end = trio.current_time()
        try:
            async with trio.open_nursery() as tools_nursery:
                # The upstream slot is held only while the model streams: the tools of this step
                # run on in tools_nursery after it is released.
                async with self._model_slot(), stream_chat_traced(self._backend, request) as chunks:
                    async for chunk in chunks:
                        if chunk.delta:
                            text.append(chunk.delta)
                            await self._send.send(Token(step=step, text=chunk.delta))
                        if chunk.usage is not None:
                            usage = chunk.usage
                        if chunk.finish_reason is not None:
                            finish_reason = chunk.finish_reason
                        for call in assembler.feed(chunk):
                            await self._dispatch(step, final, call, calls, tools_nursery)
                    for call in assembler.finish():
                        await self._dispatch(step, final, call, calls, tools_nursery)
                model_end = trio.current_time()
        except Exception:
            # The model call failed (an Exception, not a cancellation): the nursery cancelled
            # this step's tools. Tell the caller each unfinished call ended, then raise.
            for c in calls:
                if c.content is None:
                    await self._send.send(
                        ToolError(
                            call_id=c.call.id,
                            name=c.call.name,
                            kind="cancelled",
                            message="cancelled: the model call failed",
                        )
                    )
            raise
        return "".join(text), finish_reason, _usage(usage), calls, model_end

    async def _dispatch(
        self,
        step: int,
        final: bool,
        call: ToolCall,
        calls: list[_Call],
        nursery: trio.Nursery,
    ) -> None:
        """A call's arguments are complete: report it and start it now, or answer it with an error."""
        if final:
            # The final step offers no tools (tool_choice "none"); a call made anyway is dropped,
            # and the step's text is the answer.
            return
        self._calls_made += 1
        parsed: Any
        parse_error: str | None = None
        try:
            parsed = orjson.loads(call.arguments) if call.arguments.strip() else {}
        except orjson.JSONDecodeError as exc:
            parsed, parse_error = call.arguments, f"arguments are not valid JSON: {exc}"
        else:
            if not isinstance(parsed, dict):
                parse_error = "arguments must be a JSON object"
        await self._send.send(ToolCallEvent(step=step, call_id=call.id, name=call.name, arguments=parsed))
        c = _Call(call)
        calls.append(c)
        kind: ToolErrorKind
        t = self._offered.get(call.name)
        if self._calls_made > self._options.max_tool_calls:
            kind = "cancelled"
            message = f"not run: this run's limit of {self._options.max_tool_calls} tool calls is reached"
        elif t is None:
            kind = "unknown_tool"
            message = f"unknown tool {call.name!r}; available tools: {', '.join(self._offered) or 'none'}"
        elif parse_error is not None:
            kind, message = "invalid_arguments", parse_error
        else:
            try:
                validated = t.validate(parsed)
            except ValueError as exc:
                kind, message = "invalid_arguments", f"invalid arguments for {call.name!r}: {exc}"
            else:
                nursery.start_soon(self._run_call, c, t, validated, name=f"tool {call.name} {call.id}")
                return
        c.content = _error_content(message)
        if self._tracer is not None:
            # Not run: its span starts and ends here, with the reason.
            with self._tracer.span(f"execute_tool {call.name}", attributes=_tool_attributes(call)) as span:
                span.set("trio_agent.tool.outcome", kind)
                span.fail(kind, message)
        await self._send.send(ToolError(call_id=call.id, name=call.name, kind=kind, message=message))

    async def _run_call(self, c: _Call, t: Tool, arguments: Any) -> None:
        """One tool call, in an ``execute_tool`` span when tracing is on."""
        tracer = self._tracer
        if tracer is None:
            await self._run_call_inner(c, t, arguments, None)
            return
        call = c.call
        attributes = _tool_attributes(call)
        if tracer.content:
            attributes["gen_ai.tool.call.arguments"] = call.arguments
        # Started in the step's task group, this task's context holds the step's span: the
        # tool's span is its child, and an MCP call inside carries this span's traceparent.
        with tracer.span(f"execute_tool {call.name}", attributes=attributes) as span:
            await self._run_call_inner(c, t, arguments, span)

    async def _run_call_inner(self, c: _Call, t: Tool, arguments: Any, span: TraceSpan | None) -> None:
        """One tool call: wait for its limiters, run within its deadline, then report it."""
        limits = self._limits
        call = c.call
        limiters = limits.limiters_for(t)
        thread_limiter = limits.thread_limiter_for(t)
        timeout = t.timeout if t.timeout is not None else self._config.tool_timeout
        queued_at = trio.current_time()
        acquired: list[trio.CapacityLimiter] = []
        value: Any = None
        error: tuple[ToolErrorKind, str] | None = None
        limits.queued_tools += 1
        queued = True
        try:
            # Narrowest limiter first: a call waiting for its tool's (or server's) slot holds
            # no agent-wide slot, so one busy tool cannot starve the others.
            for limiter in limiters:
                await limiter.acquire()
                acquired.append(limiter)
            limits.queued_tools -= 1
            queued = False
            started_at = trio.current_time()
            limits.running_tools += 1
            if span is not None:
                span.set("trio_agent.tool.queued_ms", _ms(started_at - queued_at))
            try:
                await self._send.send(
                    ToolStarted(call_id=call.id, name=call.name, queued_ms=_ms(started_at - queued_at))
                )
                set_progress_sink(_Progress(self._send, call.id))
                with trio.move_on_after(timeout) as deadline:
                    value = await t.call(arguments, thread_limiter=thread_limiter)
                if deadline.cancelled_caught:
                    error = ("timeout", f"tool {call.name!r} timed out after {timeout:g} s")
            except Exception as exc:
                error = ("error", _describe(exc))
            finally:
                limits.running_tools -= 1
        finally:
            if queued:
                limits.queued_tools -= 1
            for limiter in reversed(acquired):
                limiter.release()
        # The result is reported after the limiters are released, so a slow consumer holds no
        # slot while it reads it (the start is reported before the tool runs, with its slots).
        self._tool_s += trio.current_time() - started_at
        duration_ms = _ms(trio.current_time() - started_at)
        if error is None:
            try:
                content, truncated = _bounded(tool_output_text(value), self._config.max_tool_output_bytes)
            except Exception as exc:
                error = ("error", f"the tool's result cannot be sent to the model: {_describe(exc)}")
        if error is not None:
            kind, message = error
            c.content = _error_content(message)
            if span is not None:
                span.set("trio_agent.tool.outcome", kind)
                span.fail(kind, message)
            await self._send.send(
                ToolError(call_id=call.id, name=call.name, kind=kind, message=message, duration_ms=duration_ms)
            )
            return
        c.content = content
        if span is not None:
            span.set("trio_agent.tool.outcome", "result")
            if self._tracer is not None and self._tracer.content:
                span.set("gen_ai.tool.call.result", content)
        await self._send.send(
            ToolResult(
                call_id=call.id,
                name=call.name,
                content=content,
                duration_ms=duration_ms,
                truncated=truncated,
            )
        )
