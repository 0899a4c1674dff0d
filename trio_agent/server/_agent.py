"""Agent runs over HTTP: ``POST /agent/stream`` (SSE) and ``POST /agent`` (JSON).

A thin layer over :mod:`trio_agent.agent`::

    drain.track() scope (request_timeout; drain; disconnect; stalled write)
    └── request nursery
        ├── disconnect listener   http.disconnect cancels the scope: the model call and every tool
        ├── stall watchdog        (the chat stream's writer, reused)
        └── agent.run(...)        the run's own nursery: model calls and tool tasks
              events -> one SSE event each (event: <type>, JSON data, incrementing id)

Admission: a run is admitted once, up front: the refusal a chat request
would get now (queue full, key at its cap, loop lag) is a plain JSON 503/429
before any byte of the stream. Inside the run, each model call takes an
upstream slot through :meth:`Limits.slot`, under the same global cap, waiting
as long as it takes (never a 503 midway); a run waiting on its tools holds no
slot. Once the head is out the stream ends with exactly one ``done`` or
``error`` event (an upstream error of any step, the request deadline, the
drain) if the client is still there.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from ..agent import (
    Agent,
    AgentEvent,
    AgentResult,
    Done,
    StepEnd,
    Tool,
    ToolCallEvent,
    ToolError,
    ToolRegistry,
    ToolResult,
    ToolStarted,
    load_tools,
    open_agent,
)
from ..config import ServerConfig, mcp_spec
from ..errors import RequestValidationError, TrioAgentError, UpstreamError
from ..llm import ChatBackend, ChatMessage, upstream_unavailable
from ._admission import Limits
from ._chat import request_timeout_error
from ._context import RequestContext
from ._drain import DISCONNECT, SHUTTING_DOWN, WRITE_STALLED, Drain, shutting_down_error
from ._errors import internal_error, send_json
from ._metrics import GatewayMetrics, Histogram
from ._metrics_merge import format_value
from ._stream import KEEPALIVE, NativeFormat, Responder, StreamService, finish, watch_disconnect
from ._validation import parse_chat_body

__all__ = ["AgentBody", "AgentMetrics", "AgentService", "gateway_tools", "open_gateway_agent", "parse_agent_body"]

logger = logging.getLogger("trio_agent.server")

Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]

_AGENT_FIELDS = frozenset({"tools", "max_steps"})
_EVENT_BUFFER = 64  # encoded events of one run that may wait for the socket
EXAMPLE_TOOLS = "trio_agent.agent.examples"


# -- the agent the gateway serves --------------------------------------------------------


def gateway_tools(config: ServerConfig) -> list[Tool]:
    """The Python tools ``config`` offers: each ``tools`` module's, then the example tools (unless off).

    An example tool whose name a module's tool (or an earlier example) already
    has is left out: the examples are a default, never a clash.
    """
    found: list[Tool] = []
    for module in dict.fromkeys(config.tools):
        found.extend(load_tools(module))
    if config.example_tools:
        taken = {t.name for t in found}
        found.extend(t for t in load_tools(EXAMPLE_TOOLS) if t.name not in taken)
    return found


@asynccontextmanager
async def open_gateway_agent(config: ServerConfig, backend: ChatBackend) -> AsyncIterator[Agent]:
    """The agent ``serve()`` opens in its lifespan: ``config``'s tools and MCP servers on ``backend``.

    The MCP sessions are opened and closed inside this block's task (the
    agent's own lifespan nursery), never across tasks.
    """
    mcp = dict(mcp_spec(spec) for spec in config.mcp)
    async with open_agent(backend, tools=gateway_tools(config), mcp=mcp or None, config=config.agent) as agent:
        yield agent


def plain_agent(config: ServerConfig, backend: ChatBackend) -> Agent:
    """An agent without MCP servers, built without a lifespan (for an app built outside ``serve()``)."""
    return Agent(backend, registry=ToolRegistry(gateway_tools(config)), config=config.agent, model_slot=None)


# -- the body --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentBody:
    """A parsed ``/agent`` body."""

    messages: tuple[ChatMessage, ...]
    tools: tuple[str, ...] | None
    max_steps: int | None
    model: str | None
    max_tokens: int | None
    temperature: float | None


def _invalid(message: str, field: str, status: int = 422) -> RequestValidationError:
    return RequestValidationError(message, field=field, status_code=status)


def parse_agent_body(body: Any, config: ServerConfig, tools: ToolRegistry) -> AgentBody:
    """``{"question"|"messages", "tools"?, "max_steps"?, "model"?, "max_tokens"?, "temperature"?}``.

    An allowlist naming a tool the gateway does not offer is a 400 naming it;
    ``max_steps`` may lower the gateway's ``max_agent_steps``, not raise it.
    """
    if not isinstance(body, dict):
        raise _invalid("body must be a JSON object", "body")
    if "tool_choice" in body:  # the agent offers its own tools; the chat route's choice has no meaning here
        raise _invalid("unknown field 'tool_choice'", "tool_choice")
    chat = parse_chat_body({k: v for k, v in body.items() if k not in _AGENT_FIELDS}, config)
    allow: tuple[str, ...] | None = None
    if "tools" in body and body["tools"] is not None:
        raw = body["tools"]
        if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
            raise _invalid("tools must be an array of tool names", "tools")
        allow = tuple(dict.fromkeys(raw))
        unknown = [n for n in allow if n not in tools]
        if unknown:
            raise _invalid(f"unknown tool(s): {', '.join(unknown)}", "tools", 400)
    max_steps: int | None = None
    if "max_steps" in body and body["max_steps"] is not None:
        value = body["max_steps"]
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON (and JSON Schema) do not tell 5.0 from 5
        limit = config.agent.max_agent_steps
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
            raise _invalid(f"max_steps must be an integer in [1, {limit}]", "max_steps")
        max_steps = value
    return AgentBody(
        messages=chat.messages,
        tools=allow,
        max_steps=max_steps,
        model=chat.model,
        max_tokens=chat.max_tokens,
        temperature=chat.temperature,
    )


# -- metrics ---------------------------------------------------------------------------


class AgentMetrics:
    """Counters of agent runs, steps and tool calls; gauges come from the agent's statistics()."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}
        self.steps = 0
        self.tool_calls: dict[tuple[str, str], int] = {}
        self.tool_queue_wait = Histogram(
            "trio_agent_agent_tool_queue_wait_seconds", "Time a tool call waited for its limiters."
        )

    def count_run(self, outcome: str) -> None:
        self.runs[outcome] = self.runs.get(outcome, 0) + 1

    def observe(self, event: AgentEvent, open_calls: dict[str, str]) -> None:
        """Count one event; ``open_calls`` (call id -> tool name) tracks the run's unfinished calls."""
        if isinstance(event, ToolCallEvent):
            open_calls[event.call_id] = event.name
        elif isinstance(event, ToolStarted):
            self.tool_queue_wait.observe(event.queued_ms / 1000.0)
        elif isinstance(event, ToolResult):
            open_calls.pop(event.call_id, None)
            self._tool(event.name, "result")
        elif isinstance(event, ToolError):
            open_calls.pop(event.call_id, None)
            self._tool(event.name, event.kind)
        elif isinstance(event, StepEnd):
            self.steps += 1

    def cancelled(self, open_calls: dict[str, str]) -> None:
        """The calls a run left unfinished (client gone, deadline, error): cancelled with it."""
        for name in open_calls.values():
            self._tool(name, "cancelled")
        open_calls.clear()

    def _tool(self, name: str, outcome: str) -> None:
        key = (name, outcome)
        self.tool_calls[key] = self.tool_calls.get(key, 0) + 1

    def render(self, agent: Agent) -> str:
        s = agent.statistics()
        lines: list[str] = []

        def metric(name: str, kind: str, help: str, samples: Sequence[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {format_value(value)}" for labels, value in samples)

        metric("trio_agent_agent_runs_total", "counter", "Agent runs, by outcome.",
               [(f'{{outcome="{o}"}}', n) for o, n in sorted(self.runs.items())])
        metric("trio_agent_agent_steps_total", "counter", "Model calls of agent runs.", [("", self.steps)])
        metric("trio_agent_agent_tool_calls_total", "counter", "Tool calls, by tool and outcome.", [
            (f'{{tool="{_escape(t)}",outcome="{o}"}}', n) for (t, o), n in sorted(self.tool_calls.items())
        ])
        metric("trio_agent_agent_running_runs", "gauge", "Agent runs in progress.", [("", s.running_runs)])
        metric("trio_agent_agent_running_tools", "gauge", "Tool calls running now.", [("", s.running_tools)])
        metric("trio_agent_agent_queued_tools", "gauge", "Tool calls waiting for a limiter.",
               [("", s.queued_tools)])
        metric("trio_agent_agent_tool_limiter_waiting", "gauge",
               "Tasks waiting for the server-wide tool limiter.", [("", s.tools.tasks_waiting)])
        metric("trio_agent_agent_worker_threads", "gauge", "Sync tools' threads still running.",
               [("", s.worker_threads)])
        status = agent.mcp_status()
        if status:
            metric("trio_agent_agent_mcp_server_up", "gauge", "1 while an MCP server is connected.",
                   [(f'{{server="{_escape(n)}"}}', int(st.up)) for n, st in sorted(status.items())])
        lines.extend(self.tool_queue_wait.render())
        lines.append("")
        return "\n".join(lines)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# -- the service -----------------------------------------------------------------------


class AgentService:
    """Serves the agent routes on one :class:`Agent`, with the gateway's limits, drain and writer."""

    def __init__(
        self,
        *,
        config: ServerConfig,
        agent: Agent,
        limits: Limits,
        drain: Drain,
        streams: StreamService,
        metrics: GatewayMetrics,
    ) -> None:
        self.config = config
        self.agent = agent
        self.limits = limits
        self.drain = drain
        self.streams = streams
        self.gateway_metrics = metrics
        self.metrics = AgentMetrics()

    def _run(self, body: AgentBody) -> Any:
        model = self._model(body)

        @asynccontextmanager
        async def model_slot() -> AsyncIterator[object]:
            # The run's upstream slot, and each model call measured inside it (the wait for
            # the slot is not the call's duration).
            async with self.limits.slot() as lease, self.gateway_metrics.genai.call("chat", model):
                yield lease

        return self.agent.run(
            body.messages,
            tools=body.tools,
            max_steps=body.max_steps,
            model=body.model,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            model_slot=model_slot,
        )

    def _model(self, body: AgentBody) -> str:
        return body.model or self.agent.backend.model

    def _observer(self, body: AgentBody) -> Callable[[AgentEvent, dict[str, str]], None]:
        """The agent metrics' ``observe``, and each step's tokens into the GenAI usage histogram."""
        observe = self.metrics.observe
        genai = self.gateway_metrics.genai
        model = self._model(body)

        def observe_event(event: AgentEvent, open_calls: dict[str, str]) -> None:
            observe(event, open_calls)
            if isinstance(event, StepEnd) and (event.usage.prompt_tokens or event.usage.completion_tokens):
                genai.record_usage("chat", model, event.usage.prompt_tokens, event.usage.completion_tokens)

        return observe_event

    def _admit(self, info: RequestContext, body: AgentBody) -> None:
        # Every upstream ejected: a plain 503 now, not a run that fails at its first model call.
        refusal = self.limits.refuse_nowait(info.key_id) or upstream_unavailable(
            self.agent.backend, body.model
        )
        if refusal is not None:
            self.metrics.count_run("refused")
            raise refusal

    def mcp_down(self) -> list[str]:
        """The MCP servers that are not connected now (``/readyz`` names them)."""
        return sorted(name for name, st in self.agent.mcp_status().items() if not st.up)

    async def stream(self, info: RequestContext, receive: Receive, send: Send, body: AgentBody) -> None:
        """``POST /agent/stream``: the run's events as SSE; one terminal event on every path."""
        fmt = NativeFormat(info.request_id)
        failure: TrioAgentError | None = None
        with self.drain.track(self.config.request_timeout) as ctrl:
            self._admit(info, body)
            ctrl.admitted = True
            out = Responder(self.streams, send, ctrl, info)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_disconnect, receive, ctrl)
                nursery.start_soon(out.watchdog)
                await out.start()
                thinking = {"run_id": info.request_id, "request_id": info.request_id}
                await out.write(fmt.event("thinking", thinking))
                try:
                    await self._pump(out, fmt, body)
                except TrioAgentError as exc:
                    failure = exc
                except Exception:
                    logger.exception("agent run failed (request_id=%s)", info.request_id)
                    failure = internal_error()
                if failure is not None:
                    if isinstance(failure, UpstreamError):
                        self.gateway_metrics.count_upstream_error(failure.code)
                    info.outcome = failure.code
                    await out.write(fmt.error(failure))
                    out.terminal_sent = True
                nursery.cancel_scope.cancel()
        self.metrics.count_run(self._outcome(ctrl.reason, out.terminal_sent, failure))
        await finish(self.streams, out, ctrl, fmt, None)

    @staticmethod
    def _outcome(reason: str | None, terminal_sent: bool, failure: TrioAgentError | None) -> str:
        if reason in (DISCONNECT, WRITE_STALLED, SHUTTING_DOWN):
            return reason
        if failure is not None:
            return "error"
        return "done" if terminal_sent else "timeout"

    async def _pump(self, out: Responder, fmt: NativeFormat, body: AgentBody) -> None:
        """The run's events to the client, with keepalive comments while nothing happens.

        Two tasks: one takes each event from the run the moment it is sent (the run's
        channel is unbuffered, and a tool sends its ``tool_started`` before it runs, so a
        socket write in the way would hold the next tool's start back), the other writes
        what piled up as one write. At most ``_EVENT_BUFFER`` encoded events wait; past
        that the run waits for the client, as it would without the buffer. An error of
        the run is raised here after every event before it was written.
        """
        open_calls: dict[str, str] = {}
        failure: list[BaseException] = []
        done = False
        send, receive = trio.open_memory_channel[bytes](_EVENT_BUFFER)

        async def take() -> None:
            nonlocal done
            observe = self._observer(body)
            try:
                async with send, self._run(body) as events:
                    async for event in events:
                        observe(event, open_calls)
                        await send.send(fmt.event(event.type, event.to_json()))
                        done = done or isinstance(event, Done)
            except Exception as exc:  # the writer sends what came before it; then it is raised
                failure.append(exc)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(take)
                await self._write_events(out, receive)
        finally:
            self.metrics.cancelled(open_calls)
        if failure:
            raise failure[0]
        if done:
            out.terminal_sent = True
            out.info.outcome = "done"

    async def _write_events(self, out: Responder, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        interval = self.config.keepalive_interval
        async with receive:
            while True:
                with trio.move_on_after(interval) as idle:
                    try:
                        first = await receive.receive()
                    except trio.EndOfChannel:
                        return
                if idle.cancelled_caught:
                    await out.write(KEEPALIVE)
                    continue
                parts = [first]
                while True:
                    try:
                        parts.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await out.write(parts[0] if len(parts) == 1 else b"".join(parts))

    async def complete(self, info: RequestContext, receive: Receive, send: Send, body: AgentBody) -> None:
        """``POST /agent``: the whole run as one JSON answer (the answer and every event)."""
        result: AgentResult | None = None
        failure: TrioAgentError | None = None
        with self.drain.track(self.config.request_timeout) as ctrl:
            self._admit(info, body)
            ctrl.admitted = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_disconnect, receive, ctrl)
                try:
                    result = await self._collect(body)
                except TrioAgentError as exc:
                    failure = exc
                nursery.cancel_scope.cancel()
        if failure is not None:
            # Raised out here, not in the nursery: the front renders it as JSON.
            self.metrics.count_run("error")
            if isinstance(failure, UpstreamError):
                self.gateway_metrics.count_upstream_error(failure.code)
            raise failure
        if result is None:
            outcome = self._outcome(ctrl.reason, False, None)
            self.metrics.count_run(outcome)
            if ctrl.reason == DISCONNECT:
                self.gateway_metrics.disconnects += 1
                info.outcome = DISCONNECT
                return
            if ctrl.reason == SHUTTING_DOWN:
                raise shutting_down_error()
            self.gateway_metrics.timeouts += 1
            raise request_timeout_error(self.config.request_timeout)
        self.metrics.count_run("done")
        info.outcome = "done"
        await send_json(send, 200, {"run_id": info.request_id, **result.to_json()}, info)

    async def _collect(self, body: AgentBody) -> AgentResult:
        events: list[AgentEvent] = []
        open_calls: dict[str, str] = {}
        observe = self._observer(body)
        try:
            async with self._run(body) as stream:
                async for event in stream:
                    observe(event, open_calls)
                    events.append(event)
        finally:
            self.metrics.cancelled(open_calls)
        return AgentResult.from_events(events)


def mcp_readiness(status: Mapping[str, Any]) -> dict[str, Any]:
    """The ``mcp`` part of ``/readyz``: each server up or down, with its last error."""
    return {
        name: {"up": st.up, "tools": len(st.tools), **({"error": st.error} if st.error else {})}
        for name, st in sorted(status.items())
    }
