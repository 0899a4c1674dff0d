"""The agent: a backend, tools, limits; runs of the tool loop, each with a defined lifetime.

::

    async with open_agent(backend, tools=[get_weather], mcp={"fs": "mcp-server-fs /tmp"}) as agent:
        async with agent.run("What is the weather in Paris?") as events:
            async for event in events:
                print(event.to_json())

``open_agent`` owns a lifespan nursery for what outlives a run (the MCP
sessions, each opened and closed in its own task, and their reconnection);
``agent.run`` owns one run's nursery. Leaving ``agent.run``'s block, however
it is left, cancels the model call and every tool still running, and the
agent's :meth:`~Agent.statistics` are back where they were.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ..errors import ConfigError, UnknownToolError
from ..llm import ChatBackend, ChatMessage
from ._config import AgentConfig
from ._events import AgentEvent, Done, UsageTotals
from ._limits import AgentStatistics, LimiterStatistics, ToolLimits
from ._run import AgentRun, ModelSlot, RunOptions
from ._tools import FunctionTool, Tool, ToolRegistry

if TYPE_CHECKING:
    from ._mcp import MCPServers, MCPServerSpec, MCPServerStatus

__all__ = ["Agent", "AgentResult", "AgentStatistics", "LimiterStatistics", "open_agent"]

@dataclass(frozen=True, kw_only=True, slots=True)
class AgentResult:
    """A whole run: its answer and the events that led to it (``Done`` last)."""

    answer: str
    finish_reason: str
    steps: int
    tool_calls: int
    usage: UsageTotals
    events: tuple[AgentEvent, ...]

    @classmethod
    def from_events(cls, events: Sequence[AgentEvent]) -> AgentResult:
        """The result of a run whose events (``Done`` last) were all collected."""
        done = events[-1]
        assert isinstance(done, Done), "a run that ends without an error ends with Done"
        return cls(
            answer=done.answer,
            finish_reason=done.finish_reason,
            steps=done.steps,
            tool_calls=done.tool_calls,
            usage=done.usage,
            events=tuple(events),
        )

    def to_json(self) -> dict[str, Any]:
        """The body of ``POST /agent``: the answer, the summary, and every event in order."""
        return {
            "answer": self.answer,
            "finish_reason": self.finish_reason,
            "steps": self.steps,
            "tool_calls": self.tool_calls,
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "total_tokens": self.usage.total_tokens,
            },
            "events": [e.to_json() for e in self.events],
        }


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception inside nested single-member groups, else the group itself."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class Agent:
    """Runs the tool loop on a backend; made by :func:`open_agent`."""

    def __init__(
        self,
        backend: ChatBackend,
        *,
        registry: ToolRegistry,
        config: AgentConfig,
        model_slot: ModelSlot | None,
        servers: Iterable[str] = (),
    ) -> None:
        self.backend = backend
        self.config = config
        self._registry = registry
        self._model_slot = model_slot
        self._mcp: MCPServers | None = None
        self._limits = ToolLimits(config, registry, servers)

    # ----------------------------------------------------------------- tools and limits

    @property
    def tools(self) -> ToolRegistry:
        """Every tool the agent offers (Python tools and the MCP tools listed so far)."""
        return self._registry

    def model_slot(self) -> AbstractAsyncContextManager[object]:
        """Held around each model call of a run (the server's upstream slot); a no-op by default."""
        return self._model_slot() if self._model_slot is not None else nullcontext()

    def statistics(self) -> AgentStatistics:
        """Runs and tool calls in flight and every limiter's state; all zero when idle."""
        return self._limits.statistics()

    def mcp_status(self) -> dict[str, MCPServerStatus]:
        """Each MCP server's state (up or down, its tools, its last error), for readiness checks."""
        return {} if self._mcp is None else self._mcp.status()

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<Agent tools={len(self._registry)} running_runs={s.running_runs} "
            f"queued_tools={s.queued_tools} running_tools={s.running_tools}>"
        )

    # ----------------------------------------------------------------- runs

    def _options(
        self,
        *,
        tools: Iterable[str] | None,
        max_steps: int | None,
        max_tool_calls: int | None,
        model: str | None,
        max_tokens: int | None,
        temperature: float | None,
        model_slot: ModelSlot | None = None,
    ) -> RunOptions:
        if tools is None:
            offered = tuple(self._registry)
        else:
            names = list(dict.fromkeys(tools))
            missing = [n for n in names if n not in self._registry]
            if missing:
                raise UnknownToolError(missing)
            offered = tuple(t for n in names if (t := self._registry.get(n)) is not None)
        steps = self.config.max_agent_steps if max_steps is None else max_steps
        cap = self.config.max_tool_calls if max_tool_calls is None else max_tool_calls
        if steps < 1 or cap < 1:
            raise ConfigError(f"max_steps and max_tool_calls must be >= 1, got {steps} and {cap}")
        return RunOptions(
            tools=offered,
            max_steps=steps,
            max_tool_calls=cap,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            model_slot=model_slot,
        )

    @asynccontextmanager
    async def run(
        self,
        messages: str | Sequence[ChatMessage],
        *,
        tools: Iterable[str] | None = None,
        max_steps: int | None = None,
        max_tool_calls: int | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        model_slot: ModelSlot | None = None,
    ) -> AsyncIterator[trio.MemoryReceiveChannel[AgentEvent]]:
        """One run of the tool loop; iterate the events inside the block.

        ``messages`` is the conversation (or a question, as one user message);
        ``tools`` an allowlist of tool names (default: all; an unknown name
        raises :class:`UnknownToolError` before anything starts). The events end
        with exactly one :class:`Done`; an error of the model call (an
        :class:`~trio_agent.errors.UpstreamError`) is raised out of the block
        after the run's tools were cancelled. Leaving the block early cancels the
        model call and every running tool. ``model_slot`` overrides the agent's
        for this run (e.g. a per-key upstream slot).
        """
        options = self._options(
            tools=tools,
            max_steps=max_steps,
            max_tool_calls=max_tool_calls,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            model_slot=model_slot,
        )
        if isinstance(messages, str):
            messages = (ChatMessage(role="user", content=messages),)
        send, receive = trio.open_memory_channel[AgentEvent](0)
        producer = AgentRun(
            backend=self.backend,
            config=self.config,
            limits=self._limits,
            model_slot=self.model_slot,
            messages=messages,
            options=options,
            send=send,
        )
        self._limits.running_runs += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer.produce, name="agent run")
                with receive:
                    yield receive
                # The caller left the block, at the end or early: nothing of the run outlives it.
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise _unwrap(group) from None
        finally:
            self._limits.running_runs -= 1

    async def complete(
        self,
        messages: str | Sequence[ChatMessage],
        **kwargs: Any,
    ) -> AgentResult:
        """A whole run at once (``POST /agent``): the answer and the trace."""
        events: list[AgentEvent] = []
        async with self.run(messages, **kwargs) as stream:
            async for event in stream:
                events.append(event)
        return AgentResult.from_events(events)


@asynccontextmanager
async def open_agent(
    backend: ChatBackend,
    *,
    tools: Iterable[Tool | Callable[..., Any]] = (),
    mcp: Mapping[str, str | MCPServerSpec] | None = None,
    config: AgentConfig | None = None,
    model_slot: ModelSlot | None = None,
) -> AsyncIterator[Agent]:
    """An agent on ``backend`` with Python ``tools`` and the tools of the ``mcp`` servers.

    ``tools`` are :class:`Tool`\\ s (``@tool`` functions); a plain function is
    made a tool as if decorated. ``mcp`` maps a server name to a command
    (``"uvx some-server --flag"``, split like a shell would; started over stdio),
    an ``http(s)://`` URL (streamable HTTP), or an :class:`MCPServerSpec`. Every
    server gets a first connection attempt before the block starts; one that is
    down is retried in the background (see :meth:`Agent.mcp_status`).
    ``model_slot`` is entered around each model call (a server passes its
    upstream slot: the wait for it is not an error, and tools never hold it).
    """
    registry = ToolRegistry(t if isinstance(t, Tool) else FunctionTool(t) for t in tools)
    agent = Agent(
        backend,
        registry=registry,
        config=config or AgentConfig(),
        model_slot=model_slot,
        servers=mcp or (),
    )
    if not mcp:
        yield agent
        return
    try:
        from ._mcp import MCPServers  # the mcp SDK is an optional extra: imported only when used
    except ImportError as exc:
        raise ConfigError(f"MCP servers need the mcp extra (pip install 'trio_agent[mcp]'): {exc}") from exc

    try:
        async with trio.open_nursery() as lifespan:
            servers = MCPServers(mcp, registry=registry, config=agent.config)
            agent._mcp = servers
            await servers.start(lifespan)
            yield agent
            lifespan.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None

